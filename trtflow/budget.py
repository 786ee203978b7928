"""The memory budget: how many bytes one array may take when its size comes from a
declaration (an `.npy` header, a model's input dims) rather than from bytes on disk.

A header or a graph can declare any size; allocating first and failing later lets a
40-byte file ask for terabytes. Every such size is checked against this budget
before anything is allocated. Default: a quarter of the machine's memory, at most
8 GiB; `TRTFLOW_MEMORY_BUDGET` (bytes, or with a K/M/G suffix) overrides it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from trtflow.errors import ParamsError

ENV = "TRTFLOW_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def memory_budget() -> int:
    """Bytes one declared array may take (see the module docstring)."""
    text = os.environ.get(ENV, "").strip().upper().removesuffix("B").removesuffix("I")
    if text:
        unit = text[-1] if text[-1] in _UNITS else ""
        try:
            value = float(text[:len(text) - len(unit)]) * _UNITS[unit]
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 1):
            raise ParamsError(f"${ENV}={os.environ[ENV]!r}: expected a positive number of "
                              "bytes, e.g. 2G (unset it for the default: a quarter of the "
                              "machine's memory, at most 8 GiB)")
        return int(value)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return min(total // 4, 8 << 30)


def nbytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of `shape` (exact integer arithmetic: no overflow)."""
    return math.prod(int(d) for d in shape) * itemsize


def human(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"
