"""The typed validation report: the stored forms it reads, the form it writes, bad input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from trtflow.errors import StoreError
from trtflow.stage import StageResult
from trtflow.stages.validation_report import REPORT_FILE, ValidationReport

from .reports import report_dict

# validation.json as validate-1 wrote it (before the noise interval, the chance floor and
# the Q/DQ graph's block): artifacts in stores and MLflow runs still hold this form
VALIDATE_1 = """{
  "target": "int8", "baseline": "PyTorch eager FP32",
  "quality": {"samples": 360, "metric": "top1", "max_abs_error": 0.8,
              "mean_abs_error": 0.05, "agreement": 0.99, "labelled": true,
              "accuracy": 0.97, "reference_accuracy": 0.975},
  "latency": {"engine": [{"batch_size": 1, "iterations": 100, "p50_ms": 0.1,
                          "p95_ms": 0.12, "p99_ms": 0.2, "mean_ms": 0.11,
                          "throughput_per_s": 9000.0}],
              "baseline": [{"batch_size": 1, "iterations": 100, "p50_ms": 0.4,
                            "p95_ms": 0.5, "p99_ms": 0.6, "mean_ms": 0.42,
                            "throughput_per_s": 2400.0}]},
  "speedup_p50": {"1": 4.0},
  "gates": {"passed": false, "decisions": [
    {"gate": "max_accuracy_drop", "measured": 0.005, "allowed": 0.01, "passed": true},
    {"gate": "min_agreement", "measured": 0.99, "allowed": 0.995, "passed": false},
    {"gate": "min_speedup", "measured": null, "allowed": 2.0, "passed": false}]},
  "threads": 2
}"""


def test_a_validate_1_report_reads_with_the_newer_fields_at_their_defaults(tmp_path: Path
                                                                           ) -> None:
    (tmp_path / REPORT_FILE).write_text(VALIDATE_1)
    report = ValidationReport.read(tmp_path)
    assert report.quality.accuracy == 0.97 and report.quality.majority_fraction is None
    assert report.quality.accuracy_drop == pytest.approx(0.005)
    assert report.latency.engine[0].noise_pct == 0.0
    assert report.speedup_p50 == {1: 4.0} and report.qdq_model is None
    assert not report.passed
    assert [d.gate for d in report.gates.failed] == ["min_agreement", "min_speedup"]
    assert report.gates.failed[1].describe() == "min_speedup: not measured, allowed 2"


def test_the_written_form_is_the_stored_form(tmp_path: Path) -> None:
    stored = report_dict(agreement=0.995, accuracy=0.9, reference_accuracy=0.91,
                         engine_p50={1: 1.0, 8: 4.0}, noise_pct=3.0)
    report = ValidationReport.from_dict(stored)
    assert report.as_dict() == stored
    assert ValidationReport.read(report.write(tmp_path)) == report


def test_unlabelled_quality_leaves_the_accuracy_keys_out_of_the_json() -> None:
    report = ValidationReport.from_dict(report_dict(agreement=0.999))
    assert report.quality.accuracy is None and report.quality.accuracy_drop is None
    assert set(report.as_dict()["quality"]) == {"samples", "metric", "max_abs_error",
                                                "mean_abs_error", "agreement", "labelled"}
    assert "qdq_model" not in report.as_dict()
    assert report.quality.figures() == {"agreement": 0.999, "max_abs_error": 0.01,
                                        "mean_abs_error": 0.001}


def test_nan_from_an_engine_survives_the_json(tmp_path: Path) -> None:
    stored = report_dict()
    stored["quality"]["max_abs_error"] = math.nan
    path = ValidationReport.from_dict(stored).write(tmp_path)
    assert math.isnan(ValidationReport.read(path).quality.max_abs_error)


def test_a_damaged_report_names_the_file_and_the_field(tmp_path: Path) -> None:
    stored = report_dict()
    del stored["gates"]["passed"]
    (tmp_path / REPORT_FILE).write_text(json.dumps(stored))
    with pytest.raises(StoreError, match=r"validation.json: field 'gates.passed'"):
        ValidationReport.read(tmp_path)
    (tmp_path / REPORT_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="cannot read the validation report"):
        ValidationReport.read(tmp_path / REPORT_FILE)
    stored = report_dict()
    stored["latency"]["engine"][0]["p50"] = 1.0  # a key no trtflow wrote
    with pytest.raises(StoreError, match="latency.engine.0"):
        ValidationReport.from_dict(stored)


def test_a_stage_result_gives_its_report_and_only_validate_has_one() -> None:
    def result(stage: str) -> StageResult:
        return StageResult(stage=stage, version="v", key="k", path="/store/x", digest="d",
                           report=report_dict(agreement=0.5), seconds=1.0)

    assert ValidationReport.of(result("validate")).quality.agreement == 0.5
    with pytest.raises(ValueError, match="'build' result"):
        ValidationReport.of(result("build"))


def test_dvc_metrics_and_the_release_manifest_read_the_same_figures() -> None:
    from trtflow.dvc_stage import latency_rows, validation_metrics
    from trtflow.track.release import quality_figures

    report = ValidationReport.from_dict(report_dict(
        agreement=0.995, accuracy=0.9, reference_accuracy=0.92, engine_p50={1: 1.0, 8: 4.0}))
    metrics = validation_metrics(report)
    assert metrics["accuracy_drop"] == pytest.approx(0.02)
    assert metrics["engine_p50_ms"] == {"bs1": 1.0, "bs8": 4.0}
    assert metrics["speedup_p50"] == {"bs1": 2.0, "bs8": 2.0} and metrics["gates_passed"]
    assert [r["batch_size"] for r in latency_rows(report)] == [1, 8]
    manifest = quality_figures(report)
    assert (manifest["accuracy"], manifest["labelled"], manifest["p50_ms"]) == (
        0.9, True, {"1": 1.0, "8": 4.0})
    assert json.loads(json.dumps(manifest)) == manifest  # JSON as it stands


_Q = r"""["']"""  # either quote
_STRING_KEY_READ = re.compile(  # the reports' own paths, read (not `summary["x"] = ...`)
    "|".join(rf"{_Q}{a}{_Q}\]\[{_Q}({b}){_Q}" for a, b in (
        ("gates", "passed|decisions"), ("latency", "engine|baseline"),
        ("quality", "accuracy|reference_accuracy|agreement|labelled|metric|max_abs_error"),
        ("selection", "winner|why|candidates")))
    + rf"|\[{_Q}(speedup_p50|qdq_model|selection){_Q}\](?!\s*=[^=])"
    + rf"|\.get\({_Q}(speedup_p50|qdq_model|selection){_Q}"
    + rf"|\.report(\[|\.get\(){_Q}(quality|latency|gates|speedup_p50|qdq_model|selection|"
      rf"baseline|threads|engine_bytes|engine_ops|backend){_Q}")


def test_the_validation_and_build_reports_are_read_by_attribute_outside_their_modules(
        ) -> None:
    """Issue 23: the reports' shape has one owner; nothing else reads them by string key."""
    root = Path(__file__).resolve().parents[2]
    owners = {root / "trtflow/stages/validation_report.py",
              root / "trtflow/stages/build_report.py"}
    found = [f"{path.relative_to(root)}:{n}: {line.strip()}"
             for folder in ("trtflow", "flows", "tasks")
             for path in sorted((root / folder).rglob("*.py")) if path not in owners
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if _STRING_KEY_READ.search(line)]
    assert found == []
