"""The latency race's sequential test, on given numbers (no timing is asserted)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from trtflow.errors import BuildError
from trtflow.latency_race import (
    LatencyRace,
    RacePolicy,
    median_interval_sign_test,
    run_race,
)

POLICY = RacePolicy(budget_s=1e9, min_rounds=6, max_rounds=40, confidence=0.95,
                    margin_pct=3.0)


def feed(race: LatencyRace, rounds: list[dict[str, float]], seconds: float = 0.0) -> str:
    """Rounds of ms (the same at every batch size); the status after the last one."""
    status = "running"
    for row in rounds:
        race.add_round({n: dict.fromkeys(race.batch_sizes, row[n]) for n in race.alive})
        status = race.status(seconds)
        if status != "running":
            break
    return status


def test_sign_test_interval_matches_the_binomial_order_statistics() -> None:
    # n = 6: P(B <= 0) = 1/64 <= 0.025 < P(B <= 1) = 7/64, so k = 1: the extremes
    assert median_interval_sign_test([5, 1, 3, 2, 6, 4], 0.95) == (1.0, 6.0)
    # n = 5 cannot reach 95 % (P(B = 0) = 1/32 > 0.025): no interval yet
    assert median_interval_sign_test([1, 2, 3, 4, 5], 0.95) == (-math.inf, math.inf)
    # n = 20: P(B <= 5) = 0.0207 <= 0.025 < P(B <= 6) = 0.0577, so k = 6: x_(6), x_(15)
    assert median_interval_sign_test(list(range(1, 21)), 0.95) == (6.0, 15.0)


def test_a_clear_leader_is_decided_after_the_minimum_rounds() -> None:
    race = LatencyRace(["fp32", "int8"], [1, 8], POLICY)
    rng = np.random.default_rng(0)
    rounds = [{"fp32": 10.0 * (1 + 0.02 * rng.standard_normal()),
               "int8": 5.0 * (1 + 0.02 * rng.standard_normal())} for _ in range(20)]
    assert feed(race, rounds) == "decided"
    verdict = race.verdict()
    assert verdict.winner == "int8" and verdict.decided and verdict.rounds == POLICY.min_rounds
    assert verdict.pruned["fp32"]["round"] == POLICY.min_rounds
    assert verdict.pruned["fp32"]["leader"] == "int8"
    assert verdict.pruned["fp32"]["ratio_vs_leader"] == pytest.approx(2.0, rel=0.1)
    assert "the closest, fp32, took 2.0" in verdict.reason


def test_a_lead_inside_a_shared_drift_is_still_found_by_pairing_rounds() -> None:
    # The host slows every candidate alike, by up to 3x from round to round: unpaired
    # medians overlap widely, but int8 is 10 % faster in every round.
    race = LatencyRace(["fp32", "int8"], [1], POLICY)
    load = [1.0, 2.5, 1.2, 3.0, 1.1, 2.0, 1.4, 2.8]
    assert feed(race, [{"fp32": 10 * x, "int8": 9 * x} for x in load]) == "decided"
    assert race.verdict().winner == "int8"


def test_candidates_within_the_margin_are_a_proven_tie_and_the_simpler_is_kept() -> None:
    race = LatencyRace(["fp32", "int8"], [1], POLICY)  # order: simplest first
    # int8 0.5 % faster in some rounds, 0.5 % slower in others: inside ±3 %, no lead
    jitter = [0.995, 1.003, 0.996, 1.002]
    rounds = [{"fp32": 10.0, "int8": 10.0 * jitter[i % 4]} for i in range(30)]
    assert feed(race, rounds) == "tied"
    verdict = race.verdict()
    assert verdict.leader == "int8" and verdict.winner == "fp32" and verdict.decided


def test_a_tie_keeps_the_previous_production_choice() -> None:
    race = LatencyRace(["fp32", "int8"], [1], POLICY, previous="int8")
    rounds = [{"fp32": 10.0 + 0.01 * (i % 3), "int8": 10.0 + 0.01 * ((i + 1) % 3)}
              for i in range(30)]
    assert feed(race, rounds) == "tied"
    assert race.verdict().winner == "int8"


def test_too_noisy_to_decide_keeps_the_previous_choice_and_is_not_a_decision() -> None:
    # Alternating 40 % swings that do not cancel: neither lead nor tie can be proven.
    race = LatencyRace(["fp32", "bf16", "int8"], [1, 8], POLICY, previous="bf16")
    swing = itertools.cycle([(10.0, 14.0, 9.0), (14.0, 9.5, 13.0), (11.0, 10.0, 10.5)])
    rounds = [dict(zip(("fp32", "bf16", "int8"), next(swing), strict=True))
              for _ in range(POLICY.max_rounds)]
    assert feed(race, rounds) == "undecided"
    verdict = race.verdict()
    assert verdict.status == "undecided" and not verdict.decided
    assert verdict.winner == "bf16"
    assert "too noisy to decide" in verdict.reason and "previous choice bf16" in verdict.reason


def test_without_a_previous_choice_an_undecided_race_keeps_the_measured_leader() -> None:
    race = LatencyRace(["fp32", "int8"], [1], POLICY)
    # int8 wins half the rounds by 20 %, loses the other half by 20-27 %: no evidence
    swing = itertools.cycle([(10.0, 8.0), (8.0, 10.0), (10.0, 8.0), (8.0, 10.5)])
    rounds = [dict(zip(("fp32", "int8"), next(swing), strict=True)) for _ in range(40)]
    assert feed(race, rounds) == "undecided"
    verdict = race.verdict()
    assert verdict.winner == verdict.leader and not verdict.decided
    assert "the measured leader" in verdict.reason


def test_the_budget_ends_a_race_even_before_the_minimum_rounds() -> None:
    race = LatencyRace(["fp32", "int8"], [1], RacePolicy(budget_s=10.0))
    race.add_round({"fp32": {1: 10.0}, "int8": {1: 9.0}})
    assert race.status(seconds=5.0) == "running"
    assert race.status(seconds=11.0) == "undecided"
    assert not race.verdict(11.0).decided


def test_clear_losers_are_pruned_and_the_rest_race_on() -> None:
    race = LatencyRace(["fp32", "bf16", "int8"], [1], POLICY)
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(POLICY.max_rounds):
        base = 1 + 0.05 * rng.standard_normal()
        rows.append({"fp32": 20.0 * base, "bf16": 10.0 * base * (1 + 0.04 * rng.standard_normal()),
                     "int8": 10.0 * base * (1 + 0.04 * rng.standard_normal())})
    status = feed(race, rows[:POLICY.min_rounds])
    assert "fp32" in race.pruned and "fp32" not in race.alive
    assert status in ("running", "undecided", "tied")
    # a pruned candidate is no longer timed: a round without it is accepted
    race.add_round({"bf16": {1: 10.0}, "int8": {1: 10.1}})


def test_a_round_missing_a_candidate_or_with_a_bad_time_is_refused() -> None:
    race = LatencyRace(["fp32", "int8"], [1, 8], POLICY)
    with pytest.raises(BuildError, match="'int8'.*every batch size"):
        race.add_round({"fp32": {1: 1.0, 8: 2.0}, "int8": {1: 1.0}})
    with pytest.raises(BuildError, match="not a positive finite"):
        race.add_round({"fp32": {1: 1.0, 8: 2.0}, "int8": {1: math.nan, 8: 1.0}})
    with pytest.raises(BuildError, match="distinct"):
        LatencyRace(["a", "a"], [1], POLICY)
    with pytest.raises(BuildError, match="bad policy"):
        RacePolicy(min_rounds=0)


def test_run_race_times_with_the_given_clock_until_decided() -> None:
    ticks = itertools.count()
    cost = {"slow": 3, "fast": 1}
    now = [0.0]

    def clock() -> float:
        next(ticks)
        return now[0]

    def runner(name: str):  # each call advances the fake clock by the candidate's cost
        def call() -> None:
            now[0] += cost[name] / 1000.0
        return call

    verdict = run_race({n: {1: runner(n), 4: runner(n)} for n in cost}, POLICY, clock=clock)
    assert verdict.status == "decided" and verdict.winner == "fast"
    assert verdict.p50_ms["fast"][1] == pytest.approx(1.0)
    assert verdict.noise_pct["fast"][1] == pytest.approx(0.0, abs=1e-6)


def test_a_loser_inside_the_margin_stays_timed_and_a_pruned_previous_choice_is_named() -> None:
    # int8 2 % slower every round: it loses beyond the noise, but not clearly (±3 %),
    # so it is not pruned; the race is decided for fp32
    race = LatencyRace(["fp32", "int8"], [1], POLICY, previous="int8")
    assert feed(race, [{"fp32": 10.0, "int8": 10.2}] * 10) == "decided"
    assert race.pruned == {} and race.verdict().winner == "fp32"
    # previous choice lost clearly (pruned), the rest undecided: the leader, and why
    race = LatencyRace(["fp32", "bf16", "int8"], [1], POLICY, previous="int8")
    swing = itertools.cycle([(10.0, 8.0), (8.0, 10.0), (10.0, 8.0), (8.0, 10.5)])
    rounds = [dict(zip(("fp32", "bf16"), next(swing), strict=True)) | {"int8": 20.0}
              for _ in range(POLICY.max_rounds)]
    assert feed(race, rounds) == "undecided"
    assert "int8" in race.pruned
    assert "the previous choice int8 lost beyond the noise" in race.verdict().reason
