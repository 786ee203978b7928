"""FP8 (E4M3FN) Q/DQ: what the calibrate stage writes for TensorRT fp8 builds, run by ORT."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from trtflow.errors import CalibrationError, ParamsError
from trtflow.params import CalibrationConfig
from trtflow.quant.artifact import FP8_QDQ_FILE, SCALES_FILE
from trtflow.quant.qdq import FP8_MAX, insert_qdq, quantize_weight
from trtflow.stages.calibrate import calibrate

from .test_qdq import _feeds, _run, attention_block, residual_block, true_amax
from .tiny import conv_bn_graph


def _run_basic(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.mark.parametrize("build", [residual_block, attention_block])
def test_fp8_qdq_is_e4m3_at_opset_19_with_amax_over_448(build) -> None:
    model = build()
    feeds = _feeds(model)
    amax = true_amax(model, feeds)
    fp8, report = insert_qdq(model, amax, "tensorrt", precision="fp8")
    assert next(o.version for o in fp8.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {i.name: i for i in fp8.graph.initializer}
    for node in fp8.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert inits[node.input[2]].data_type == TensorProto.FLOAT8E4M3FN
    for name, row in report["activations"].items():
        assert row["scale"] == np.float32(amax[row["amax_from"]] / FP8_MAX), name
        assert row["dtype"] == "float8_e4m3fn" and row["zero_point"] == 0
    # the int8 graph's placement, tensor for tensor
    _, int8_report = insert_qdq(model, amax, "tensorrt")
    assert report["quantized_nodes"] == int8_report["quantized_nodes"]
    reference = _run(model, feeds)[0]
    error = np.linalg.norm(_run_basic(fp8, feeds) - reference) / np.linalg.norm(reference)
    assert error < 0.08  # E4M3 has 3 mantissa bits: ~2-4 % per rounding


def test_fp8_weights_are_e4m3_per_channel_within_448() -> None:
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32) * 5
    q, scale = quantize_weight(w, 0, precision="fp8")
    assert q.dtype == ml_dtypes.float8_e4m3fn and scale.shape == (4,)
    assert np.abs(q.astype(np.float32)).max(axis=(1, 2, 3)).tolist() == [448.0] * 4
    restored = q.astype(np.float32) * scale[:, None, None, None]
    assert np.abs(restored - w).max() <= np.abs(w).max() * 2.0**-4  # half an E4M3 step


def test_fp8_is_placed_only_the_tensorrt_way() -> None:
    model = residual_block()
    amax = true_amax(model, _feeds(model))
    with pytest.raises(ParamsError, match="fp8 Q/DQ is placed only the TensorRT way"):
        insert_qdq(model, amax, "ort_cpu", precision="fp8")


def _batches(scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": (rng.standard_normal((16, 3, 8, 8)) * scale).astype(np.float32)}
            for _ in range(4)]


def test_calibrate_writes_the_fp8_model_and_scales(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_graph(), path)
    out = tmp_path / "cal"
    out.mkdir()
    data = _batches()
    report = calibrate(path, data, CalibrationConfig(min_samples=1, sensitivity=False), 1, out,
                       selection=data)
    scales = json.loads((out / SCALES_FILE).read_text())
    assert report["fp8_method"] == "max" and report["fp8_overflowing_tensors"] == []
    for row in scales.values():
        assert row["fp8"]["amax"] == row["amax_by_method"]["max"]
        assert row["fp8"]["scale"] == np.float32(row["fp8"]["amax"] / 448.0)
        assert row["fp8"]["overflow"] == 0.0
    fp8 = onnx.load(str(out / FP8_QDQ_FILE))
    x = numpy_helper.to_array(next(i for i in fp8.graph.initializer if i.name == "x_scale"))
    assert float(x) == scales["x"]["fp8"]["scale"]


def test_a_clipping_fp8_method_reports_the_overflowing_tensors(tmp_path: Path) -> None:
    """percentile 90 leaves 10 % of each tensor past 448 x scale: they overflow E4M3."""
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_graph(), path)
    out = tmp_path / "cal"
    out.mkdir()
    data = _batches()
    cfg = CalibrationConfig(min_samples=1, sensitivity=False, fp8_method="percentile",
                            percentile=90.0)
    report = calibrate(path, data, cfg, 1, out, selection=data)
    assert "x" in report["fp8_overflowing_tensors"]
    scales = json.loads((out / SCALES_FILE).read_text())
    assert 0.05 < scales["x"]["fp8"]["overflow"] <= 0.1

    from trtflow.backends import Calibration
    from trtflow.backends.onnxruntime_backend import prepare_fp8

    with pytest.raises(CalibrationError, match=r"overflow E4M3 after scaling.*fp8_method: max"):
        prepare_fp8(Calibration(out))


def test_onnxruntime_fp8_target_runs_the_fp8_qdq_graph_at_basic_level(tmp_path: Path) -> None:
    """The fp8 'engine' on the CPU is TensorRT's FP8 Q/DQ graph in ORT (a numerical
    stand-in); the Q/DQ graph TensorRT gets is kept beside it and validate reports it."""
    from trtflow.backends import Calibration, build_engine, load_engine
    from trtflow.backends.onnxruntime_backend import TENSORRT_QDQ_FILE
    from trtflow.params import Target
    from trtflow.stages.validate import qdq_model_quality

    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_graph(), path)
    cal = tmp_path / "cal"
    cal.mkdir()
    data = _batches()
    calibrate(path, data, CalibrationConfig(min_samples=1, sensitivity=False), 1, cal,
              selection=data)
    out = tmp_path / "engine"
    out.mkdir()
    report = build_engine(path, Target(precision="fp8"), out, Calibration(cal))
    assert report["fp8"]["numerical_stand_in"] is True
    assert report["tensorrt_qdq_model"] == FP8_QDQ_FILE
    assert json.loads((out / "session.json").read_text())["optimization"] == "basic"
    assert (out / TENSORRT_QDQ_FILE).read_bytes() == (cal / FP8_QDQ_FILE).read_bytes()
    feed = {"x": data[0]["x"]}
    engine_out = next(iter(load_engine(out).run(feed).values()))
    expected = _run_basic(onnx.load(str(cal / FP8_QDQ_FILE)), feed)
    np.testing.assert_array_equal(engine_out, expected)

    class Batch:
        inputs = feed
        labels = None

    reference = _run(conv_bn_graph(), feed)[0]
    quality = qdq_model_quality(out / TENSORRT_QDQ_FILE, lambda f: {"y": reference}, [Batch],
                                "cosine")
    assert quality.file == TENSORRT_QDQ_FILE and quality.agreement > 0.99
