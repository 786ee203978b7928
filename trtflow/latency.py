"""Latency measurement: warm-up, then timed calls until an iteration or time cap."""

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
    return LatencyStats(batch_size, len(times), float(np.percentile(ms, 50)),
                        float(np.percentile(ms, 95)), float(np.percentile(ms, 99)),
                        float(ms.mean()), float(batch_size / (ms.mean() / 1e3)))


def host_fingerprint() -> dict[str, str]:
    """CPU model and flags: latency is a measurement of this host, so its key includes them."""
    model, flags = platform.processor() or platform.machine(), ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value.strip()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
            if f in flags.split()]
    return {"cpu": model, "simd": " ".join(simd),
            "flags_digest": hashlib.sha256(flags.encode()).hexdigest()[:16]}
