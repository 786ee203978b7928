"""Histograms of many tensors, streamed batch by batch, and their ``.npz`` file.

The per-tensor histogram and its exact power-of-two regridding live in ``histogram``;
this module holds the collection of them that a calibration pass updates concurrently,
and its on-disk form.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trtflow.atomic import atomic_file
from trtflow.errors import CalibrationError
from trtflow.quant.histogram import DEFAULT_NUM_BINS, DEFAULT_OVERSAMPLING, TensorHistogram

NPZ_FORMAT_VERSION = 2


def _default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, 8))



class HistogramCollector:
    """Histograms of many tensors, updated batch by batch; memory is per tensor, not per value.

    A batch's tensors are histogrammed concurrently on ``threads`` threads (default:
    the usable cores, at most 8): numpy releases the GIL in most passes over the data
    (bincount's min/max scan is the exception), and between two inference batches the
    cores are otherwise idle. Measured on 2 cores: 1.5x faster than one thread.
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS,
                 oversampling: int = DEFAULT_OVERSAMPLING, threads: int | None = None) -> None:
        if num_bins < 2:
            raise CalibrationError(f"num_bins must be >= 2, got {num_bins}")
        if oversampling < 1:
            raise CalibrationError(f"oversampling must be >= 1, got {oversampling}")
        self.num_bins = num_bins
        self.oversampling = oversampling
        self.threads = _default_threads() if threads is None else max(1, threads)
        self.histograms: dict[str, TensorHistogram] = {}

    def update(self, batch: Mapping[str, np.ndarray]) -> None:
        """Add one batch of activations, ``{tensor name: values}``.

        If a tensor's values are rejected, every other tensor of the batch is still
        added and the first rejection (in batch order) is raised.
        """
        work = []
        for name, values in batch.items():
            hist = self.histograms.get(name)
            if hist is None:
                hist = self.histograms[name] = TensorHistogram.empty(
                    name, self.num_bins, oversampling=self.oversampling)
            work.append((hist, values))
        if self.threads == 1 or len(work) < 2:
            for hist, values in work:
                hist.update(values)
            return
        # Largest first, so the last tensors to finish are small ones (balanced threads).
        order = sorted(range(len(work)), key=lambda i: -np.size(work[i][1]))
        with ThreadPoolExecutor(max_workers=min(self.threads, len(work))) as pool:
            futures = {i: pool.submit(work[i][0].update, work[i][1]) for i in order}
        for i in range(len(work)):
            futures[i].result()

    def __getitem__(self, name: str) -> TensorHistogram:
        return self.histograms[name]

    def __contains__(self, name: object) -> bool:
        return name in self.histograms

    def __iter__(self) -> Iterator[str]:
        return iter(self.histograms)

    def __len__(self) -> int:
        return len(self.histograms)

    def save_npz(self, path: str | Path) -> Path:
        """Write the histograms as an ``.npz``, atomically (temp file in the folder, renamed).

        Tensor names may hold '/', '.', ':' (ONNX names do), so they are stored as a
        ``names`` array and each tensor's fine counts under an index key ``counts_<i>``.
        Edges are not stored: the fine ones are ``linspace(0, amax_range, fine_counts.size + 1)``.
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
            "oversampling": np.array([h.oversampling for h in hists], dtype=np.int64),
        }
        for index, hist in enumerate(hists):
            arrays[f"counts_{index}"] = hist.fine_counts
        with atomic_file(path) as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load_npz(cls, path: str | Path) -> HistogramCollector:
        """Read a file written by :meth:`save_npz` (format 2, or 1: plain bins, no
        oversampling); a malformed file raises CalibrationError."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"histogram file {path}: cannot read it as npz: {exc}") from exc
        required = ["format_version", "names", "amax_range", "amax", "num_values", "num_zeros"]
        version = int(arrays["format_version"][0]) if "format_version" in arrays else None
        if version == 2:
            required.append("oversampling")
        missing = [key for key in required if key not in arrays]
        if missing:
            raise CalibrationError(f"histogram file {path}: missing arrays {missing}")
        if version not in (1, NPZ_FORMAT_VERSION):
            raise CalibrationError(f"histogram file {path}: format version {version},"
                                   f" expected 1 or {NPZ_FORMAT_VERSION}")
        names = [str(name) for name in arrays["names"]]
        oversampling = arrays.get("oversampling", np.ones(len(names), dtype=np.int64))
        histograms = {}
        for index, name in enumerate(names):
            counts = arrays.get(f"counts_{index}")
            if counts is None:
                raise CalibrationError(f"histogram file {path}: no counts for tensor {name!r}")
            histograms[name] = TensorHistogram(
                name=name, fine_counts=counts, oversampling=int(oversampling[index]),
                amax_range=float(arrays["amax_range"][index]), amax=float(arrays["amax"][index]),
                num_values=int(arrays["num_values"][index]),
                num_zeros=int(arrays["num_zeros"][index]))
        bins = {h.num_bins for h in histograms.values()}
        factors = {h.oversampling for h in histograms.values()}
        collector = cls(num_bins=bins.pop() if len(bins) == 1 else DEFAULT_NUM_BINS,
                        oversampling=factors.pop() if len(factors) == 1 else DEFAULT_OVERSAMPLING)
        collector.histograms = histograms
        return collector
