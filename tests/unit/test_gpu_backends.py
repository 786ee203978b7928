"""GPU backends, the parts that run on a CPU: mixed-precision conversion, static profiles,
the ORT GPU engine's code path on ORT's CPU provider, dispatch and the GPU params file.

The CUDA provider itself runs only on the device machine (bench/gpu.py); these tests use
the same engine code with `execution_device="cpu"`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.backends import (
    Calibration,
    backend_fingerprint,
    build_engine,
    engine_backend,
    gpu_fingerprint,
    load_engine,
    onnxruntime_backend,
    ort_cuda,
)
from trtflow.errors import BuildError, DataError
from trtflow.params import Target, load_params
from trtflow.quant.mixed_precision import FP32_OPS, to_mixed_fp16

ROOT = Path(__file__).resolve().parents[2]


def two_branch_graph(seed: int = 0) -> onnx.ModelProto:
    """x[batch,4,8] -> MatMul+Add -> Softmax -> LayerNorm -> ReduceMean;
    img[batch,3,8,8] -> Conv -> Relu -> GlobalAveragePool -> Flatten."""
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "b"], ["lin"], name="add"),
        helper.make_node("Softmax", ["lin"], ["sm"], name="softmax", axis=-1),
        helper.make_node("LayerNormalization", ["sm", "gamma", "beta"], ["ln"], name="ln",
                         axis=-1),
        helper.make_node("ReduceMean", ["ln", "axes"], ["y"], name="mean", keepdims=0),
        helper.make_node("Conv", ["img", "k", "kb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["z"], name="flatten"),
    ]
    inits = [init("w", (8, 8)), init("b", (8,)), init("gamma", (8,), 1.0), init("beta", (8,)),
             numpy_helper.from_array(np.array([2], np.int64), "axes"),
             init("k", (4, 3, 3, 3)), init("kb", (4,))]
    graph = helper.make_graph(
        nodes, "two_branch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8]),
         helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model, full_check=True)
    return model


def feeds(batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4, 8)).astype(np.float32),
            "img": rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)}


def run_cpu(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def test_mixed_fp16_keeps_sensitive_ops_in_fp32_and_matches() -> None:
    model = two_branch_graph()
    converted, report = to_mixed_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    # interface unchanged: float32 in, float32 out
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT
               for v in [*converted.graph.input, *converted.graph.output])
    assert report["fp32_ops"] == {"LayerNormalization": 1, "ReduceMean": 1, "Softmax": 1}
    assert report["fp16_nodes"] == 6 and report["casts_added"] > 0
    # weights of the converted nodes are float16, those of LayerNorm stay float32
    dtypes = {t.name: t.data_type for t in converted.graph.initializer}
    assert dtypes["w"] == TensorProto.FLOAT16 and dtypes["k"] == TensorProto.FLOAT16
    assert dtypes["gamma"] == TensorProto.FLOAT and dtypes["beta"] == TensorProto.FLOAT
    inputs = feeds(3)
    for ref, out in zip(run_cpu(model, inputs), run_cpu(converted, inputs), strict=True):
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=2e-2, rtol=2e-2)
    assert "LayerNormalization" in FP32_OPS and "Softmax" in FP32_OPS


def test_static_model_fixes_inputs_and_infers_output_shapes() -> None:
    fixed, outs = ort_cuda.static_model(two_branch_graph(), {"x": (5, 4, 8),
                                                             "img": (5, 3, 8, 8)})
    assert outs == {"y": (5, 4), "z": (5, 4)}
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [5, 4, 8]
    with pytest.raises(DataError, match="input 'x'.*rank"):
        ort_cuda.static_model(two_branch_graph(), {"x": (5, 4), "img": (5, 3, 8, 8)})
    with pytest.raises(DataError, match="input 'img'.*dimension 3"):
        ort_cuda.static_model(two_branch_graph(), {"x": (5, 4, 8), "img": (5, 2, 8, 8)})


@pytest.mark.parametrize("precision", ["fp32", "fp16", "best"])
def test_gpu_engine_code_path_on_cpu_provider(tmp_path: Path, precision: str) -> None:
    """Build + profiles + IO binding, as on the GPU, with ORT's CPU provider."""
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(device="cuda", precision=precision,  # type: ignore[arg-type]
                    options={"execution_device": "cpu"})
    report = ort_cuda.CUDA_BACKEND.build(source, target, out, None)
    assert report["session"]["precision"] == ("fp32" if precision == "fp32" else "fp16")
    engine = ort_cuda.CUDA_BACKEND.load(out)
    assert isinstance(engine, ort_cuda.OrtGpuEngine)
    model = two_branch_graph()
    for batch in (1, 4, 1):
        inputs = feeds(batch, seed=batch)
        got = engine.run(inputs)
        for name, ref in zip(["y", "z"], run_cpu(model, inputs), strict=True):
            assert got[name].shape == ref.shape
            np.testing.assert_allclose(got[name], ref, atol=2e-2 if precision != "fp32" else 1e-5,
                                       rtol=2e-2 if precision != "fp32" else 1e-5)
    assert len(engine.profiles) == 2  # one per input-shape set, reused for the repeat
    assert all(not p["cuda_graph"] for p in engine.describe())  # no CUDA graphs on the CPU


def _calibration(tmp_path: Path, amax: dict[str, float],
                 model: onnx.ModelProto | None = None) -> Calibration:
    """A calibration directory holding what a build reads: amax, no float layers and, given
    the model, the TensorRT-placement Q/DQ graph as the calibrate stage writes it."""
    from trtflow.quant.qdq import insert_qdq

    path = tmp_path / "calibration"
    path.mkdir()
    (path / "scales.json").write_text(json.dumps({t: {"amax": a} for t, a in amax.items()}))
    (path / "accuracy.json").write_text(json.dumps({"fallback": None}))
    artifact = Calibration(path)
    if model is not None:
        artifact.write_qdq_model(insert_qdq(model, amax, "tensorrt")[0])
    return artifact


def test_int8_on_gpu_engine_runs_the_calibrate_stages_qdq_graph(tmp_path: Path) -> None:
    from trtflow.quant.qdq import quantizable_activations

    source = tmp_path / "model.onnx"
    model = two_branch_graph()
    onnx.save_model(model, str(source))
    amax = dict.fromkeys(quantizable_activations(model, "tensorrt"), 4.0)
    calibration = _calibration(tmp_path, amax, model)
    saved = onnx.load(str(calibration.qdq_model("int8")))
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(device="cuda", precision="int8", options={"execution_device": "cpu"})
    report = ort_cuda.CUDA_BACKEND.build(source, target, out, calibration)
    assert report["precision"]["qdq"] == {"graph": calibration.qdq_model_name("int8"),
                                          "placement": "tensorrt", "float_layers": []}
    # read, not placed again: the engine has exactly the saved graph's quantizers
    assert report["engine_ops"]["DequantizeLinear"] == sum(
        n.op_type == "DequantizeLinear" for n in saved.graph.node)
    got = ort_cuda.CUDA_BACKEND.load(out).run(feeds(2))
    assert np.isfinite(got["y"]).all() and got["z"].shape == (2, 4)


def test_int8_on_gpu_without_the_saved_qdq_graph_asks_to_recalibrate(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    target = Target(device="cuda", precision="int8", options={"execution_device": "cpu"})
    with pytest.raises(BuildError, match="no int8 Q/DQ graph.*recalibrate"):
        ort_cuda.CUDA_BACKEND.build(source, target, tmp_path, _calibration(tmp_path, {"x": 1.0}))


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
def test_cuda_target_without_cuda_provider_says_what_is_missing(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    with pytest.raises(BuildError, match="CUDAExecutionProvider is not available"):
        build_engine(source, Target(device="cuda", precision="fp16"), tmp_path)
    with pytest.raises(BuildError, match="runs only on a GPU"):
        ort_cuda.TENSORRT_PROVIDER_BACKEND.build(
            source, Target(backend="onnxruntime-tensorrt", device="cuda",
                           options={"execution_device": "cpu"}), tmp_path, None)


def test_the_manifest_names_the_backend_that_built_the_engine(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    report = build_engine(source, Target(), tmp_path)
    assert report["backend"] == engine_backend(tmp_path) == "onnxruntime-cpu"
    assert isinstance(load_engine(tmp_path), onnxruntime_backend.OrtEngine)
    assert "device" not in json.loads((tmp_path / "session.json").read_text())
    assert gpu_fingerprint(Target()) == {}
    assert backend_fingerprint(Target())["backend_libraries"]["onnxruntime"] == ort.__version__


def test_an_engine_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "engine.onnx").write_bytes(b"")
    with pytest.raises(BuildError, match="engine.json is missing"):
        load_engine(tmp_path)


def test_an_unregistered_backend_names_the_registered_ones() -> None:
    from trtflow.backends import backend_for

    with pytest.raises(BuildError, match="registered: onnxruntime/cpu"):
        backend_for(Target(backend="tensorrt", device="cpu"))


def test_gpu_params_file_targets() -> None:
    params = load_params(ROOT / "params" / "resnet18_gpu.yaml")
    cuda = {n for n, t in params.targets.items() if t.device == "cuda"}
    assert {"cuda_fp32", "cuda_fp16", "cuda_int8", "trt_fp16", "ort_trt_fp16"} <= cuda
    assert [n for n, t in params.targets.items() if t.device == "cpu"] == ["cpu_fp32"]
    assert params.targets["ort_trt_fp16"].backend == "onnxruntime-tensorrt"
