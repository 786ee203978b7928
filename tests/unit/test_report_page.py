"""`trtflow report` page pieces on given numbers: the noisy-latency flag, one decision per
identical engine."""

from __future__ import annotations

from trtflow.report.page import _promotions, noise_flag
from trtflow.report.runs import TargetRun


def test_a_p99_many_times_p50_or_a_wide_p50_interval_is_flagged() -> None:
    assert noise_flag({"p50_ms": 1.0, "p99_ms": 1.4, "noise_pct": 2.0}) == ""
    assert noise_flag({"p50_ms": 1.0, "p99_ms": 7.5, "noise_pct": 2.0}) == "noisy: p99 7.5x p50"
    assert noise_flag({"p50_ms": 1.0, "p99_ms": 1.2, "noise_pct": 25.0}) == "noisy: p50 ±25 %"


def _run(run_id: str, registered: str) -> TargetRun:
    return TargetRun(run_id, "digits", "int8", "int8", "onnxruntime-cpu", "entropy", None,
                     None, {}, {}, promotion={"registered": registered, "state": "promoted",
                                              "reason": "accuracy drop vs FP32 0.0000",
                                              "aliases": ["production"]})


def test_identical_engines_do_not_repeat_the_promotion_text() -> None:
    html = _promotions([_run("a" * 32, "digits-int8 v1"), _run("b" * 32, "digits-int8 v1"),
                        _run("c" * 32, "digits-int8 v2")])
    assert html.count("reason: accuracy drop") == 2  # v1 once, v2 once
    assert "the same engine as digits/int8 entropy (aaaaaaaa)" in html
