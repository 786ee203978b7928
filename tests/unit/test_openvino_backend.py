"""The OpenVINO CPU backend: FP32 and INT8 (trtflow's scales, no recalibration), BF16 where
the CPU has it; found through the registry like every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from trtflow.backends import Calibration, build_engine, engine_backend, load_engine
from trtflow.backends.openvino_backend import BF16_FLAGS
from trtflow.errors import BuildError
from trtflow.graph.parity import ort_run
from trtflow.latency import cpu_flags
from trtflow.params import CalibrationConfig, Target
from trtflow.stages.calibrate import calibrate

from .tiny import conv_bn_graph

pytest.importorskip("openvino")


def _x(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 3, 8, 8), np.float32)}


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    onnx.save_model(conv_bn_graph(), str(tmp_path / "m.onnx"))
    return tmp_path / "m.onnx"


def test_fp32_engine_runs_in_fp32_and_matches_onnx_runtime(model: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine"
    out.mkdir()
    report = build_engine(model, Target(backend="openvino", precision="fp32"), out)
    assert engine_backend(out) == report["backend"] == "openvino-cpu"
    assert report["session"]["inference_precision"] == "f32"  # not the bf16 default
    assert all(k.endswith(":f32") or k.endswith(":i32") for k in report["runtime_layers"])
    engine = load_engine(out, threads=1)
    for batch in (1, 4):  # dynamic batch from the ONNX graph
        np.testing.assert_allclose(engine.run(_x(batch))["y"], ort_run(model, _x(batch))["y"],
                                   atol=1e-4, rtol=1e-4)


def test_int8_engine_uses_the_calibrated_scales(model: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    batches = [_x(8, seed) for seed in range(4)]
    calibrate(model, iter(batches), CalibrationConfig(method="max"), 1, calib,
              selection=iter(batches))
    out = tmp_path / "engine"
    out.mkdir()
    report = build_engine(model, Target(backend="openvino", precision="int8"), out,
                          Calibration(calib))
    assert report["qdq"]["quantizable_ops"] >= 1
    assert any(k.startswith("Convolution:") and k.endswith(("i8", "u8"))
               for k in report["runtime_layers"]), report["runtime_layers"]
    got, ref = load_engine(out).run(_x(4, 9))["y"], ort_run(model, _x(4, 9))["y"]
    cos = float((got * ref).sum() / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cos > 0.99


def test_bf16_needs_a_cpu_that_has_it(model: Path, tmp_path: Path) -> None:
    target = Target(backend="openvino", precision="bf16")
    if not set(cpu_flags()) & set(BF16_FLAGS):
        with pytest.raises(BuildError, match="needs a CPU with avx512_bf16"):
            build_engine(model, target, tmp_path)
        return
    report = build_engine(model, target, tmp_path)
    assert report["session"]["inference_precision"] == "bf16"
    got, ref = load_engine(tmp_path).run(_x(2))["y"], ort_run(model, _x(2))["y"]
    np.testing.assert_allclose(got, ref, atol=0.1, rtol=0.05)


def test_unsupported_precision_is_refused_by_name(model: Path, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not 'fp16'"):
        build_engine(model, Target(backend="openvino", precision="fp16"), tmp_path)
