"""A latency race: candidates timed in interleaved rounds until the evidence decides.

`precision: best` used to time every candidate for a fixed number of rounds and then
keep "the simpler engine" whenever the leader's margin was inside the combined noise:
on a loaded host that is every time, so the choice was made by the tie-break, not by
the timings. This module runs a sequential test instead:

- every round times each candidate still in the race once at each batch size, in turn
  (the order alternates), so drift and a busy neighbour hit all of them alike;
- candidates are compared *per round*: ``log(t_other / t_leader)`` of the round's
  geometric means over the batch sizes, which cancels what the round shares; the
  median of those paired log-ratios gets a distribution-free interval (the sign test's
  order statistics: exact for any distribution, no resampling, so a given series
  always gives the same verdict);
- after ``min_rounds``, a candidate whose interval lies wholly above 0 has lost beyond
  the noise; above ``+margin_pct`` it is a clear loser and is no longer timed (pruned);
  one whose interval lies inside ``±margin_pct`` is provably tied with the leader;
- the race stops when every other candidate has lost or is tied (``decided`` /
  ``tied``), or when ``budget_s`` or ``max_rounds`` runs out (``undecided``).

An undecided race keeps the previous production choice where it is still a candidate
(the host was too noisy to prove anything, so nothing changes), else the measured
leader; either way the verdict says it was not decided, and callers must not cache it
as a decision. Within a tie the preferred candidate (the previous choice, then the
order given, simplest first) is kept: the tie is proven, so simplicity costs nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from trtflow.errors import BuildError
from trtflow.latency import median_interval

Status = Literal["running", "decided", "tied", "undecided"]


@dataclass(frozen=True)
class RacePolicy:
    budget_s: float = 120.0  # wall time of the timed rounds, all batch sizes together
    min_rounds: int = 8  # the sign test needs 8 paired rounds to reach 99 % at all
    max_rounds: int = 60
    # of each interval on the median paired log-ratio: 99 %, since the race looks after
    # every round (each look is a chance of a false lead) and load drifts within a round
    confidence: float = 0.99
    margin_pct: float = 3.0  # a difference below this is a tie (equivalence margin)

    def __post_init__(self) -> None:
        if not (self.budget_s > 0 and 1 <= self.min_rounds <= self.max_rounds
                and 0.5 < self.confidence < 1 and self.margin_pct > 0):
            raise BuildError(f"latency race: bad policy {self}: need budget_s > 0, "
                             "1 <= min_rounds <= max_rounds, 0.5 < confidence < 1, "
                             "margin_pct > 0")


def median_interval_sign_test(values: Sequence[float], confidence: float
                              ) -> tuple[float, float]:
    """Distribution-free interval of the median: the order statistics ``x_(k)`` and
    ``x_(n-k+1)`` with ``P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2``; infinite
    where ``n`` is too small for that confidence."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    alpha_half = (1.0 - confidence) / 2.0
    k, cumulative = 0, 0.0
    while k < n:  # cumulative = P(B <= k - 1) before the step; P(B <= k) after
        nxt = cumulative + math.comb(n, k) / 2.0**n
        if nxt > alpha_half:
            break
        cumulative, k = nxt, k + 1
    if k == 0:
        return -math.inf, math.inf
    return float(x[k - 1]), float(x[n - k])


@dataclass
class Comparison:
    """One candidate against the leader: the median paired log-ratio and its interval,
    as ratios (``other / leader`` time; above 1 the leader is faster)."""

    candidate: str
    ratio: float
    low: float
    high: float
    outcome: Literal["loses", "tied", "open"]

    def row(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "ratio_vs_leader": self.ratio,
                "interval": [self.low, self.high], "outcome": self.outcome}


@dataclass
class RaceVerdict:
    status: Status
    winner: str
    leader: str
    rounds: int
    seconds: float
    reason: str
    comparisons: list[Comparison] = field(default_factory=list)
    # candidate -> the round it left and its comparison with the leader of that round
    pruned: dict[str, dict[str, Any]] = field(default_factory=dict)
    p50_ms: dict[str, dict[int, float]] = field(default_factory=dict)
    noise_pct: dict[str, dict[int, float]] = field(default_factory=dict)  # of each p50

    @property
    def decided(self) -> bool:
        """Whether the timings proved the choice (a decision that may be cached)."""
        return self.status in ("decided", "tied")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "decided": self.decided, "winner": self.winner,
                "leader": self.leader, "rounds": self.rounds, "seconds": self.seconds,
                "reason": self.reason, "comparisons": [c.row() for c in self.comparisons],
                "pruned": self.pruned,
                "p50_ms": {n: {str(b): v for b, v in row.items()}
                           for n, row in self.p50_ms.items()},
                "noise_pct": {n: {str(b): v for b, v in row.items()}
                              for n, row in self.noise_pct.items()}}


class LatencyRace:
    """The state of a race, fed one round of timings at a time (``add_round``); pure
    arithmetic on the numbers given, so it is tested on given numbers."""

    def __init__(self, candidates: Sequence[str], batch_sizes: Sequence[int],
                 policy: RacePolicy, previous: str | None = None) -> None:
        if len(set(candidates)) != len(candidates) or not candidates:
            raise BuildError(f"latency race: candidates must be distinct and not empty, got "
                             f"{list(candidates)}")
        if not batch_sizes:
            raise BuildError("latency race: no batch size to time")
        self.order = list(candidates)  # preference inside a tie: earlier is simpler
        self.batch_sizes = list(batch_sizes)
        self.policy = policy
        self.previous = previous if previous in candidates else None
        self.alive = list(candidates)
        self.pruned: dict[str, dict[str, Any]] = {}
        # per candidate, per round: {batch size: ms}; rounds a candidate was not timed in
        # (after it was pruned) are absent
        self.times: dict[str, list[dict[int, float]]] = {c: [] for c in candidates}
        self.rounds = 0

    def add_round(self, times: Mapping[str, Mapping[int, float]]) -> None:
        """One round: ms per batch size for every candidate still in the race."""
        for name in self.alive:
            row = times.get(name)
            if row is None or any(b not in row for b in self.batch_sizes):
                raise BuildError(f"latency race: round {self.rounds + 1} has no time for "
                                 f"{name!r} at every batch size {self.batch_sizes}")
            if any(not (math.isfinite(row[b]) and row[b] > 0) for b in self.batch_sizes):
                raise BuildError(f"latency race: {name!r} has a time that is not a positive "
                                 f"finite number in round {self.rounds + 1}: {dict(row)}")
            self.times[name].append({b: float(row[b]) for b in self.batch_sizes})
        self.rounds += 1
        if self.rounds >= self.policy.min_rounds:
            leader = self.leader()
            clear = math.log1p(self.policy.margin_pct / 100.0)
            for comp in self.compare(leader):
                if comp.outcome == "loses" and math.log(comp.low) > clear:
                    self.alive.remove(comp.candidate)
                    self.pruned[comp.candidate] = {"round": self.rounds, "leader": leader,
                                                   **comp.row()}

    def _round_scores(self, name: str) -> np.ndarray:
        """Per round, the log of the geometric mean over batch sizes."""
        return np.array([np.mean([math.log(r[b]) for b in self.batch_sizes])
                         for r in self.times[name]])

    def leader(self) -> str:
        """The candidate in the race with the lowest median round score."""
        return min(self.alive, key=lambda c: (float(np.median(self._round_scores(c))),
                                              self.order.index(c)))

    def compare(self, leader: str) -> list[Comparison]:
        """Every other candidate in the race against `leader`, on the rounds both ran."""
        lead = self._round_scores(leader)
        margin = math.log1p(self.policy.margin_pct / 100.0)
        out = []
        for name in self.alive:
            if name == leader:
                continue
            other = self._round_scores(name)
            n = min(lead.size, other.size)  # both alive since round 1: the same rounds
            diffs = other[:n] - lead[:n]
            low, high = median_interval_sign_test(diffs, self.policy.confidence)
            outcome: Literal["loses", "tied", "open"] = "open"
            if low > 0:
                outcome = "loses"
            elif -margin <= low and high <= margin:
                outcome = "tied"
            out.append(Comparison(name, math.exp(float(np.median(diffs))), math.exp(low),
                                  math.exp(high), outcome))
        return out

    def p50_ms(self) -> dict[str, dict[int, float]]:
        """Each candidate's median over the rounds it ran (a pruned one: the first ones;
        compare candidates by the paired ratios, not by these)."""
        return {n: {b: float(np.median([r[b] for r in rows])) for b in self.batch_sizes}
                for n, rows in self.times.items() if rows}

    def noise_pct(self) -> dict[str, dict[int, float]]:
        """Each p50's 95 % interval half-width, relative (``latency.median_interval``)."""
        out: dict[str, dict[int, float]] = {}
        for name, rows in self.times.items():
            if rows:
                out[name] = {}
                for b in self.batch_sizes:
                    series = np.asarray([r[b] for r in rows])
                    lo, hi = median_interval(series)
                    out[name][b] = float(100 * (hi - lo) / 2 / np.median(series))
        return out

    def status(self, seconds: float = 0.0) -> Status:
        out_of_budget = self.rounds >= self.policy.max_rounds or seconds >= self.policy.budget_s
        if self.rounds < self.policy.min_rounds:
            return "undecided" if out_of_budget and self.rounds > 0 else "running"
        comps = self.compare(self.leader())
        if all(c.outcome == "loses" for c in comps):  # also: one candidate left
            return "decided"
        if all(c.outcome != "open" for c in comps):
            return "tied"
        return "undecided" if out_of_budget else "running"

    def verdict(self, seconds: float = 0.0) -> RaceVerdict:
        if self.rounds == 0:
            raise BuildError("latency race: no round was timed")
        status = self.status(seconds)
        if status == "running":  # asked early: what the evidence says so far
            status = "undecided"
        leader = self.leader()
        comps = self.compare(leader)
        tied = [c.candidate for c in comps if c.outcome == "tied"] + [leader]
        if status == "tied":
            winner = self.previous if self.previous in tied else min(tied,
                                                                     key=self.order.index)
            reason = (f"{winner} kept: {', '.join(sorted(set(tied) - {winner}))} "
                      f"{'is' if len(tied) == 2 else 'are'} within ±{self.policy.margin_pct:g}%"
                      f" of it (proven at {self.policy.confidence:.0%})")
            if len(tied) < len(self.order):
                reason += "; the others lost beyond the noise"
        elif status == "decided":
            winner = leader
            nearest = min((c for c in comps), key=lambda c: c.ratio, default=None)
            reason = f"{leader} is the fastest beyond the noise"
            if nearest is not None:
                reason += (f" (next: {nearest.candidate}, {nearest.ratio:.2f}x its time, "
                           f"interval {nearest.low:.2f}-{nearest.high:.2f}x)")
            elif self.pruned:
                closest = min(self.pruned.values(), key=lambda row: row["ratio_vs_leader"])
                reason += (" (every other candidate lost beyond the noise; the closest, "
                           f"{closest['candidate']}, took {closest['ratio_vs_leader']:.2f}x "
                           f"{closest['leader']}'s time in the rounds both ran, interval "
                           f"{closest['interval'][0]:.2f}-{closest['interval'][1]:.2f}x)")
        else:
            open_ = [c for c in comps if c.outcome == "open"]
            winner = self.previous if self.previous in self.alive else leader
            if winner == self.previous:
                kept = f"the previous choice {winner} is kept"
            elif self.previous:
                kept = (f"{leader}, the measured leader, is kept (the previous choice "
                        f"{self.previous} lost beyond the noise)")
            else:
                kept = f"{leader}, the measured leader, is kept (no previous choice)"
            reason = (f"too noisy to decide after {self.rounds} rounds / {seconds:.0f} s: "
                      f"{leader} leads but "
                      + ", ".join(f"{c.candidate} ({c.ratio:.2f}x, interval {c.low:.2f}-"
                                  f"{c.high:.2f}x)" for c in open_)
                      + f" could still be as fast or faster; {kept}; not a decision to cache")
        return RaceVerdict(status, winner, leader, self.rounds, seconds, reason, comps,
                           dict(self.pruned), self.p50_ms(), self.noise_pct())


Runner = Callable[[], object]


def run_race(runners: Mapping[str, Mapping[int, Runner]], policy: RacePolicy,
             previous: str | None = None, order: Sequence[str] | None = None,
             clock: Callable[[], float] = time.perf_counter,
             progress: Callable[[str], None] | None = None) -> RaceVerdict:
    """Time `runners` (candidate -> batch size -> call) in interleaved rounds until the
    race is decided, tied, or out of budget. Each timed call follows an untimed one (the
    engine's weights are then in cache, as for an engine called back to back)."""
    names = list(order) if order is not None else list(runners)
    batch_sizes = sorted({b for calls in runners.values() for b in calls})
    race = LatencyRace(names, batch_sizes, policy, previous)
    for calls in runners.values():  # warm-up, untimed
        for call in calls.values():
            call()
    start = clock()
    while True:
        times: dict[str, dict[int, float]] = {}
        alive = race.alive if race.rounds % 2 == 0 else list(reversed(race.alive))
        for name in alive:
            times[name] = {}
            for bs in batch_sizes:
                call = runners[name][bs]
                call()
                t0 = clock()
                call()
                times[name][bs] = (clock() - t0) * 1e3
        race.add_round(times)
        elapsed = clock() - start
        status = race.status(elapsed)
        if progress:
            progress(f"latency race round {race.rounds}: {len(race.alive)} in the race, "
                     f"{status}, {elapsed:.0f}/{policy.budget_s:.0f} s")
        if status != "running":
            return race.verdict(elapsed)
