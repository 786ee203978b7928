"""Validation reports from given numbers, for the tests of the code that reads them."""

from __future__ import annotations

from typing import Any

from trtflow.stages.validation_report import ValidationReport


def latency_row(batch_size: int, p50_ms: float, noise_pct: float = 0.0) -> dict[str, Any]:
    return {"batch_size": batch_size, "iterations": 10, "p50_ms": p50_ms,
            "p95_ms": p50_ms * 1.1, "p99_ms": p50_ms * 1.2, "mean_ms": p50_ms,
            "throughput_per_s": batch_size * 1e3 / p50_ms, "p50_ci_ms": [p50_ms, p50_ms],
            "noise_pct": noise_pct}


def report_dict(agreement: float = 1.0, accuracy: float | None = None,
                reference_accuracy: float | None = None,
                engine_p50: dict[int, float] | None = None,
                baseline_p50: dict[int, float] | None = None, passed: bool = True,
                noise_pct: float = 0.0) -> dict[str, Any]:
    """The JSON form validate writes (validation.json), with the numbers a test names."""
    engine_p50 = engine_p50 or {1: 1.0}
    baseline_p50 = baseline_p50 or {bs: 2 * v for bs, v in engine_p50.items()}
    labelled = accuracy is not None
    quality: dict[str, Any] = {"samples": 100, "metric": "top1" if labelled else "cosine",
                               "max_abs_error": 0.01, "mean_abs_error": 0.001,
                               "agreement": agreement, "labelled": labelled}
    if labelled:
        quality.update(accuracy=accuracy, reference_accuracy=reference_accuracy or accuracy,
                       majority_fraction=0.1)
    return {"target": "int8", "baseline": "PyTorch eager FP32", "quality": quality,
            "latency": {"engine": [latency_row(b, v, noise_pct) for b, v in engine_p50.items()],
                        "baseline": [latency_row(b, v, noise_pct)
                                     for b, v in baseline_p50.items()]},
            "speedup_p50": {str(b): baseline_p50[b] / v for b, v in engine_p50.items()},
            "gates": {"passed": passed, "decisions": [
                {"gate": "min_agreement", "measured": agreement, "allowed": 0.99,
                 "passed": passed}]},
            "threads": 2}


def report(**numbers: Any) -> ValidationReport:
    return ValidationReport.from_dict(report_dict(**numbers))
