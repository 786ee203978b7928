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


def _calibrate(model: Path, batches: list[dict[str, np.ndarray]], tmp_path: Path) -> Path:
    """The calibrate stage's directory for `model` (max amax; the same batches select)."""
    calib = tmp_path / "calib"
    calib.mkdir()
    calibrate(model, iter(batches), CalibrationConfig(method="max"), 1, calib,
              selection=iter(batches))
    return calib


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
    calib = _calibrate(model, [_x(8, seed) for seed in range(4)], tmp_path)
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


def _relu_conv_chain() -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w0", (8, 3, 3, 3)), ("w1", (8, 8, 3, 3)), ("fc", (5, 8)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc0", transB=1)]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_nonnegative_int8_becomes_uint8_with_the_same_values(tmp_path: Path) -> None:
    from trtflow.quant.qdq import insert_qdq
    from trtflow.quant.unsigned_qdq import unsigned_nonnegative

    model = _relu_conv_chain()
    amax = {"x": 3.0, "r0": 4.0, "r1": 5.0, "f": 5.0, "p": 5.0, "y": 9.0, "c0": 4.0, "c1": 5.0}
    qdq, _ = insert_qdq(model, amax, "ort_cpu", "int8")
    unsigned, count = unsigned_nonnegative(qdq)
    zero_points = [onnx.numpy_helper.to_array(i) for i in unsigned.graph.initializer
                   if i.name.endswith("_zero_point") and i.dims == []]
    assert count >= 2  # the two Relu outputs
    assert not any(z.dtype == np.int8 and int(z) == -128 for z in zero_points)
    assert sum(z.dtype == np.uint8 for z in zero_points) == count
    onnx.save_model(qdq, str(tmp_path / "signed.onnx"))
    onnx.save_model(unsigned, str(tmp_path / "unsigned.onnx"))
    x = _x(4, 3)
    np.testing.assert_array_equal(ort_run(tmp_path / "signed.onnx", x)["y"],
                                  ort_run(tmp_path / "unsigned.onnx", x)["y"])


@pytest.mark.parametrize("scheme", ["auto", "static-tensorrt", "dynamic"])
def test_each_int8_scheme_builds_and_agrees_with_fp32(tmp_path: Path, scheme: str) -> None:
    onnx.save_model(_relu_conv_chain(), str(tmp_path / "m.onnx"))
    calib = _calibrate(tmp_path / "m.onnx", [_x(8, seed) for seed in range(4)], tmp_path)
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(backend="openvino", precision="int8", int8_scheme=scheme)  # type: ignore[arg-type]
    report = build_engine(tmp_path / "m.onnx", target, out, Calibration(calib))
    layers = report["runtime_layers"]
    assert report["qdq"]["scheme"] == scheme
    if scheme == "dynamic":  # weights only: the Gemm's, convs stay float
        assert report["qdq"]["weight_only_nodes"] == 1
        assert not any(k.startswith("Convolution:") and k.endswith(("i8", "u8")) for k in layers)
    else:
        assert any(k.startswith("Convolution:") and k.endswith(("i8", "u8")) for k in layers)
    if scheme == "auto":  # the Relu outputs reach OpenVINO as uint8 convolutions
        assert report["qdq"]["unsigned_tensors"] >= 2
        assert any(k.startswith("Convolution:") and k.endswith("u8") for k in layers), layers
    engine = load_engine(out)
    got, ref = engine.run(_x(4, 9))["y"], ort_run(tmp_path / "m.onnx", _x(4, 9))["y"]
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99


def test_the_kernel_check_feeds_an_unbounded_integer_input(tmp_path: Path) -> None:
    """An int64 mask no embedding table bounds (minilm's attention_mask): the build's check
    of OpenVINO's int8 kernels against the Q/DQ graph still finds inputs to run it on."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((16, 8), np.float32),
                                "w")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "maskf"], ["h"]),
         helper.make_node("MatMul", ["h", "w"], ["y"])], "masked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [w])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                    str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((8, 16), np.float32),
                "mask": rng.integers(0, 2, (8, 16)).astype(np.int64)} for _ in range(4)]
    calib = _calibrate(tmp_path / "m.onnx", batches, tmp_path)
    out = tmp_path / "engine"
    out.mkdir()
    report = build_engine(tmp_path / "m.onnx", Target(backend="openvino", precision="int8"),
                          out, Calibration(calib))
    assert report["qdq"]["kernel_cosine"] >= 0.999 and "fallback" not in report["qdq"]
