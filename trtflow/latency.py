"""Latency measurement: warm-up, then timed calls until an iteration or time cap, with a
noise estimate a gate can trust.

`measure_side_by_side` times an engine and its baseline within one time budget: each
gets an equal share, its warm-up bounded by a fifth of it, and the timed calls run in
alternating blocks (engine, baseline, baseline, engine, ...), so a busy stretch of the
host hits both and their ratio stays fair. The number of calls comes from the share and
the time of a warm call, so a big model costs seconds, not minutes.

Consecutive calls are correlated (a busy neighbour slows a stretch of them), so the
noise of the median is estimated from timed *blocks*: the series is cut into
consecutive blocks, whole blocks are resampled (a moving-block bootstrap, seeded)
and the median recomputed; the 2.5/97.5 percentiles of those medians bound p50.
`noise_pct` is that interval's half-width relative to p50.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class LatencyStats:
    batch_size: int
    iterations: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    p50_ci_ms: tuple[float, float] = (0.0, 0.0)
    noise_pct: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


MIN_CALLS = 5  # timed calls per series, whatever the budget: a median and its interval
WARMUP_SHARE = 0.2  # of a series' time share, the most its warm-up may take
ROUNDS = 3  # blocks per series, alternating with the other series'


def measure(call: Callable[[], object], batch_size: int, warmup: int, iterations: int,
            max_seconds: float) -> LatencyStats:
    """One series alone: `warmup` calls, then timed calls until `iterations` or
    `max_seconds` (at least MIN_CALLS)."""
    return measure_side_by_side([call], batch_size, warmup, iterations, max_seconds,
                                rounds=1)[0]


def measure_side_by_side(calls: Sequence[Callable[[], object]], batch_size: int, warmup: int,
                         iterations: int, seconds: float, rounds: int = ROUNDS,
                         on_round: Callable[[int, int], None] | None = None,
                         clock: Callable[[], float] = time.perf_counter) -> list[LatencyStats]:
    """Each call timed within `seconds` of wall time for all of them, warm-up included.

    Warm-up: up to `warmup` calls each (at least one, at most WARMUP_SHARE of its
    share). From the last warm-up call's time, each series gets the calls its share
    allows, between MIN_CALLS and `iterations`, timed in `rounds` blocks that alternate
    with the other series' (the order reverses every round). `on_round(i, rounds)` is
    called before each round (progress)."""
    if not calls:
        return []
    share = seconds / len(calls)
    call_s: list[float] = []
    warm_spent = 0.0
    for call in calls:
        start = clock()
        took = 0.0
        for i in range(max(1, warmup)):
            t0 = clock()
            call()
            took = clock() - t0
            if i + 1 < warmup and clock() - start + took > WARMUP_SHARE * share:
                break
        warm_spent += clock() - start
        call_s.append(max(took, 1e-9))
    left = max(seconds - warm_spent, 0.0) / len(calls)
    targets = [min(iterations, max(MIN_CALLS, int(left / c))) for c in call_s]
    rounds = max(1, min(rounds, min(targets)))
    times: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        if on_round is not None:
            on_round(r + 1, rounds)
        order = range(len(calls)) if r % 2 == 0 else reversed(range(len(calls)))
        for k in order:
            want = targets[k] * (r + 1) // rounds  # this series' calls by the round's end
            while len(times[k]) < want:
                t0 = clock()
                calls[k]()
                times[k].append(clock() - t0)
    return [_stats(t, batch_size) for t in times]


def _stats(times: list[float], batch_size: int) -> LatencyStats:
    ms = np.asarray(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    lo, hi = median_interval(ms)
    return LatencyStats(batch_size, len(times), p50,
                        float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
                        float(ms.mean()), float(batch_size / (ms.mean() / 1e3)),
                        (lo, hi), 100.0 * (hi - lo) / 2.0 / p50 if p50 > 0 else 0.0)


def median_interval(samples: np.ndarray, blocks: int = 10, resamples: int = 400,
                    seed: int = 0) -> tuple[float, float]:
    """95 % interval of the median of a timing series, by resampling whole blocks of
    consecutive samples (so a slow stretch counts as one event, not many)."""
    n = len(samples)
    if n < 4:
        value = float(np.median(samples)) if n else 0.0
        return value, value
    size = max(1, n // blocks)
    starts = np.arange(0, n - size + 1)
    rng = np.random.default_rng(seed)
    picks = rng.choice(starts, size=(resamples, max(1, n // size)))
    idx = (picks[:, :, None] + np.arange(size)[None, None, :]).reshape(resamples, -1)
    medians = np.median(samples[idx], axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def combined_noise_pct(*noises: float) -> float:
    """The noise of a ratio or difference of independent measurements (root sum of squares)."""
    return float(np.sqrt(sum(x * x for x in noises)))


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo, in its order (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return value.split()
    return []


def host_fingerprint() -> dict[str, str]:
    """CPU model and flags: latency is a measurement of this host, so its key includes them."""
    model, flags = platform.processor() or platform.machine(), " ".join(cpu_flags())
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
            if f in flags.split()]
    return {"cpu": model, "simd": " ".join(simd),
            "flags_digest": hashlib.sha256(flags.encode()).hexdigest()[:16]}
