"""TensorRT backend.

The engine tests need a real TensorRT (`tensorrt.Builder`); where there is none they
skip with that reason. TensorRT is installable on no machine of this project, so
here they always skip: the backend is type-checked against typings/tensorrt instead
(`mypy trtflow`). The build plan and the inspector-JSON fusion report are pure logic
and are tested everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trtflow.backends import Calibration, build_engine, load_engine, tensorrt_backend
from trtflow.errors import BuildError
from trtflow.params import Target

from .test_gpu_backends import feeds, two_branch_graph

HAS_TENSORRT = tensorrt_backend.installed_version() is not None
needs_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT, reason="needs a real TensorRT (tensorrt.Builder); none is installed here")


# --- pure logic: runs everywhere -------------------------------------------------------


def test_plan_on_tensorrt_10_uses_flags_and_allows_the_calibrator() -> None:
    fp16 = tensorrt_backend.plan_build(Target(device="cuda", precision="fp16"), 10, True)
    assert fp16 == {"graph": "clean", "strongly_typed": False, "flags": ["FP16"],
                    "calibrator": False}
    qdq = tensorrt_backend.plan_build(Target(device="cuda", precision="int8"), 10, True)
    assert qdq["graph"] == "qdq" and qdq["flags"] == ["INT8"]
    legacy = tensorrt_backend.plan_build(
        Target(device="cuda", precision="int8", int8_source="calibration_cache"), 10, True)
    assert legacy["graph"] == "clean" and legacy["calibrator"] is True
    best = tensorrt_backend.plan_build(Target(device="cuda", precision="best"), 10, True)
    assert best["flags"] == ["INT8", "FP16"]


def test_plan_on_tensorrt_11_is_strongly_typed() -> None:
    fp16 = tensorrt_backend.plan_build(Target(device="cuda", precision="fp16"), 11, False)
    assert fp16 == {"graph": "clean_fp16", "strongly_typed": True, "flags": [],
                    "calibrator": False}
    int8 = tensorrt_backend.plan_build(Target(device="cuda", precision="int8"), 11, False)
    assert int8["graph"] == "qdq" and int8["strongly_typed"] and not int8["flags"]
    with pytest.raises(BuildError, match="no calibrator interface"):
        tensorrt_backend.plan_build(
            Target(device="cuda", precision="int8", int8_source="calibration_cache"), 11, False)


def test_fusion_report_from_inspector_json_10_and_11() -> None:
    nodes = [("conv1", "Conv"), ("relu1", "Relu"), ("add1", "Add"), ("fc", "Gemm"),
             ("shape_const", "Constant"), ("folded", "Mul")]
    info_10 = {"Layers": [
        {"Name": "conv1 + relu1 + add1", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: conv1]\x1f[ONNX Layer: relu1]\x1f[ONNX Layer: add1 | x]",
         "Outputs": [{"Format/Datatype": "Half"}], "TacticName": "sm90_xmma_fprop"},
        {"Name": "fc", "LayerType": "CaskGemm", "Metadata": "[ONNX Layer: fc]",
         "Outputs": [{"Format/Datatype": "Float"}]}],
        "Bindings": ["image", "logits"]}
    report = tensorrt_backend.fusion_report(info_10, nodes)
    assert report["layers"] == 2 and report["fused_layers"] == 1
    assert report["fusion_patterns"] == {"Conv + Relu + Add": 1}
    assert report["rows"][0]["onnx_nodes"] == ["conv1", "relu1", "add1"]
    assert report["precisions"] == {"Half": 1, "Float": 1}
    assert report["unmapped_onnx_nodes"] == 1 and report["unmapped_examples"] == ["folded"]
    assert report["io_tensors"] == ["image", "logits"]
    # 11.x: DataType split from Format, I/O Tensors instead of Bindings; names without metadata
    info_11 = {"Layers": [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution",
                           "Outputs": [{"Format": "kLINEAR", "DataType": "Int8"}]}],
               "I/O Tensors": [{"Name": "image", "IOMode": "Input"}]}
    report = tensorrt_backend.fusion_report(info_11, nodes)
    assert report["rows"][0]["onnx_nodes"] == ["conv1", "relu1"]
    assert report["precisions"] == {"Int8": 1}
    assert report["io_tensors"][0]["Name"] == "image"


@pytest.mark.skipif(HAS_TENSORRT, reason="a real TensorRT is installed")
def test_without_tensorrt_the_build_says_so(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    with pytest.raises(BuildError, match="needs NVIDIA TensorRT 10 or 11"):
        build_engine(source, Target(backend="tensorrt", device="cuda"), tmp_path)
    with pytest.raises(BuildError, match="'tensorrt' on device 'cpu' is not available"):
        build_engine(source, Target(backend="tensorrt", device="cpu"), tmp_path)


# --- a real TensorRT -------------------------------------------------------------------


def _reference(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(two_branch_graph().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@needs_tensorrt
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_run_and_reuse_the_timing_cache(tmp_path: Path, precision: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTFLOW_TIMING_CACHE_DIR", str(tmp_path / "timing"))
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    target = Target(backend="tensorrt", device="cuda", precision=precision)  # type: ignore[arg-type]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    report = build_engine(source, target, first)
    assert (first / tensorrt_backend.ENGINE_FILE).stat().st_size > 0
    assert report["fusion"]["layers"] > 0 and (first / tensorrt_backend.FUSION_FILE).is_file()
    again = build_engine(source, target, second)
    assert again["tensorrt"]["timing_cache"]["reused_bytes"] > 0
    engine = load_engine(first)
    inputs = feeds(4)
    got = engine.run(inputs)
    tol = 1e-3 if precision == "fp32" else 3e-2
    for name, ref in zip(["y", "z"], _reference(inputs), strict=True):
        np.testing.assert_allclose(got[name], ref, atol=tol, rtol=tol)


@needs_tensorrt
@pytest.mark.tensorrt
def test_int8_from_the_qdq_graph(tmp_path: Path) -> None:
    from trtflow.quant.qdq import insert_qdq, quantizable_activations

    model = two_branch_graph()
    amax = dict.fromkeys(quantizable_activations(model, "tensorrt"), 4.0)
    calib = tmp_path / "calib"
    calib.mkdir()
    qdq, _ = insert_qdq(model, amax, "tensorrt")
    onnx.save_model(qdq, str(calib / "model.qdq.onnx"))
    source = tmp_path / "model.onnx"
    onnx.save_model(model, str(source))
    out = tmp_path / "engine"
    out.mkdir()
    build_engine(source, Target(backend="tensorrt", device="cuda", precision="int8"), out,
                 Calibration(calib))
    got = load_engine(out).run(feeds(2))
    assert np.isfinite(got["y"]).all()
