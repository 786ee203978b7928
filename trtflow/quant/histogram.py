"""Streaming per-tensor histograms of |x|, collected once and shared by every method.

Written here rather than taken from ONNX Runtime or ModelOpt: ORT's entropy and
percentile calibrators keep every activation (memory grows with the data), and
ModelOpt merges per-batch 128-bin histograms. This collector keeps a fixed
number of bins (2048, TensorRT's EntropyCalibration2 grid) per tensor, so its
memory is independent of the dataset size.

Grid: bin ``j`` covers ``(j*w, (j+1)*w]`` with ``w = amax_range / num_bins``;
bin 0 also holds exact zeros. When a batch exceeds the range, the range grows
by the smallest power of two that covers it and each group of ``2**k`` adjacent
bins is merged into one. Because the factor is a power of two the old edges
stay edges, so the merge is exact: a histogram streamed in batches equals, bin
for bin, one collected in a single pass over the final range.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trtflow.errors import CalibrationError

DEFAULT_NUM_BINS = 2048
NPZ_FORMAT_VERSION = 1
# Values are binned in slices of this many elements, so a large batch costs a
# few MiB of temporaries at most.
_CHUNK = 1 << 20


def _default_counts() -> np.ndarray:
    return np.zeros(DEFAULT_NUM_BINS, dtype=np.int64)


def _inverse_bin_width(amax_range: float, num_bins: int) -> float:
    """``num_bins / amax_range``, rounded down so that ``amax_range`` maps to ``<= num_bins``.

    Rounding it down keeps the top value of the range inside the last bin without
    clipping, and since scaling by a power of two commutes with rounding, the
    inverse width of a range grown by ``2**k`` is exactly this one over ``2**k``:
    that is what makes the re-binning exact.
    """
    inv = num_bins / amax_range
    while amax_range * inv > num_bins:
        inv = float(np.nextafter(inv, 0.0))
    return inv


@dataclass(eq=False)
class TensorHistogram:
    """Histogram of |x| for one tensor over ``[0, amax_range]``, plus exact statistics.

    ``amax`` is the largest |x| seen (exact, not binned); ``num_zeros`` counts exact
    zeros, which all sit in bin 0 (the MSE method treats them as error-free).
    ``amax_range`` is 0 until a non-zero value has been seen.
    """

    name: str
    counts: np.ndarray = field(default_factory=_default_counts)
    amax_range: float = 0.0
    amax: float = 0.0
    num_values: int = 0
    num_zeros: int = 0

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim != 1 or counts.size < 2 or not np.issubdtype(counts.dtype, np.integer):
            raise CalibrationError(
                f"tensor {self.name!r}: histogram counts must be a 1-D integer array of at least"
                f" 2 bins, got shape {counts.shape} dtype {counts.dtype}"
            )
        self.counts = counts.astype(np.int64, copy=True)
        self.amax_range = float(self.amax_range)
        self.amax = float(self.amax)
        self.num_values = int(self.num_values)
        self.num_zeros = int(self.num_zeros)
        problems = []
        if not (math.isfinite(self.amax_range) and self.amax_range >= 0.0):
            problems.append(f"amax_range={self.amax_range} is not finite and >= 0")
        if not (math.isfinite(self.amax) and 0.0 <= self.amax <= self.amax_range):
            problems.append(f"amax={self.amax} is not within [0, amax_range={self.amax_range}]")
        if (self.counts < 0).any() or int(self.counts.sum()) != self.num_values:
            problems.append(f"counts (sum {int(self.counts.sum())}) do not add up to"
                            f" num_values={self.num_values}")
        if not 0 <= self.num_zeros <= int(self.counts[0]):
            problems.append(f"num_zeros={self.num_zeros} exceeds bin 0 ({int(self.counts[0])})")
        if problems:
            raise CalibrationError(f"tensor {self.name!r}: inconsistent histogram: "
                                   + "; ".join(problems))

    @classmethod
    def empty(cls, name: str, num_bins: int = DEFAULT_NUM_BINS,
              amax_range: float = 0.0) -> TensorHistogram:
        """A histogram with no values; a positive ``amax_range`` fixes the starting range."""
        if num_bins < 2:
            raise CalibrationError(f"tensor {name!r}: num_bins must be >= 2, got {num_bins}")
        return cls(name=name, counts=np.zeros(num_bins, dtype=np.int64), amax_range=amax_range)

    @property
    def num_bins(self) -> int:
        return int(self.counts.size)

    @property
    def bin_width(self) -> float:
        return self.amax_range / self.num_bins

    @property
    def edges(self) -> np.ndarray:
        """The ``num_bins + 1`` bin edges, ``edges[j] = j * bin_width``."""
        return np.arange(self.num_bins + 1, dtype=np.float64) * self.bin_width

    def update(self, values: np.ndarray) -> None:
        """Add a batch of values (any shape); the range grows if the batch exceeds it."""
        flat = np.asarray(values).reshape(-1)
        if flat.size == 0:
            return
        if not (np.issubdtype(flat.dtype, np.number) or flat.dtype == np.bool_) \
                or np.issubdtype(flat.dtype, np.complexfloating):
            raise CalibrationError(
                f"tensor {self.name!r}: expected real numbers, got dtype {flat.dtype}")
        if flat.dtype == np.bool_:
            flat = flat.astype(np.uint8)
        # max and min without an |x| temporary; NaN propagates through both.
        batch_amax = max(float(flat.max()), -float(flat.min()))
        if not math.isfinite(batch_amax):
            raise CalibrationError(
                f"tensor {self.name!r}: batch has NaN or infinite values; calibration needs"
                " finite activations")
        if batch_amax > self.amax_range:
            self._grow_range(batch_amax)
        for start in range(0, flat.size, _CHUNK):
            self._add_chunk(np.abs(flat[start:start + _CHUNK].astype(np.float64)))
        self.amax = max(self.amax, batch_amax)
        self.num_values += int(flat.size)

    def _add_chunk(self, magnitudes: np.ndarray) -> None:
        self.num_zeros += int(np.count_nonzero(magnitudes == 0.0))
        if self.amax_range == 0.0:  # only zeros so far: they all belong in bin 0
            self.counts[0] += magnitudes.size
            return
        inv = _inverse_bin_width(self.amax_range, self.num_bins)
        # Bins are right-closed, (j*w, (j+1)*w]: index = ceil(x/w) - 1, zero into bin 0.
        index = np.ceil(magnitudes * inv).astype(np.int64) - 1
        np.clip(index, 0, self.num_bins - 1, out=index)
        self.counts += np.bincount(index, minlength=self.num_bins)

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
        merged = np.zeros_like(self.counts)
        if factor >= self.num_bins:
            merged[0] = self.counts.sum()
        else:
            padded = np.concatenate(
                [self.counts, np.zeros(-self.num_bins % factor, dtype=np.int64)])
            grouped = padded.reshape(-1, factor).sum(axis=1)
            merged[:grouped.size] = grouped
        self.counts = merged
        self.amax_range = new_range


class HistogramCollector:
    """Histograms of many tensors, updated batch by batch; memory is per tensor, not per value."""

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS) -> None:
        if num_bins < 2:
            raise CalibrationError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.histograms: dict[str, TensorHistogram] = {}

    def update(self, batch: Mapping[str, np.ndarray]) -> None:
        """Add one batch of activations, ``{tensor name: values}``."""
        for name, values in batch.items():
            hist = self.histograms.get(name)
            if hist is None:
                hist = self.histograms[name] = TensorHistogram.empty(name, self.num_bins)
            hist.update(values)

    def __getitem__(self, name: str) -> TensorHistogram:
        return self.histograms[name]

    def __contains__(self, name: object) -> bool:
        return name in self.histograms

    def __iter__(self) -> Iterator[str]:
        return iter(self.histograms)

    def __len__(self) -> int:
        return len(self.histograms)

    def save_npz(self, path: str | Path) -> Path:
        """Write ``histograms.npz`` atomically (temp file in the same folder, then rename).

        Tensor names may hold '/', '.', ':' (ONNX names do), so they are stored as a
        ``names`` array and each tensor's counts under an index key ``counts_<i>``.
        Edges are not stored: they are ``linspace(0, amax_range, num_bins + 1)``.
        """
        path = Path(path)
        hists = list(self.histograms.values())
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array([NPZ_FORMAT_VERSION], dtype=np.int64),
            "names": np.array([h.name for h in hists], dtype=np.str_),
            "amax_range": np.array([h.amax_range for h in hists], dtype=np.float64),
            "amax": np.array([h.amax for h in hists], dtype=np.float64),
            "num_values": np.array([h.num_values for h in hists], dtype=np.int64),
            "num_zeros": np.array([h.num_zeros for h in hists], dtype=np.int64),
        }
        for index, hist in enumerate(hists):
            arrays[f"counts_{index}"] = hist.counts
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> HistogramCollector:
        """Read a file written by :meth:`save_npz`; a malformed file raises CalibrationError."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"histogram file {path}: cannot read it as npz: {exc}") from exc
        required = ("format_version", "names", "amax_range", "amax", "num_values", "num_zeros")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise CalibrationError(f"histogram file {path}: missing arrays {missing}")
        version = int(arrays["format_version"][0])
        if version != NPZ_FORMAT_VERSION:
            raise CalibrationError(f"histogram file {path}: format version {version},"
                                   f" expected {NPZ_FORMAT_VERSION}")
        names = [str(name) for name in arrays["names"]]
        histograms = {}
        for index, name in enumerate(names):
            counts = arrays.get(f"counts_{index}")
            if counts is None:
                raise CalibrationError(f"histogram file {path}: no counts for tensor {name!r}")
            histograms[name] = TensorHistogram(
                name=name, counts=counts,
                amax_range=float(arrays["amax_range"][index]), amax=float(arrays["amax"][index]),
                num_values=int(arrays["num_values"][index]),
                num_zeros=int(arrays["num_zeros"][index]))
        bins = {h.num_bins for h in histograms.values()}
        collector = cls(num_bins=bins.pop() if len(bins) == 1 else DEFAULT_NUM_BINS)
        collector.histograms = histograms
        return collector
