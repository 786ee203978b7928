"""Calibration methods: each a pure function of a TensorHistogram returning amax > 0.

The histogram is collected once (``histogram.py``); max, percentile, MSE and
entropy are derived from it without touching the data again, so methods can be
compared on one pass. Every method reads ``hist.finalized()``: ``num_bins`` bins
over ``[0, amax]`` (for 2048 bins, TensorRT's EntropyCalibration2 grid), whatever
range the streaming collector ended with. Symmetric int8 throughout:
``scale = amax / 127``.

``REGISTRY`` is the one list of methods: params validate ``calibration.method`` against
it, the calibrate stage computes each, the cache header, plots and reports read what
each declares. Adding a method is one module with its function plus one line there.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class CalibrationMethod:
    """A registered method: where its amax function lives and what it means elsewhere."""

    function: str  # "module:function", a pure function of a TensorHistogram -> amax > 0
    cache_algorithm: str  # the TensorRT calibrator its scales stand for (the cache header)
    options: tuple[str, ...] = ()  # `calibration` params fields passed to it by keyword
    color: str = "black"  # its threshold line in plots

    def amax_function(self) -> Callable[..., float]:
        module, _, name = self.function.partition(":")
        function: Callable[..., float] = getattr(importlib.import_module(module), name)
        return function


# One line per method.
REGISTRY: dict[str, CalibrationMethod] = {
    "max": CalibrationMethod("trtflow.quant.methods:amax_max", "MinMaxCalibration",
                             color="tab:red"),
    "percentile": CalibrationMethod("trtflow.quant.methods:amax_percentile",
                                    "LegacyCalibration", ("percentile",), "tab:orange"),
    "mse": CalibrationMethod("trtflow.quant.methods:amax_mse", "LegacyCalibration",
                             color="tab:green"),
    "entropy": CalibrationMethod("trtflow.quant.methods:amax_entropy", "EntropyCalibration2",
                                 color="tab:blue"),
}
METHODS = tuple(REGISTRY)


def cache_algorithm(method: str) -> str:
    """The TensorRT calibrator named in the cache header for `method`'s scales (QAT
    scales, which no method made, keep TensorRT's default EntropyCalibration2)."""
    registered = REGISTRY.get(method)
    return registered.cache_algorithm if registered else "EntropyCalibration2"


def method_options(method: str, config: Any) -> dict[str, Any]:
    """The keyword options `method` reads from a calibration config (its declared fields)."""
    return {field: getattr(config, field) for field in REGISTRY[method].options}
# MSE candidates are evaluated this many at a time (bounded temporaries).
_MSE_CHUNK = 32
# max |F(y) - y/12| of the rounding-error integral F (see _MseTerms.lower_bounds).
_ROUNDING_WOBBLE = 1.0 / (36.0 * math.sqrt(3.0))


def _checked(hist: TensorHistogram) -> TensorHistogram:
    if hist.num_values == 0:
        raise CalibrationError(
            f"tensor {hist.name!r}: empty histogram, no values were collected for it")
    return hist


def _grid(hist: TensorHistogram) -> TensorHistogram:
    """The non-empty histogram re-gridded to ``num_bins`` bins over ``[0, amax]``."""
    return _checked(hist).finalized()


def _floored(hist: TensorHistogram, amax: float) -> float:
    """Never above the true max (a wider range only coarsens the grid), never below the floor."""
    return max(min(float(amax), hist.amax), AMAX_FLOOR)


def amax_max(hist: TensorHistogram) -> float:
    """The largest |x| seen: no clipping at all."""
    return _floored(_checked(hist), hist.amax)


def amax_percentile(hist: TensorHistogram, percentile: float = 99.99) -> float:
    """The |x| below which ``percentile`` % of the values lie (linear within a bin)."""
    hist = _grid(hist)
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


def mse_curve(hist: TensorHistogram) -> tuple[np.ndarray, np.ndarray]:
    """Expected squared int8 error for each candidate amax (the bin edges of the final grid).

    Values are taken as uniform within each bin, exact zeros as a point mass with
    no error. For a threshold ``t = k * w`` with step ``s = t / 127``, a bin below
    ``t`` contributes its exact mean rounding error, a bin above it the mean of
    ``(x - t)**2`` (clipped to ``t``); the clipped part is a cubic in ``t`` summed
    with suffix sums. Returns ``(candidates, mse)``.
    """
    terms = _MseTerms(_grid(hist))
    k = terms.candidate_edges
    return k * terms.width, (terms.clipped + terms.rounding(k)) / terms.num_values


def _wobble(y: np.ndarray) -> np.ndarray:
    """``P(y) = F(y) - y/12``, with ``F(y) = integral_0^y (u - round(u))**2 du``.

    ``P`` is periodic, zero at integers and half-integers: with ``v = y - round(y)``,
    ``P = v**3/3 - v/12``, so ``|P| <= 1/(36 sqrt 3)`` (at ``|v| = 1/sqrt 12``).
    """
    v = y - np.rint(y)
    return v * (v * v - 0.25) / 3.0


class _MseTerms:
    """The parts of :func:`mse_curve` on one final grid, summed over values (not means).

    Rounding error of the bins below ``k``: ``s^3/w * sum_{j<k} m_j (F(y_{j+1}) -
    F(y_j))`` with ``y_j = j w / s = 127 j / k``. Splitting ``F = y/12 + P`` and
    summing by parts, that is ``s^2/12`` times their mass (uniform rounding error)
    plus ``s^3/w * (sum_{0<j<k} P(y_j) (m_{j-1} - m_j) + m_{k-1} P(127))``: a
    correction bounded by ``max|P|`` times the total variation of the masses.
    """

    def __init__(self, grid: TensorHistogram) -> None:
        self.width = width = grid.bin_width
        self.num_values = grid.num_values
        last = max(1, min(grid.num_bins, math.ceil(grid.amax / width)))
        self.candidate_edges = k = np.arange(1, last + 1)
        self.mass = mass = grid.counts.astype(np.float64)
        mass[0] -= grid.num_zeros
        edges = grid.edges
        lo, hi = edges[:-1], edges[1:]

        # Clipped: sum_{j >= k} m_j ((hi_j - t)^3 - (lo_j - t)^3) / 3w, a cubic in t.
        def suffix(a: np.ndarray) -> np.ndarray:
            return np.concatenate([np.cumsum(a[::-1])[::-1], [0.0]])

        s1, s2, s3 = (suffix(mass * (hi**p - lo**p)) for p in (1, 2, 3))
        t = k * width
        self.clipped = (s3[k] - 3.0 * t * s2[k] + 3.0 * t**2 * s1[k]) / (3.0 * width)
        self.step = t / INT8_MAX
        self.below_mass = np.concatenate([[0.0], np.cumsum(mass)])[k]
        self.mass_steps = -np.diff(mass)  # m_{j-1} - m_j at j = 1 .. num_bins - 1

    def rounding(self, candidate_edges: np.ndarray) -> np.ndarray:
        """Exact rounding error of the bins below each candidate edge (any order).

        Each chunk of candidates evaluates ``P`` only up to its largest edge (a
        triangle, not a square).
        """
        out = np.empty(candidate_edges.size)
        for start in range(0, candidate_edges.size, _MSE_CHUNK):
            k = candidate_edges[start:start + _MSE_CHUNK]
            step = self.step[k - 1]
            j = np.arange(1, int(k.max()) + 1)
            wobble = _wobble(j[None, :] * (INT8_MAX / k)[:, None])  # P(y_j), j = 1 .. max k
            inside = j[None, :-1] < k[:, None]
            correction = np.where(inside, wobble[:, :-1], 0.0) @ self.mass_steps[:j.size - 1]
            correction += self.mass[k - 1] * wobble[np.arange(k.size), k - 1]
            out[start:start + k.size] = (step**2 / 12.0 * self.below_mass[k - 1]
                                         + step**3 / self.width * correction)
        return out

    def lower_bounds(self) -> np.ndarray:
        """A lower bound of each candidate's summed error, in O(1) a candidate."""
        variation = np.concatenate([[0.0, 0.0], np.cumsum(np.abs(self.mass_steps))])
        bound = self.step**3 / self.width * _ROUNDING_WOBBLE * variation[self.candidate_edges]
        return self.clipped + self.step**2 / 12.0 * self.below_mass - bound


def amax_mse(hist: TensorHistogram) -> float:
    """The bin edge minimising the expected squared error of int8 quantisation with clipping.

    The argmin of :func:`mse_curve`, found without evaluating the whole curve (each
    exact point costs O(num_bins)): candidates are evaluated exactly in order of a
    cheap lower bound, until the next bound exceeds the best exact error. Ties go to
    the smaller candidate, as ``argmin`` over the curve.
    """
    if _checked(hist).amax == 0.0:
        return AMAX_FLOOR
    terms = _MseTerms(_grid(hist))
    lower = terms.lower_bounds()
    order = np.argsort(lower, kind="stable")
    best_error, best_edge = math.inf, 0
    for start in range(0, order.size, _MSE_CHUNK):
        batch = order[start:start + _MSE_CHUNK]
        # The margin covers rounding differences between the bound and the exact sum.
        if lower[batch[0]] > best_error + 1e-9 * abs(best_error):
            break
        errors = terms.clipped[batch] + terms.rounding(terms.candidate_edges[batch])
        for index, error in zip(batch.tolist(), errors.tolist(), strict=True):
            if error < best_error or (error == best_error and index < best_edge - 1):
                best_error, best_edge = error, index + 1
    return _floored(hist, best_edge * terms.width)


def entropy_divergences(hist: TensorHistogram,
                        num_quantized_bins: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) of TensorRT's EntropyCalibration2 search, for every candidate bin count.

    On the final grid (``hist.finalized()``), candidate ``i``
    (``num_quantized_bins <= i <= num_bins``) keeps bins ``[0, i)``:
    P is those counts with the outliers (all counts from bin ``i`` on) added to the
    last kept bin; Q merges the kept counts into ``num_quantized_bins`` groups
    (group of bin ``j`` is ``floor(j * nq / i)``, as NVIDIA's ``linspace``/``digitize``)
    and spreads each group's total uniformly over its non-empty bins. Before the
    search bin 0 takes bin 1's count, TensorRT's suppression of the zero spike.

    Vectorised with prefix sums instead of building P and Q per candidate:
    ``sum_j P_j log(P_j/Q_j)`` splits per group into ``sum c log c - S log(S/n)``
    (S the group's total, n its non-empty bins), plus a correction for the last bin.
    A candidate whose Q is zero where P is not (outliers poured into an empty bin)
    has infinite divergence; empty bins of P contribute 0 (0 log 0 = 0). On a
    re-gridded histogram "empty" means "not surely occupied"
    (:meth:`TensorHistogram.surely_occupied`), so the search never picks a threshold
    that TensorRT's, on the exact grid, could reject. Returns ``(bin_counts, kl)``.
    """
    surely_occupied = hist.surely_occupied()
    hist = hist.finalized()
    nq = num_quantized_bins
    if not (isinstance(nq, int) and 2 <= nq <= hist.num_bins):
        raise CalibrationError(
            f"tensor {hist.name!r}: num_quantized_bins must be an integer in"
            f" [2, num_bins={hist.num_bins}], got {nq!r}")
    counts = hist.counts.astype(np.float64)
    counts[0] = counts[1]
    prefix_count = np.concatenate([[0.0], np.cumsum(counts)])
    total = prefix_count[-1]
    all_kept_bins = np.arange(nq, counts.size + 1)
    kl = np.full(all_kept_bins.size, np.inf)
    # Outliers poured into a bin that may be empty: Q is 0 where P is not, kl = inf.
    # Those candidates (and any keeping nothing) are left out of the computation.
    finite = (prefix_count[all_kept_bins] > 0) & (
        (prefix_count[all_kept_bins] == total) | surely_occupied[all_kept_bins - 1])
    kept_bins = all_kept_bins[finite]
    occupied = counts > 0
    x_log_x = np.where(occupied, counts * np.log(np.where(occupied, counts, 1.0)), 0.0)
    prefix_occupied = np.concatenate([[0.0], np.cumsum(occupied, dtype=np.float64)])
    prefix_x_log_x = np.concatenate([[0.0], np.cumsum(x_log_x)])

    starts = _group_starts(nq, counts.size)
    if not finite.all():
        starts = starts[finite]
    group_total = np.diff(prefix_count[starts], axis=1)
    group_occupied = np.diff(prefix_occupied[starts], axis=1)
    per_group = np.diff(prefix_x_log_x[starts], axis=1)
    level = group_total / np.maximum(group_occupied, 1.0)
    last_level = level[:, -1].copy()
    # sum c log c - S log(S/n) per group; an empty group has S = 0: its level is raised
    # from 0 to the smallest normal float so that it adds 0 * log(tiny) = 0.
    np.maximum(level, np.finfo(np.float64).tiny, out=level)
    np.log(level, out=level)
    level *= group_total
    per_group -= level
    weighted = per_group.sum(axis=1)

    kept = prefix_count[kept_bins]
    outliers = total - kept
    last = counts[kept_bins - 1]
    spill = (outliers > 0) & (last > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        grown = last + outliers
        weighted += np.where(
            spill, grown * np.log(grown / last_level) - last * np.log(last / last_level), 0.0)
    kl[finite] = weighted / total + np.log(kept / total)
    return all_kept_bins, kl


@functools.lru_cache(maxsize=4)
def _group_starts(num_quantized_bins: int, num_bins: int) -> np.ndarray:
    """``starts[c, g] = ceil(g * i / nq)``: first bin of group ``g`` for candidate ``i = nq + c``.

    The same table for every tensor of a grid (1921 x 129 for TensorRT's), so it is
    built once; read-only.
    """
    nq = num_quantized_bins
    kept_bins = np.arange(nq, num_bins + 1)
    starts = (np.arange(nq + 1)[None, :] * kept_bins[:, None] + nq - 1) // nq
    starts.setflags(write=False)
    return starts


def amax_entropy(hist: TensorHistogram, num_quantized_bins: int = 128) -> float:
    """TensorRT EntropyCalibration2: the threshold whose int8 version loses least information.

    amax is the upper edge of the last kept bin of the final grid, ``i * amax / num_bins``:
    P covers exactly ``[0, i * w]``, so that is the range the 128 levels represent.
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
    return _floored(hist, kept_bins[best] * (hist.amax / hist.num_bins))


def compute_amax(hist: TensorHistogram, method: str, **opts: Any) -> float:
    """Dispatch by method name, one of ``METHODS``; ``opts`` go to that method."""
    registered = REGISTRY.get(method)
    if registered is None:
        raise CalibrationError(
            f"tensor {hist.name!r}: unknown calibration method {method!r},"
            f" expected one of {list(METHODS)}")
    function = registered.amax_function()
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
