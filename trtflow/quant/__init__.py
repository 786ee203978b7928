"""Calibration core: streaming histograms, amax methods and the TensorRT cache format.

Pure numpy: histograms are collected once (``histogram``), each method is a pure
function of a histogram (``methods``), and the scales go to a TensorRT
calibration cache (``cache``).
"""

from trtflow.quant.cache import (
    DEFAULT_TRT_VERSION,
    CalibrationCacheHeader,
    read_calibration_cache,
    trt_version_number,
    write_calibration_cache,
)
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.histogram import DEFAULT_NUM_BINS, TensorHistogram
from trtflow.quant.methods import (
    AMAX_FLOOR,
    METHODS,
    amax_entropy,
    amax_max,
    amax_mse,
    amax_percentile,
    compute_amax,
    entropy_divergences,
    mse_curve,
    scale_from_amax,
)

__all__ = [
    "AMAX_FLOOR",
    "DEFAULT_NUM_BINS",
    "DEFAULT_TRT_VERSION",
    "METHODS",
    "CalibrationCacheHeader",
    "HistogramCollector",
    "TensorHistogram",
    "amax_entropy",
    "amax_max",
    "amax_mse",
    "amax_percentile",
    "compute_amax",
    "entropy_divergences",
    "mse_curve",
    "read_calibration_cache",
    "scale_from_amax",
    "trt_version_number",
    "write_calibration_cache",
]
