"""amax_table computes each method's own amax, only for the methods a calibration reads."""

from __future__ import annotations

import numpy as np
import pytest

from trtflow.errors import CalibrationError
from trtflow.quant.amax_table import amax_table, needed_methods
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.methods import METHODS, compute_amax


def _collector() -> HistogramCollector:
    rng = np.random.default_rng(3)
    collector = HistogramCollector(threads=1)
    for _ in range(3):  # streamed batches: re-gridded histograms, as the stage has them
        collector.update({
            "relu": np.maximum(rng.standard_normal(20000), 0).astype(np.float32),
            "heavy": (rng.standard_normal(20000) ** 3).astype(np.float32),
            "pixels": (np.round(rng.uniform(-1, 1, 20000) * 127) / 127).astype(np.float32),
            "zeros": np.zeros(100, dtype=np.float32),
        })
    return collector


@pytest.mark.parametrize("threads", [1, 2])
def test_every_value_is_compute_amax_bit_for_bit(threads: int) -> None:
    collector = _collector()
    tensors = ["relu", "heavy", "pixels", "zeros"]
    table = amax_table(collector, tensors, list(METHODS), {"percentile": {"percentile": 99.9}},
                       threads=threads)
    for method in METHODS:
        opts = {"percentile": 99.9} if method == "percentile" else {}
        assert table[method] == {t: compute_amax(collector[t], method, **opts)
                                 for t in tensors}


def test_only_the_methods_a_calibration_reads_are_needed() -> None:
    assert needed_methods("entropy", "max", "max") == ["max", "entropy"]
    assert needed_methods("entropy", "same", "max") == ["max", "entropy"]
    assert needed_methods("percentile", "same", "percentile") == ["percentile"]
    assert needed_methods("auto", "max", "max") == ["max", "percentile", "entropy"]
    assert needed_methods("auto", "max", "mse") == list(METHODS)
    # classwise (the default) reads its table's two; both from the one histogram pass
    assert needed_methods("classwise", "max", "max") == ["max", "percentile", "entropy"]
    assert needed_methods("classwise", "same", "percentile") == ["percentile", "entropy"]
    assert needed_methods("entropy", "max", "max", extra=["mse"]) == ["max", "mse", "entropy"]


def test_a_bad_option_still_names_the_tensor() -> None:
    with pytest.raises(CalibrationError, match="'relu'.*percentile"):
        amax_table(_collector(), ["relu"], ["percentile"], {"percentile": {"percentile": 0}})
