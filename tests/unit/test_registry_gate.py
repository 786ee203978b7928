"""The promotion gate on given numbers (no MLflow): which checks pass, fail or do not apply."""

from __future__ import annotations

import pytest

from trtflow.errors import RegistryError
from trtflow.params import RegistryConfig
from trtflow.track.registry import EngineFacts, decide, status

from .reports import report

POLICY = RegistryConfig(max_drop_vs_fp32=0.01, max_drop_vs_production=0.005,
                        max_latency_regression_pct=20.0)


def facts(quality: float = 0.99, drop: float = 0.0, p50: dict[str, float] | None = None,
          host: str = "cpu-a", metric: str = "accuracy") -> EngineFacts:
    return EngineFacts(quality, metric, drop, p50 or {"1": 1.0, "32": 10.0}, host)


def outcome(decision, check: str) -> bool | None:
    return next(c["passed"] for c in decision.checks if c["check"] == check)


def test_first_version_is_promoted_when_within_the_fp32_budget() -> None:
    d = decide(facts(drop=0.004), None, POLICY)
    assert d.promote
    assert outcome(d, "vs_production") is None
    assert "no production version yet" in d.reason


def test_too_large_a_drop_vs_fp32_is_refused_with_the_numbers() -> None:
    d = decide(facts(drop=0.02), None, POLICY)
    assert not d.promote
    assert d.reason == "accuracy drop vs FP32 0.0200 (allowed 0.0100)"


def test_drop_vs_production_and_latency_regression_each_refuse() -> None:
    prod = facts(quality=0.99)
    worse = decide(facts(quality=0.98), prod, POLICY, production_version="3")
    assert not worse.promote and outcome(worse, "drop_vs_production") is False
    assert "vs production v3 0.0100" in worse.reason
    slower = decide(facts(p50={"1": 1.3, "32": 13.0}), prod, POLICY)
    assert not slower.promote and outcome(slower, "latency") is False
    assert "+30.0%" in slower.reason


def test_latency_is_a_geometric_mean_over_common_batch_sizes() -> None:
    prod = facts(p50={"1": 1.0, "32": 10.0, "64": 20.0})
    # bs1 40% slower, bs32 20% faster: geometric mean +5.8%, within 20%
    d = decide(facts(p50={"1": 1.4, "32": 8.0}), prod, POLICY)
    assert d.promote and outcome(d, "latency") is True
    assert "over batch sizes 1,32" in d.reason


def test_latency_from_another_host_is_not_compared() -> None:
    d = decide(facts(p50={"1": 9.0}), facts(host="cpu-b"), POLICY)
    assert d.promote and outcome(d, "latency") is None
    assert "another host" in d.reason


def test_different_quality_metrics_are_not_compared() -> None:
    d = decide(facts(quality=0.5, metric="cosine"), facts(quality=0.99), POLICY)
    assert outcome(d, "drop_vs_production") is None


def test_better_engine_is_promoted_over_production() -> None:
    d = decide(facts(quality=0.995, p50={"1": 0.8, "32": 9.0}), facts(), POLICY)
    assert d.promote and all(c["passed"] is not False for c in d.checks)


def test_facts_round_trip_through_version_tags_and_missing_tags_are_named() -> None:
    f = facts(quality=0.9944444444444445, drop=0.0027777777777777)
    assert EngineFacts.from_tags(f.tags()) == f
    with pytest.raises(RegistryError, match="trtflow.quality"):
        EngineFacts.from_tags({})


def test_facts_from_a_validate_report_without_labels_use_cosine() -> None:
    f = EngineFacts.from_report(report(agreement=0.9952, engine_p50={1: 2.5}), "h")
    assert (f.quality_metric, f.p50_ms) == ("cosine", {"1": 2.5})
    assert f.drop_vs_fp32 == pytest.approx(0.0048)


def test_latency_relative_to_the_same_run_baseline_cancels_host_load() -> None:
    """A busy host doubles both engine and baseline: relative p50 shows no regression."""
    prod = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.2})
    busy = EngineFacts(0.99, "accuracy", 0.0, {"1": 2.0}, "h", {"1": 0.2})
    d = decide(busy, prod, POLICY)
    assert d.promote and "relative to each run's baseline) +0.0%" in d.reason
    slower = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.3})
    assert not decide(slower, prod, POLICY).promote


def test_relative_p50_comes_from_the_report_baseline() -> None:
    given = report(accuracy=0.99, engine_p50={1: 0.5}, baseline_p50={1: 2.0})
    assert EngineFacts.from_report(given, "h").relative_p50 == {"1": 0.25}


def test_one_release_summary_feeds_the_cli_the_run_page_and_the_prefect_table() -> None:
    from flows.new_version import engines_table
    from trtflow.track.release import ReleaseSummary

    info = {"registered": "digits-int8", "version": 3, "created": False,
            "decision": {"promoted": False, "reason": "latency +30% (allowed +20%)"}}
    summary = ReleaseSummary.of(info)
    assert (summary.registered, summary.created, summary.verdict) == (
        "digits-int8 v3", False, "not promoted")
    table = engines_table("digits", {"int8": "abc"}, {"int8": info}, "")
    assert "digits-int8 v3 (same engine) | refused" in table
    assert "- digits-int8 v3, refused: latency +30% (allowed +20%)" in table
    assert ReleaseSummary.of({}).registered is None


def test_a_latency_difference_inside_the_noise_is_no_evidence_either_way() -> None:
    policy = RegistryConfig(max_latency_regression_pct=20.0)
    prod = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.2}, {"1": 15.0})
    noisy = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.25}, {"1": 15.0})
    decision = decide(noisy, prod, policy)  # +25 % measured, ±21 % noise: cannot tell
    assert outcome(decision, "latency") is None and decision.promote
    assert "(±21.2%: both measurements' intervals combined)" in decision.reason
    assert "too noisy to compare" in decision.reason
    quiet = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.25}, {"1": 1.0})
    calm_prod = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.2}, {"1": 1.0})
    assert outcome(decide(quiet, calm_prod, policy), "latency") is False  # +25 % ± 1.4 %


def test_noise_survives_the_registry_tags() -> None:
    facts = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.2}, {"1": 3.5})
    assert EngineFacts.from_tags(facts.tags()).noise_pct == {"1": 3.5}


def test_min_speedup_short_by_less_than_the_noise_does_not_fail() -> None:
    from trtflow.params import Gates
    from trtflow.stages.validate import check_gates
    from trtflow.stages.validation_report import Quality

    quality = Quality(samples=4, metric="cosine", max_abs_error=0.0, mean_abs_error=0.0,
                      agreement=1.0, labelled=False)
    gates = Gates(min_speedup=2.0)
    noisy = check_gates(quality, 1.9, gates, speedup_noise_pct=8.0)
    assert noisy.passed and "too noisy" in (noisy.decisions[-1].note or "")
    assert not check_gates(quality, 1.9, gates, speedup_noise_pct=2.0).passed


def test_the_median_interval_covers_the_median_and_widens_with_noise() -> None:
    import numpy as np

    from trtflow.latency import median_interval

    rng = np.random.default_rng(0)
    calm, busy = rng.normal(10, 0.1, 300), rng.normal(10, 2.0, 300)
    lo, hi = median_interval(calm)
    assert lo <= float(np.median(calm)) <= hi
    blo, bhi = median_interval(busy)
    assert bhi - blo > 5 * (hi - lo)


def test_a_version_production_has_left_is_superseded_not_promoted() -> None:
    assert status("promoted", ["production"], "1") == "promoted"
    assert status("promoted", [], "3") == "superseded by v3"
    assert status("promoted", ["candidate"], None) == "promoted"  # production removed by hand
    assert status("refused", [], "3") == "refused"
    assert status(None, [], "3") == ""


def test_a_matrix_explores_without_moving_production(tmp_path) -> None:
    """`trtflow matrix` registers its engines but its cells never move `production`
    unless --promote: each cell compiles a params copy with registry.promote: manual."""
    import yaml

    from flows.matrix import plan
    from trtflow.params import load_params

    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "model": {"name": "tiny", "source": {"onnx": "m.onnx"}},
        "targets": {"fp32": {}, "int8": {"precision": "int8"}}}))
    explore = plan([str(tmp_path / "p.yaml")], [], ["max", "entropy"], tmp_path)
    assert {c.target for c in explore} == {"fp32", "int8"} and len(explore) == 3
    assert {load_params(c.params).registry.promote for c in explore} == {"manual"}
    promoting = plan([str(tmp_path / "p.yaml")], [], ["entropy"], tmp_path, promote=True)
    assert {load_params(c.params).registry.promote for c in promoting} == {"auto"}


def test_an_interval_wider_than_the_measurement_is_not_comparable_never_a_pass() -> None:
    prod = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.2}, {"1": 5000.0})
    faster = EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": 0.16}, {"1": 5000.0})
    d = decide(faster, prod, POLICY)  # -20 % measured, ±7071 %: says nothing
    assert outcome(d, "latency") is None
    assert "±100% or more" in d.reason and "not comparable" in d.reason
    assert "7071" not in d.reason


def quantized(relative: float, noise: float = 2.0, precision: str = "int8") -> EngineFacts:
    return EngineFacts(0.99, "accuracy", 0.0, {"1": 1.0}, "h", {"1": relative}, {"1": noise},
                       precision)


def test_a_quantized_engine_slower_than_the_same_runs_fp32_engine_is_refused() -> None:
    fp32 = quantized(0.5, precision="fp32")
    slower = decide(quantized(0.75), None, POLICY, fp32=fp32)  # int8 0.66x FP32
    assert not slower.promote and outcome(slower, "faster_than_fp32") is False
    assert "int8 engine slower than FP32" in slower.reason
    assert "registry.allow_slower_than_fp32" in slower.reason
    allowed = decide(quantized(0.75), None,
                     RegistryConfig(allow_slower_than_fp32=True), fp32=fp32)
    assert allowed.promote and outcome(allowed, "faster_than_fp32") is None
    faster = decide(quantized(0.25), None, POLICY, fp32=fp32)
    assert faster.promote and outcome(faster, "faster_than_fp32") is True
    within_noise = decide(quantized(0.51, noise=5.0), None, POLICY, fp32=fp32)
    assert within_noise.promote  # +2 % ± 7 %: no evidence of a slow-down
    no_fp32 = decide(quantized(0.75), None, POLICY)
    assert no_fp32.promote and outcome(no_fp32, "faster_than_fp32") is None
    assert outcome(decide(quantized(0.75, precision="fp32"), None, POLICY, fp32=fp32),
                   "drop_vs_fp32") is True  # an FP32 engine is not compared with itself


def test_an_engine_this_host_could_not_run_moves_production_only_with_force() -> None:
    stand_in = EngineFacts(0.99, "accuracy", 0.0, {}, "h", precision="int8",
                           engine_ran="the handed Q/DQ graph in ONNX Runtime")
    d = decide(stand_in, None, POLICY)
    assert not d.promote and outcome(d, "engine_ran") is False
    assert ("quality measured on a stand-in (the handed Q/DQ graph in ONNX Runtime), latency "
            "not measured: production moves only with --force") in d.reason
    assert EngineFacts.from_tags(stand_in.tags()) == stand_in


def test_history_lists_batch_sizes_in_numeric_order() -> None:
    from trtflow.track.registry import VersionRow

    row = VersionRow("m-int8", "1", [], "", 0, "r", None, None,
                     '{"1": 1.0, "16": 4.0, "2": 1.5, "32": 8.0, "4": 2.0}', None, "", "", "", "")
    assert list(row.p50_by_batch_size()) == ["1", "2", "4", "16", "32"]


def test_the_best_row_names_the_precision_that_won() -> None:
    from trtflow.stages.build_report import BuildReport
    from trtflow.track.mlflow_log import engine_precision

    built = BuildReport.model_validate({
        "backend": "onnxruntime", "engine_bytes": 1, "selection": {
            "winner": "onnxruntime int8", "why": "fastest", "metric": "top1",
            "min_agreement": 0.99, "candidates": [
                {"name": "onnxruntime fp32", "target": {"precision": "fp32"}},
                {"name": "onnxruntime int8", "target": {"precision": "int8"}}]}})
    assert engine_precision("best", built) == "int8"
    assert engine_precision("fp16", built) == "fp16"
    assert engine_precision("best", BuildReport.model_validate(
        {"backend": "onnxruntime", "engine_bytes": 1})) == "best"
