"""StepEstimate's messages on a given clock (no timing is asserted)."""

from __future__ import annotations

from trtflow.progress_estimate import StepEstimate, time_left


def test_time_left_is_the_mean_step_time_times_the_steps_left() -> None:
    now = [0.0]
    seen: list[str] = []
    est = StepEstimate(seen.append, "method search", total=5, clock=lambda: now[0])
    est.step("entropy everywhere")
    now[0] = 10.0
    est.step("max everywhere")
    now[0] = 20.0
    est.step("percentile everywhere")
    assert seen == ["method search 1/5: entropy everywhere",
                    "method search 2/5: max everywhere, ~40 s left",
                    "method search 3/5: percentile everywhere, ~30 s left"]


def test_an_unknown_total_reports_the_time_so_far_and_long_waits_in_minutes() -> None:
    now = [0.0]
    est = StepEstimate(None, "sensitivity", clock=lambda: now[0])
    assert est.message() == "sensitivity 1"
    now[0] = 30.0
    assert est.message("conv3") == "sensitivity 2: conv3, 30 s so far"
    est = StepEstimate(None, "race", total=50, clock=lambda: now[0])
    est.message()
    now[0] += 60.0
    assert est.message() == "race 2/50, ~49 min left"


def test_time_left_of_a_sample_count() -> None:
    assert time_left(12.0, 32, 128) == "~36 s left"
    assert time_left(0.0, 0, 128) == "" and time_left(5.0, 128, 128) == ""
