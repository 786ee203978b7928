"""Streaming per-tensor histograms of |x|, collected once and shared by every method.

Written here rather than taken from ONNX Runtime or ModelOpt: ORT's entropy and
percentile calibrators keep every activation (memory grows with the data), and
ModelOpt merges per-batch 128-bin histograms. This collector keeps a fixed
number of bins per tensor, so its memory is independent of the dataset size.

Grid: a histogram of ``num_bins`` bins (2048, TensorRT's EntropyCalibration2
grid) is collected at ``oversampling`` fine bins per bin (8: 16384 fine bins,
128 KiB a tensor). Fine bin ``j`` covers ``(j*w, (j+1)*w]`` with
``w = amax_range / (num_bins * oversampling)``; bin 0 also holds exact zeros.
When data exceed the range, the range grows by the smallest power of two that
covers them and each group of ``2**k`` adjacent fine bins is merged into one.
The bin index is ``ceil(|x| * inv)``, computed in float32 (float64 for wider
inputs and for ranges outside ``[2**-100, 2**100]``); scaling by a power of two
is exact in floating point, so ``inv`` of the grown range is exactly ``inv / 2**k``,
an old fine edge stays an edge of the grown grid and the merge is exact: a
histogram streamed in batches equals, bin for bin, one collected in a single pass
over the final range. (The one exception: a non-zero |x| so far below the range,
under ``amax_range * 2**-150 / num_fine_bins``, that its product underflows to 0 is
counted as a zero.)

That final range lies anywhere between the global max and twice it, so the
methods do not read it: they read :meth:`TensorHistogram.finalized`, ``num_bins``
bins over ``[0, amax]`` re-gridded from the fine bins (TensorRT's grid over the
true max, the count below each edge within one fine bin).
"""

from __future__ import annotations

import math

import numpy as np

from trtflow.errors import CalibrationError

DEFAULT_NUM_BINS = 2048
# Fine bins per output bin. After power-of-two growth the range is at most twice the
# max, so a fine bin is at most a quarter of an output bin over [0, amax].
DEFAULT_OVERSAMPLING = 8
# Values are binned in slices of this many elements: the slice's float32 magnitudes,
# int32 and intp indices (2 MiB) stay in L2/L3 across the passes, and a bincount's
# fixed cost (allocating and adding num_bins * oversampling counts) stays small per
# value. 2**16 to 2**18 measured the same on a 1 MiB-L2 EPYC; 2**20 slower.
_CHUNK = 1 << 17
# float32 arithmetic is used for ranges in [2**-100, 2**100], where neither the
# inverse bin width nor a product can leave float32's normal range; float64 outside.
_FLOAT32_RANGE = (2.0**-100, 2.0**100)


def _inverse_bin_width(amax_range: float, num_bins: int, dtype: np.dtype) -> np.floating:
    """``num_bins / amax_range`` in ``dtype``, rounded down so the range maps to ``<= num_bins``.

    The largest value the range can hold in ``dtype`` times it must not exceed
    ``num_bins`` (no value past the last bin, no clipping pass). Since scaling by a
    power of two commutes with rounding, the result for a range grown by ``2**k`` is
    exactly this one over ``2**k``: that is what makes the re-binning exact.
    """
    kind = dtype.type
    top = kind(amax_range)
    if float(top) > amax_range:  # the largest value in dtype that is <= amax_range
        top = np.nextafter(top, kind(0))
    inv = kind(num_bins / amax_range)
    while top * inv > num_bins:
        inv = np.nextafter(inv, kind(0))
    return inv


def _work_dtype(values: np.dtype, amax_range: float) -> np.dtype:
    """float32 where it holds the input exactly and the range suits it, else float64."""
    if np.promote_types(values, np.float32) == np.float32 \
            and _FLOAT32_RANGE[0] <= amax_range <= _FLOAT32_RANGE[1]:
        return np.dtype(np.float32)
    return np.dtype(np.float64)


class _Scratch:
    """One chunk's work buffers, allocated once per update and reused by every chunk."""

    def __init__(self, size: int) -> None:
        self.size = size
        # float -> int32 -> intp (bincount's own dtype: it then makes no copy) is two
        # SIMD casts; float -> int64 has no AVX2 instruction (0.41 vs 0.62 ns a value).
        self.index32 = np.empty(size, dtype=np.int32)
        self.index = np.empty(size, dtype=np.intp)
        self._values: dict[np.dtype, np.ndarray] = {}

    def values(self, dtype: np.dtype, size: int) -> np.ndarray:
        buffer = self._values.get(dtype)
        if buffer is None:
            buffer = self._values[dtype] = np.empty(self.size, dtype=dtype)
        return buffer[:size]


class TensorHistogram:
    """Histogram of |x| for one tensor over ``[0, amax_range]``, plus exact statistics.

    ``counts`` are the ``num_bins`` bins over the range (``edges``, ``bin_width``);
    they are sums of ``fine_counts``, ``oversampling`` fine bins each, which is what
    is stored and streamed into. ``TensorHistogram(name, counts=...)`` makes a plain
    histogram (``oversampling=1``); :meth:`empty` starts a streaming one. ``amax`` is
    the largest |x| seen (exact, not binned); ``num_zeros`` counts exact zeros, which
    all sit in bin 0 (the MSE method treats them as error-free). ``amax_range`` is 0
    until a non-zero value has been seen.
    """

    def __init__(self, name: str, counts: np.ndarray | None = None, amax_range: float = 0.0,
                 amax: float = 0.0, num_values: int = 0, num_zeros: int = 0, *,
                 fine_counts: np.ndarray | None = None, oversampling: int = 1) -> None:
        self.name = name
        if counts is not None and (fine_counts is not None or oversampling != 1):
            raise CalibrationError(f"tensor {name!r}: give counts (plain bins) or fine_counts"
                                   " with oversampling, not both")
        given = counts if counts is not None else fine_counts
        stored = np.asarray(given if given is not None else
                            np.zeros(DEFAULT_NUM_BINS * oversampling, dtype=np.int64))
        if stored.ndim != 1 or stored.size < 2 or not np.issubdtype(stored.dtype, np.integer):
            raise CalibrationError(
                f"tensor {name!r}: histogram counts must be a 1-D integer array of at least"
                f" 2 bins, got shape {stored.shape} dtype {stored.dtype}")
        if oversampling < 1 or stored.size % oversampling or stored.size // oversampling < 2:
            raise CalibrationError(
                f"tensor {name!r}: oversampling={oversampling} must be >= 1 and divide the"
                f" {stored.size} fine counts into at least 2 bins")
        self.fine_counts = stored.astype(np.int64, copy=True)
        self.oversampling = int(oversampling)
        self.amax_range = float(amax_range)
        self.amax = float(amax)
        self.num_values = int(num_values)
        self.num_zeros = int(num_zeros)
        self._check()

    def _check(self) -> None:
        problems = []
        if not (math.isfinite(self.amax_range) and self.amax_range >= 0.0):
            problems.append(f"amax_range={self.amax_range} is not finite and >= 0")
        if not (math.isfinite(self.amax) and 0.0 <= self.amax <= self.amax_range):
            problems.append(f"amax={self.amax} is not within [0, amax_range={self.amax_range}]")
        total = int(self.fine_counts.sum())
        if (self.fine_counts < 0).any() or total != self.num_values:
            problems.append(f"counts (sum {total}) do not add up to num_values={self.num_values}")
        if not 0 <= self.num_zeros <= int(self.fine_counts[0]):
            problems.append(
                f"num_zeros={self.num_zeros} exceeds bin 0 ({int(self.fine_counts[0])})")
        if problems:
            raise CalibrationError(f"tensor {self.name!r}: inconsistent histogram: "
                                   + "; ".join(problems))

    def __repr__(self) -> str:
        return (f"TensorHistogram(name={self.name!r}, num_bins={self.num_bins},"
                f" oversampling={self.oversampling}, amax_range={self.amax_range},"
                f" amax={self.amax}, num_values={self.num_values}, num_zeros={self.num_zeros})")

    @classmethod
    def empty(cls, name: str, num_bins: int = DEFAULT_NUM_BINS, amax_range: float = 0.0,
              oversampling: int = DEFAULT_OVERSAMPLING) -> TensorHistogram:
        """A histogram with no values; a positive ``amax_range`` fixes the starting range."""
        if num_bins < 2:
            raise CalibrationError(f"tensor {name!r}: num_bins must be >= 2, got {num_bins}")
        return cls(name=name, amax_range=amax_range, oversampling=oversampling,
                   fine_counts=np.zeros(num_bins * oversampling, dtype=np.int64))

    @property
    def num_bins(self) -> int:
        return int(self.fine_counts.size) // self.oversampling

    @property
    def counts(self) -> np.ndarray:
        """The ``num_bins`` bin counts over the range (each the sum of its fine bins)."""
        if self.oversampling == 1:
            return self.fine_counts
        return self.fine_counts.reshape(self.num_bins, self.oversampling).sum(axis=1)

    @property
    def bin_width(self) -> float:
        return self.amax_range / self.num_bins

    @property
    def edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges over the range, ``edges[j] = j * bin_width``."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * self.bin_width

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape); the range grows if the batch exceeds it.

        A batch with NaN or infinite values raises and leaves the histogram unchanged.
        """
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        if not (np.issubdtype(flat.dtype, np.number) or flat.dtype == np.bool_) \
                or np.issubdtype(flat.dtype, np.complexfloating):
            raise CalibrationError(
                f"tensor {self.name!r}: expected real numbers, got dtype {flat.dtype}")
        saved = (self.fine_counts.copy(), self.amax_range, self.amax, self.num_values,
                 self.num_zeros)
        try:
            if self.amax_range == 0.0:  # first non-zero data: full resolution over this batch
                self._grow_range(self._checked_amax(float(flat.max()), float(flat.min())))
            scratch = _Scratch(min(flat.size, _CHUNK))
            for start in range(0, flat.size, _CHUNK):
                self._add_chunk(flat[start:start + _CHUNK], scratch)
        except BaseException:
            (self.fine_counts, self.amax_range, self.amax, self.num_values, self.num_zeros) = saved
            raise

    def _checked_amax(self, largest: float, smallest: float) -> float:
        """max |x| from max and min; NaN propagates through both."""
        amax = max(largest, -smallest)
        if not math.isfinite(amax):
            raise CalibrationError(
                f"tensor {self.name!r}: batch has NaN or infinite values; calibration needs"
                " finite activations")
        return amax

    def _add_chunk(self, chunk: np.ndarray, scratch: _Scratch) -> None:
        # |x| first, into the buffer that is then scaled in place: one pass over the
        # chunk as it comes from memory, the max (NaN propagates) read from cache.
        magnitude_dtype = _work_dtype(chunk.dtype, 1.0)
        magnitudes = scratch.values(magnitude_dtype, chunk.size)
        np.abs(chunk, out=magnitudes, dtype=magnitude_dtype)  # in float: |-128| fits
        chunk_amax = self._checked_amax(float(magnitudes.max()), 0.0)
        if chunk_amax > self.amax_range:
            self._grow_range(chunk_amax)
        self.amax = max(self.amax, chunk_amax)
        self.num_values += chunk.size
        if self.amax_range == 0.0:  # only zeros so far: they all belong in bin 0
            self.fine_counts[0] += chunk.size
            self.num_zeros += chunk.size
            return
        work = _work_dtype(chunk.dtype, self.amax_range)
        if work != magnitude_dtype:  # a range beyond float32's safe span (rare)
            magnitudes = scratch.values(work, chunk.size)
            np.abs(chunk, out=magnitudes, dtype=work)
        np.multiply(magnitudes, _inverse_bin_width(self.amax_range, self.fine_counts.size, work),
                    out=magnitudes)
        # ceil(|x| * inv) is 0 for exact zeros and j + 1 for fine bin j, (j*w, (j+1)*w]:
        # bincount's slot 0 counts the zeros, no clipping pass is needed.
        index = scratch.index[:chunk.size]
        np.ceil(magnitudes, out=scratch.index32[:chunk.size], casting="unsafe")
        np.copyto(index, scratch.index32[:chunk.size])
        binned = np.bincount(index, minlength=self.fine_counts.size + 1)
        zeros = int(binned[0])
        self.num_zeros += zeros
        self.fine_counts += binned[1:]
        self.fine_counts[0] += zeros

    def _grow_range(self, new_amax: float) -> None:
        """Widen the range to cover ``new_amax``, merging adjacent bins; bin count is fixed."""
        if self.amax_range == 0.0:
            self.amax_range = new_amax  # first non-zero data: full resolution over it
            return
        levels = 0
        new_range = self.amax_range
        while new_range < new_amax:
            new_range *= 2.0
            levels += 1
        if not math.isfinite(new_range):
            raise CalibrationError(
                f"tensor {self.name!r}: |x| = {new_amax} is too large to histogram")
        factor = 2 ** levels
        size = self.fine_counts.size
        merged = np.zeros_like(self.fine_counts)
        if factor >= size:
            merged[0] = self.fine_counts.sum()
        else:
            padded = np.concatenate([self.fine_counts, np.zeros(-size % factor, dtype=np.int64)])
            grouped = padded.reshape(-1, factor).sum(axis=1)
            merged[:grouped.size] = grouped
        self.fine_counts = merged
        self.amax_range = new_range

    def finalized(self) -> TensorHistogram:
        """``num_bins`` bins over ``[0, amax]``, the grid every method reads (TensorRT's).

        The count below each new edge is interpolated linearly inside the fine bin that
        holds the edge, so it is off by at most that one fine bin's count (a fine bin is
        at most a quarter of a new bin at the default oversampling, as the range is
        under twice the max); where the edges coincide (``amax`` equal to the range) the
        result is exact. Exact zeros stay in bin 0. Returns this histogram itself when
        it is already on that grid.
        """
        if self._on_final_grid():
            return self
        if self.amax == 0.0:
            counts = np.zeros(self.num_bins, dtype=np.int64)
            counts[0] = self.num_values
            return TensorHistogram(self.name, counts, 0.0, 0.0, self.num_values, self.num_zeros)
        below = self._below_fine_edges().astype(np.float64)
        below_new = np.interp(self._final_edges(), np.arange(below.size, dtype=np.float64), below)
        below_new[-1] = self.num_values  # nothing lies above amax
        # Round half up: an interval holding at least one whole count keeps it after rounding.
        counts = np.diff(np.floor(below_new + 0.5).astype(np.int64), prepend=0)
        return TensorHistogram(self.name, counts, self.amax, self.amax, self.num_values,
                               self.num_zeros)

    def surely_occupied(self) -> np.ndarray:
        """Which bins of :meth:`finalized` certainly hold a value, as a boolean array.

        A re-gridded bin's count may come only from the fine bins its edges split, so
        the bin may really be empty; it is certain when it holds a whole non-empty fine
        bin, exact zeros (bin 0) or the max (the last bin). On a grid that needs no
        re-gridding this is ``counts > 0``.
        """
        if self._on_final_grid():
            return self.fine_counts > 0
        occupied = np.zeros(self.num_bins, dtype=bool)
        if self.amax == 0.0:
            occupied[0] = self.num_values > 0
            return occupied
        below = self._below_fine_edges()
        edges = np.concatenate([[0.0], self._final_edges()])
        first = np.minimum(np.ceil(edges[:-1]), below.size - 1).astype(np.int64)
        stop = np.minimum(np.floor(edges[1:]), below.size - 1).astype(np.int64)
        occupied = below[np.maximum(stop, first)] > below[first]
        occupied[0] |= self.num_zeros > 0
        occupied[-1] = True
        return occupied

    def _on_final_grid(self) -> bool:
        return self.oversampling == 1 and self.amax_range == self.amax

    def _below_fine_edges(self) -> np.ndarray:
        """``below[j]``: values at or below fine edge ``j``; the zeros sit at 0 (``below[0]``)."""
        return np.concatenate([[self.num_zeros], np.cumsum(self.fine_counts)])

    def _final_edges(self) -> np.ndarray:
        """Edges ``1..num_bins`` of the final grid over ``[0, amax]``, in fine-bin units."""
        return np.arange(1, self.num_bins + 1) * (self.amax / self.amax_range * self.oversampling)
