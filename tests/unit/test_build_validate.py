from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtflow.backends import build_engine, load_engine
from trtflow.backends.onnxruntime_backend import OrtEngine
from trtflow.errors import BuildError
from trtflow.graph.parity import ort_run
from trtflow.params import Gates, Target, ValidateConfig
from trtflow.stages.validate import accuracy_and_agreement, check_gates, gate_error, validate
from trtflow.stages.validation_report import Quality, ValidationReport

from .reports import report_dict
from .tiny import conv_bn_graph


def _x(batch: int = 5) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(2).standard_normal((batch, 3, 8, 8), np.float32)}


def test_ort_engine_builds_saves_and_matches(tmp_path: Path) -> None:
    onnx.save(conv_bn_graph(), tmp_path / "m.onnx")
    out = tmp_path / "engine"
    out.mkdir()
    report = build_engine(tmp_path / "m.onnx", Target(), out)
    assert report["engine_bytes"] > 0 and "BatchNormalization" not in report["engine_ops"]
    engine = load_engine(out, threads=1)
    np.testing.assert_allclose(engine.run(_x())["y"], ort_run(tmp_path / "m.onnx", _x())["y"],
                               atol=1e-5)


def test_unavailable_backend_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="backend 'tensorrt'"):
        build_engine(tmp_path / "m.onnx", Target(backend="tensorrt", device="cuda"), tmp_path)


def _quality(agreement: float, accuracy: float | None = None,
             reference_accuracy: float | None = None) -> Quality:
    return Quality(samples=100, metric="top1", max_abs_error=0.0, mean_abs_error=0.0,
                   agreement=agreement, labelled=accuracy is not None, accuracy=accuracy,
                   reference_accuracy=reference_accuracy, majority_fraction=0.1)


def test_gates_decide_on_given_numbers() -> None:
    quality = _quality(0.98, accuracy=0.95, reference_accuracy=0.97)
    verdict = check_gates(quality, 1.5, Gates(max_accuracy_drop=0.01, min_agreement=0.97,
                                              min_speedup=2.0))
    by_gate = {d.gate: d for d in verdict.decisions}
    assert not verdict.passed
    assert not by_gate["max_accuracy_drop"].passed
    assert by_gate["max_accuracy_drop"].measured == pytest.approx(0.02)
    assert by_gate["min_agreement"].passed
    assert not by_gate["min_speedup"].passed
    ok = check_gates(quality, 2.5, Gates(max_accuracy_drop=0.02, min_agreement=0.97,
                                         min_speedup=2.0))
    assert ok.passed
    # without labels only agreement gates
    assert [d.gate for d in check_gates(_quality(0.5), None, Gates()).decisions] \
        == ["min_agreement"]


def test_gate_error_names_measured_and_allowed() -> None:
    stored = report_dict(passed=False)
    stored["gates"]["decisions"] = [{"gate": "max_accuracy_drop", "measured": 0.05,
                                     "allowed": 0.01, "passed": False}]
    msg = str(gate_error(ValidationReport.from_dict(stored), "int8"))
    assert "target 'int8'" in msg and "measured 0.05, allowed 0.01" in msg


class _B:
    def __init__(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.inputs, self.labels = {"x": x}, labels


def test_damaged_engine_fails_accuracy_gate(tmp_path: Path) -> None:
    """A real engine whose weights were perturbed loses accuracy vs its reference."""
    good = conv_bn_graph()
    bad = conv_bn_graph()
    w = numpy_helper.to_array(bad.graph.initializer[0]).copy()
    w += np.random.default_rng(9).standard_normal(w.shape).astype(np.float32) * 2.0
    bad.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "w"))
    onnx.save(good, tmp_path / "good.onnx")
    onnx.save(bad, tmp_path / "bad.onnx")
    ref, eng = OrtEngine.from_model(tmp_path / "good.onnx", 1), OrtEngine.from_model(
        tmp_path / "bad.onnx", 1)

    def head(runner):  # classify by channel means: a 4-class "model"
        return lambda inputs: {"y": runner.run(inputs)["y"].mean(axis=(2, 3))}

    x = _x(64)["x"]
    labels = head(ref)({"x": x})["y"].argmax(1)  # reference is right by construction
    batches = [_B(x[i:i + 16], labels[i:i + 16]) for i in range(0, 64, 16)]
    quality = accuracy_and_agreement(head(eng), head(ref), batches, "top1")
    assert quality.labelled and quality.accuracy is not None
    assert quality.reference_accuracy == 1.0 and quality.accuracy < 0.9
    verdict = check_gates(quality, None, Gates(max_accuracy_drop=0.01, min_agreement=0.0))
    assert not verdict.passed


def test_validate_writes_report_and_plot(tmp_path: Path) -> None:
    onnx.save(conv_bn_graph(), tmp_path / "m.onnx")
    eng = OrtEngine.from_model(tmp_path / "m.onnx", 1)
    cfg = ValidateConfig(batch_sizes=[1, 4], warmup=1, iterations=5)
    report = validate(eng, eng.run, "self", [_B(_x(4)["x"], np.zeros(4, np.int64))],
                      lambda bs: _x(bs), cfg, "cosine", "fp32", tmp_path)
    assert (tmp_path / "validation.json").is_file() and (tmp_path / "latency.png").is_file()
    assert report.quality.agreement == pytest.approx(1.0)
    assert [r.batch_size for r in report.latency.engine] == [1, 4]
    assert report.latency.engine[0].p50_ms <= report.latency.engine[0].p99_ms
    assert ValidationReport.read(tmp_path) == report  # what is stored is what was returned
