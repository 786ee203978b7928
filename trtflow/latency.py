"""Latency measurement: warm-up, then timed calls until an iteration or time cap, with a
noise estimate a gate can trust.

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
from collections.abc import Callable
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


def measure(call: Callable[[], object], batch_size: int, warmup: int, iterations: int,
            max_seconds: float) -> LatencyStats:
    for _ in range(warmup):
        call()
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
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
