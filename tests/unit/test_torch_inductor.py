"""The torch-inductor backend (AOTInductor) on the CPU: one tiny module compiled once
(g++), loaded back from its `.pt2` and run at several batch sizes against eager PyTorch.
The CUDA paths (CUDA-graph replay, FP8 Linear) run on the device: bench/gpu.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trtflow.backends import torch_inductor as ti
from trtflow.errors import BuildError, DataError
from trtflow.params import Target


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 8)
        self.odd = nn.Linear(8, 5)  # sizes _scaled_mm refuses: never FP8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.odd(self.down(torch.nn.functional.gelu(self.up(x))))


@pytest.fixture(scope="module")
def module() -> TinyMLP:
    torch.manual_seed(0)
    return TinyMLP().eval()


@pytest.fixture(scope="module")
def engine_dir(module: TinyMLP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The backend's own build: a torch.export program saved as .pt2 -> engine.pt2."""
    out = tmp_path_factory.mktemp("inductor")
    program = torch.export.export(module, (torch.randn(2, 16),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(out / "program.pt2"))
    engine = out / "engine"
    engine.mkdir()
    report = ti.BACKEND.build(out / "program.pt2",
                              Target(backend="torch-inductor", device="cpu", precision="fp32"),
                              engine, None)
    assert report["engine_file"] == ti.PACKAGE_FILE and report["engine_bytes"] > 0
    return engine


def test_package_runs_without_the_model_code_and_matches_eager(module: TinyMLP,
                                                                engine_dir: Path) -> None:
    engine = ti.BACKEND.load(engine_dir)
    assert engine.input_names == ["x"] and engine.output_names == ["output_0"]
    rng = np.random.default_rng(0)
    for batch in (1, 3, 7):  # one package, dynamic batch
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        got = engine.run({"x": x})["output_0"]
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_engine_config_names_torch_version_host_and_dynamic_axes(engine_dir: Path) -> None:
    config = json.loads((engine_dir / ti.CONFIG_FILE).read_text())
    assert config["torch"] == torch.__version__ and config["device"] == "cpu"
    assert config["host"] == ti.host_name("cpu")
    (spec,) = config["inputs"]
    assert spec["name"] == "x" and spec["dtype"] == "float32"
    assert list(spec["dynamic_axes"]) == ["0"]  # the batch axis, by torch.export's symbol
    assert ti.BACKEND.fingerprint(Target(device="cpu")) == {"torch": torch.__version__,
                                                            "host": ti.host_name("cpu")}


def test_missing_input_names_the_engine_and_what_it_expects(engine_dir: Path) -> None:
    engine = ti.BACKEND.load(engine_dir)
    with pytest.raises(DataError, match=r"inputs \['x'\] missing"):
        engine.run({"image": np.zeros((1, 16), np.float32)})


def test_onnx_input_is_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"model\.clean\.onnx.*cannot be compiled back"):
        ti.BACKEND.build(tmp_path / "model.clean.onnx", Target(device="cpu"), tmp_path, None)


def test_not_an_engine_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="inductor.json is missing"):
        ti.InductorEngine(tmp_path)


def test_int8_precision_is_refused_with_the_precisions_it_builds() -> None:
    with pytest.raises(BuildError, match="'int8' is not one of fp32, bf16, fp16"):
        ti.torch_dtype("int8")


def test_fp8_needs_a_gpu_of_compute_capability_89(module: TinyMLP) -> None:
    if ti.fp8_supported("cuda"):
        pytest.skip("this machine runs FP8")
    with pytest.raises(BuildError, match="compute capability >= 8.9"):
        ti.prepare_module(module, "fp16", "cpu", {"up": 1.0})


def test_calibrated_amax_per_linear_and_fp8_swaps_only_sizes_scaled_mm_takes(
        module: TinyMLP) -> None:
    batches = [(torch.full((2, 16), 3.0),), (torch.full((4, 16), -5.0),)]
    amax = ti.linear_input_amax(module, batches)
    assert set(amax) == {"up", "down", "odd"} and amax["up"] == pytest.approx(5.0)
    import copy

    swapped_module = copy.deepcopy(module)
    swapped = ti.quantize_linears_fp8(swapped_module, amax, torch.float16)
    assert swapped == ["up"]  # down: N=8, odd: K=8, N=5 are not multiples of 16
    up = swapped_module.up
    assert up.weight_fp8.dtype == torch.float8_e4m3fn
    assert float(up.x_scale) == pytest.approx(5.0 / ti.FP8_MAX)
    assert isinstance(swapped_module.down, nn.Linear)


def test_registered_with_its_options_model_on_cpu_and_cuda() -> None:
    from trtflow.backends import backend_for

    target = Target(backend="torch-inductor", device="cuda", precision="fp16",
                    options={"cuda_graph": False, "max_autotune": True})
    assert backend_for(target) is ti.BACKEND
    assert backend_for(Target(backend="torch-inductor", device="cpu")) is ti.BACKEND
    assert isinstance(target.options, ti.InductorOptions) and not target.options.cuda_graph
    with pytest.raises(ValueError, match="cuda_graphs"):
        Target(backend="torch-inductor", device="cuda", options={"cuda_graphs": True})


def test_fp8_linear_through_the_plan_is_refused_until_wired(engine_dir: Path,
                                                           tmp_path: Path) -> None:
    target = Target(backend="torch-inductor", device="cuda", precision="fp16",
                    options={"fp8_linear": True})
    with pytest.raises(BuildError, match="fp8_linear is not available through the stage plan"):
        ti.BACKEND.build(engine_dir.parent / "program.pt2", target, tmp_path, None)
