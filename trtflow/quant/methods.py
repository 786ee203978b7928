"""Calibration methods: each a pure function of a TensorHistogram returning amax > 0.

The histogram is collected once (``histogram.py``); max, percentile, MSE and
entropy are derived from it without touching the data again, so methods can be
compared on one pass. Symmetric int8 throughout: ``scale = amax / 127``.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from trtflow.errors import CalibrationError
from trtflow.quant.histogram import TensorHistogram

INT8_MAX = 127
# Floor for amax (so for the scale): a tensor that is all zeros still needs a
# positive, finite scale (TensorRT rejects 0). 2**-24 is the smallest fp16
# subnormal: anything below it is zero in a half-precision engine anyway, and
# scale = 2**-24 / 127 is a normal float32 whose inverse is far from overflow.
AMAX_FLOOR = 2.0**-24
METHODS = ("max", "percentile", "mse", "entropy")
# MSE candidates are evaluated this many at a time (bounded temporaries).
_MSE_CHUNK = 32


def _checked(hist: TensorHistogram) -> TensorHistogram:
    if hist.num_values == 0:
        raise CalibrationError(
            f"tensor {hist.name!r}: empty histogram, no values were collected for it")
    return hist


def _floored(hist: TensorHistogram, amax: float) -> float:
    """Never above the true max (a wider range only coarsens the grid), never below the floor."""
    return max(min(float(amax), hist.amax), AMAX_FLOOR)


def amax_max(hist: TensorHistogram) -> float:
    """The largest |x| seen: no clipping at all."""
    return _floored(_checked(hist), hist.amax)


def amax_percentile(hist: TensorHistogram, percentile: float = 99.99) -> float:
    """The |x| below which ``percentile`` % of the values lie (linear within a bin)."""
    _checked(hist)
    if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) \
            or not 0.0 < float(percentile) <= 100.0:
        raise CalibrationError(
            f"tensor {hist.name!r}: percentile must be in (0, 100], got {percentile!r}")
    if percentile == 100.0 or hist.amax == 0.0:
        return _floored(hist, hist.amax)
    target = percentile / 100.0 * hist.num_values
    cumulative = np.cumsum(hist.counts)
    b = min(int(np.searchsorted(cumulative, target, side="left")), hist.num_bins - 1)
    before = float(cumulative[b] - hist.counts[b])
    fraction = (target - before) / hist.counts[b] if hist.counts[b] else 1.0
    return _floored(hist, (b + fraction) * hist.bin_width)


def _rounding_error_integral(y: np.ndarray) -> np.ndarray:
    """``F(y) = integral_0^y (u - round(u))**2 du``: the rounding error in units of the step."""
    whole = np.floor(y)
    r = y - whole
    # Over one step the integral is u**3/3 up to the midpoint and 1/12 - u**3/3 after
    # it, u being the distance to the nearest integer.
    u = 0.5 - np.abs(r - 0.5)
    cube = u * u * u / 3.0
    return whole / 12.0 + np.where(r > 0.5, 1.0 / 12.0 - cube, cube)


def mse_curve(hist: TensorHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Expected squared int8 error for each candidate amax (bin edges up to the max).

    Values are taken as uniform within each bin, exact zeros as a point mass with
    no error. For a threshold ``t = k * w`` with step ``s = t / 127``, a bin below
    ``t`` contributes its exact mean rounding error (via the integral ``F``), a bin
    above it the mean of ``(x - t)**2`` (clipped to ``t``); the clipped part is a
    cubic in ``t`` summed with suffix sums. Returns ``(candidates, mse)``.
    """
    _checked(hist)
    width = hist.bin_width
    n_bins = hist.num_bins
    last = max(1, min(n_bins, math.ceil(hist.amax / width)))
    candidate_edges = np.arange(1, last + 1)
    candidates = candidate_edges * width
    mass = hist.counts.astype(np.float64)
    mass[0] -= hist.num_zeros
    edges = hist.edges
    lo, hi = edges[:-1], edges[1:]

    # Clipped: sum_{j >= k} m_j ((hi_j - t)^3 - (lo_j - t)^3) / 3w, a cubic in t.
    def suffix(a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])

    s1, s2, s3 = (suffix(mass * (hi**p - lo**p)) for p in (1, 2, 3))
    k = candidate_edges
    t = candidates
    clipped = (s3[k] - 3.0 * t * s2[k] + 3.0 * t**2 * s1[k]) / (3.0 * width)

    # Rounding: sum_{j < k} m_j s^3 (F(hi_j/s) - F(lo_j/s)) / w; F at the edges once,
    # each chunk of candidates only up to its largest edge (a triangle, not a square).
    rounding = np.empty(candidates.size)
    for start in range(0, candidates.size, _MSE_CHUNK):
        stop = min(start + _MSE_CHUNK, candidates.size)
        top = int(candidate_edges[stop - 1])
        step = candidates[start:stop, None] / INT8_MAX
        per_bin = np.diff(_rounding_error_integral(edges[None, :top + 1] / step), axis=1)
        below = np.arange(top)[None, :] < candidate_edges[start:stop, None]
        rounding[start:stop] = (step[:, 0] ** 3 / width) * (
            np.where(below, per_bin, 0.0) @ mass[:top])
    return candidates, (rounding + clipped) / hist.num_values


def amax_mse(hist: TensorHistogram) -> float:
    """The bin edge minimising the expected squared error of int8 quantisation with clipping."""
    if _checked(hist).amax == 0.0:
        return AMAX_FLOOR
    candidates, errors = mse_curve(hist)
    return _floored(hist, candidates[int(np.argmin(errors))])


def entropy_divergences(hist: TensorHistogram,
                        num_quantized_bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) of TensorRT's EntropyCalibration2 search, for every candidate bin count.

    Candidate ``i`` (``num_quantized_bins <= i <= num_bins``) keeps bins ``[0, i)``:
    P is those counts with the outliers (all counts from bin ``i`` on) added to the
    last kept bin; Q merges the kept counts into ``num_quantized_bins`` groups
    (group of bin ``j`` is ``floor(j * nq / i)``, as NVIDIA's ``linspace``/``digitize``)
    and spreads each group's total uniformly over its non-empty bins. Before the
    search bin 0 takes bin 1's count, TensorRT's suppression of the zero spike.

    Vectorised with prefix sums instead of building P and Q per candidate:
    ``sum_j P_j log(P_j/Q_j)`` splits per group into ``sum c log c - S log(S/n)``
    (S the group's total, n its non-empty bins), plus a correction for the last bin.
    A candidate whose Q is zero where P is not (outliers poured into an empty bin)
    has infinite divergence; empty bins of P contribute 0 (0 log 0 = 0).
    Returns ``(bin_counts, kl)``.
    """
    nq = num_quantized_bins
    if not (isinstance(nq, int) and 2 <= nq <= hist.num_bins):
        raise CalibrationError(
            f"tensor {hist.name!r}: num_quantized_bins must be an integer in"
            f" [2, num_bins={hist.num_bins}], got {nq!r}")
    counts = hist.counts.astype(np.float64)
    counts[0] = counts[1]
    n_bins = counts.size
    kept_bins = np.arange(nq, n_bins + 1)
    occupied = counts > 0
    x_log_x = np.where(occupied, counts * np.log(np.where(occupied, counts, 1.0)), 0.0)
    prefix_count = np.concatenate([[0.0], np.cumsum(counts)])
    prefix_occupied = np.concatenate([[0], np.cumsum(occupied)])
    prefix_x_log_x = np.concatenate([[0.0], np.cumsum(x_log_x)])

    # starts[c, g] = first bin of group g for candidate c = ceil(g * i / nq).
    starts = (np.arange(nq + 1)[None, :] * kept_bins[:, None] + nq - 1) // nq
    lo, hi = starts[:, :-1], starts[:, 1:]
    group_total = prefix_count[hi] - prefix_count[lo]
    group_occupied = prefix_occupied[hi] - prefix_occupied[lo]
    level = np.where(group_occupied > 0, group_total / np.maximum(group_occupied, 1), 1.0)
    per_group = (prefix_x_log_x[hi] - prefix_x_log_x[lo]) - group_total * np.log(level)
    weighted = np.where(group_occupied > 0, per_group, 0.0).sum(axis=1)

    total = prefix_count[-1]
    kept = prefix_count[kept_bins]
    outliers = total - kept
    last = counts[kept_bins - 1]
    last_level = level[:, -1]
    spill = (outliers > 0) & (last > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        grown = last + outliers
        weighted += np.where(
            spill, grown * np.log(grown / last_level) - last * np.log(last / last_level), 0.0)
        kl = weighted / total + np.log(kept / total)
    kl[((outliers > 0) & (last == 0)) | (kept == 0)] = np.inf
    return kept_bins, kl


def amax_entropy(hist: TensorHistogram, num_quantized_bins: int = 128) -> float:
    """TensorRT EntropyCalibration2: the threshold whose int8 version loses least information.

    amax is the upper edge of the last kept bin, ``edges[i]`` (``i * bin_width``): P
    covers exactly ``[0, i * w]``, so that is the range the 128 levels represent.
    NVIDIA's pytorch-quantization (``calib_bin_edges[i]``) and ONNX Runtime
    (``hist_edges[stop]``) use the same edge; the 2017 GTC slides write
    ``(m + 0.5) * w``, half a bin (at most 0.4 %) higher. Ties go to the larger ``i``,
    as in pytorch-quantization.
    """
    if _checked(hist).amax == 0.0:
        return AMAX_FLOOR
    kept_bins, kl = entropy_divergences(hist, num_quantized_bins)
    if not np.isfinite(kl).any():
        return _floored(hist, hist.amax)
    best = kl.size - 1 - int(np.argmin(kl[::-1]))
    return _floored(hist, kept_bins[best] * hist.bin_width)


_DISPATCH: dict[str, Callable[..., float]] = {
    "max": amax_max,
    "percentile": amax_percentile,
    "mse": amax_mse,
    "entropy": amax_entropy,
}


def compute_amax(hist: TensorHistogram, method: str, **opts: Any) -> float:
    """Dispatch by method name, one of ``METHODS``; ``opts`` go to that method."""
    function = _DISPATCH.get(method)
    if function is None:
        raise CalibrationError(
            f"tensor {hist.name!r}: unknown calibration method {method!r},"
            f" expected one of {list(METHODS)}")
    try:
        inspect.signature(function).bind(hist, **opts)
    except TypeError as exc:
        raise CalibrationError(
            f"tensor {hist.name!r}: bad options {sorted(opts)} for method {method!r}: {exc}"
        ) from exc
    return function(hist, **opts)


def scale_from_amax(amax: float, name: str | None = None) -> float:
    """Symmetric int8 scale ``amax / 127``, always positive (amax floored at AMAX_FLOOR)."""
    if isinstance(amax, bool) or not isinstance(amax, numbers.Real) \
            or not (math.isfinite(amax) and amax >= 0):
        what = f"tensor {name!r}: " if name else ""
        raise CalibrationError(f"{what}amax must be finite and >= 0, got {amax!r}")
    return max(float(amax), AMAX_FLOOR) / INT8_MAX
