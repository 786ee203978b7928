"""Exact entropy grid: a max pass, then 2048-bin |x| histograms over each tensor's global max.

``calibration.histogram: exact``. TensorRT's EntropyCalibration2 histograms every
tensor over ``[0, global max]`` once the max is known; so does this collector, binning
with ``np.histogram`` (bins ``[a, b)``, the last one closed, as ``torch.histc`` and
NVIDIA's ``HistogramCalibrator`` bin), so the methods read exactly the histogram
NVIDIA's ``_compute_amax_entropy`` reads. It costs a second pass over the data; the
``streaming`` collector (``histogram.py``) needs one pass and re-grids instead.
Memory stays per tensor (``num_bins`` counts), not per value.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trtflow.errors import CalibrationError
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.histogram import DEFAULT_NUM_BINS, TensorHistogram

_CHUNK = 1 << 18


def max_abs(values: np.ndarray, name: str) -> float:
    """max |x| of a batch; NaN or infinite values are refused, naming the tensor."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return 0.0
    amax = max(float(flat.max()), -float(flat.min()))
    if not np.isfinite(amax):
        raise CalibrationError(f"tensor {name!r}: batch has NaN or infinite values; "
                               "calibration needs finite activations")
    return amax


class MaxCollector:
    """Pass 1: the global max |x| of each tensor."""

    def __init__(self) -> None:
        self.amax: dict[str, float] = {}

    def update(self, batch: Mapping[str, np.ndarray]) -> None:
        for name, values in batch.items():
            self.amax[name] = max(self.amax.get(name, 0.0), max_abs(values, name))


class _ExactHistogram:
    def __init__(self, name: str, amax: float, num_bins: int) -> None:
        self.name, self.amax, self.num_bins = name, float(amax), num_bins
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.num_values = self.num_zeros = 0

    def update(self, values: np.ndarray) -> None:
        flat = np.asarray(values).reshape(-1)
        self.num_values += flat.size
        for start in range(0, flat.size, _CHUNK):
            magnitude = np.abs(flat[start:start + _CHUNK], dtype=np.float64)
            self.num_zeros += int(np.count_nonzero(magnitude == 0.0))
            if self.amax == 0.0:
                self.counts[0] += magnitude.size
                continue
            if magnitude.size and float(magnitude.max()) > self.amax:
                raise CalibrationError(
                    f"tensor {self.name!r}: |x| = {float(magnitude.max())} exceeds the max"
                    f" pass's {self.amax}: the calibration data changed between the passes")
            counts, _ = np.histogram(magnitude, bins=self.num_bins, range=(0.0, self.amax))
            self.counts += counts

    def result(self) -> TensorHistogram:
        return TensorHistogram(self.name, self.counts, self.amax, self.amax, self.num_values,
                               self.num_zeros)


class ExactHistogramCollector:
    """Pass 2: ``num_bins`` bins over ``[0, amax]`` per tensor, ``amax`` from pass 1."""

    def __init__(self, amax: Mapping[str, float], num_bins: int = DEFAULT_NUM_BINS,
                 threads: int = 1) -> None:
        self.histograms = {name: _ExactHistogram(name, a, num_bins) for name, a in amax.items()}
        self.num_bins = num_bins
        self.threads = max(1, threads)

    def update(self, batch: Mapping[str, np.ndarray]) -> None:
        work = [(self.histograms[name], values) for name, values in batch.items()]
        if self.threads == 1 or len(work) < 2:
            for hist, values in work:
                hist.update(values)
            return
        with ThreadPoolExecutor(max_workers=min(self.threads, len(work))) as pool:
            for future in [pool.submit(h.update, v) for h, v in work]:
                future.result()

    def collector(self) -> HistogramCollector:
        """The histograms as a :class:`HistogramCollector` (what methods and npz read)."""
        result = HistogramCollector(self.num_bins, oversampling=1, threads=1)
        result.histograms = {name: h.result() for name, h in self.histograms.items()}
        return result
