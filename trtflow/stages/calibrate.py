"""calibrate: one histogram pass over the calibration data, scales from all four methods.

Outputs (one directory, content-addressed like every stage):
- `histograms.npz`   the raw per-tensor histograms (methods can be compared later);
- `scales.json`      tensor -> {amax, scale, method} for the chosen method, plus every
                     method's amax so reports can compare them;
- `calibration.cache` TensorRT's text cache of the chosen scales (TensorRT <= 10, ORT-TRT);
- `model.qdq.onnx`   explicit quantization placed the TensorRT way (TensorRT 11 builds
                     only from Q/DQ graphs).
A graph that already carries Q/DQ (from QAT) keeps its scales; it still gets a cache.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtflow.errors import CalibrationError
from trtflow.params import CalibrationConfig
from trtflow.quant.cache import write_calibration_cache
from trtflow.quant.collect import Progress, collect_histograms
from trtflow.quant.methods import METHODS, compute_amax, scale_from_amax
from trtflow.quant.qdq import Placement, insert_qdq, quantizable_activations

VERSION = "calibrate-1"
SCALES_FILE = "scales.json"
CACHE_FILE = "calibration.cache"
HISTOGRAMS_FILE = "histograms.npz"
QDQ_FILE = "model.qdq.onnx"
PLACEMENTS: tuple[Placement, ...] = ("tensorrt", "ort_cpu")


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Activations either placement quantizes, in graph order, without duplicates."""
    seen: dict[str, None] = {}
    for placement in PLACEMENTS:
        for name in quantizable_activations(model, placement):
            seen.setdefault(name, None)
    return list(seen)


def method_options(cfg: CalibrationConfig, method: str) -> dict[str, Any]:
    return {"percentile": cfg.percentile} if method == "percentile" else {}


def existing_qdq_amax(model: onnx.ModelProto) -> dict[str, float]:
    """amax of each tensor a QAT graph already quantizes (its QuantizeLinear scales)."""
    inits = {i.name: i for i in model.graph.initializer}
    amax = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if scale.size == 1:  # per-tensor activation scale; weights are per channel
                amax[node.input[0]] = float(scale.reshape(()) * 127.0)
    return amax


def calibrate(model_path: Path, batches: Iterable[dict[str, np.ndarray]],
              cfg: CalibrationConfig, threads: int, out_dir: Path,
              progress: Progress | None = None) -> dict[str, Any]:
    model = onnx.load(str(model_path))
    qat = existing_qdq_amax(model)
    if qat:
        return _from_qat(model, qat, out_dir)
    tensors = calibration_tensors(model)
    if not tensors:
        raise CalibrationError(f"{model_path}: the graph has no float activation feeding a "
                               "Conv/Gemm/MatMul, so there is nothing to calibrate")
    rss_before = _peak_rss_mb()
    result = collect_histograms(model, tensors, batches, threads, cfg.num_bins,
                                cfg.max_samples, progress)
    if result.samples < cfg.min_samples:
        import warnings

        warnings.warn(f"calibration used only {result.samples} samples (< min_samples="
                      f"{cfg.min_samples}); scales may not represent the data", stacklevel=2)
    result.collector.save_npz(out_dir / HISTOGRAMS_FILE)
    all_amax = {m: {t: compute_amax(result.collector[t], m, **method_options(cfg, m))
                    for t in tensors} for m in METHODS}
    methods = tensor_methods(model, tensors, cfg)
    chosen = {t: all_amax[methods[t]][t] for t in tensors}
    _write_outputs(model, chosen, methods, all_amax, out_dir)
    return {
        "method": cfg.method, "input_method": cfg.input_method, "tensors": len(tensors),
        "samples": result.samples,
        "batches": result.batches, "collect_seconds": result.seconds,
        "peak_rss_mb": _peak_rss_mb(), "rss_growth_mb": _peak_rss_mb() - rss_before,
        "qat": False,
    }


def tensor_methods(model: onnx.ModelProto, tensors: list[str], cfg: CalibrationConfig
                   ) -> dict[str, str]:
    """The method each tensor uses: `input_method` for graph inputs, `method` otherwise."""
    inputs = {i.name for i in model.graph.input}
    on_inputs = cfg.method if cfg.input_method == "same" else cfg.input_method
    return {t: on_inputs if t in inputs else cfg.method for t in tensors}


def _from_qat(model: onnx.ModelProto, amax: dict[str, float], out_dir: Path) -> dict[str, Any]:
    write_calibration_cache(out_dir / CACHE_FILE, {t: a / 127.0 for t, a in amax.items()})
    _write_scales(out_dir, amax, dict.fromkeys(amax, "qat"), {"qat": amax})
    onnx.save_model(model, str(out_dir / QDQ_FILE))
    return {"method": "qat", "tensors": len(amax), "samples": 0, "qat": True}


def _write_outputs(model: onnx.ModelProto, amax: dict[str, float], methods: dict[str, str],
                   all_amax: dict[str, dict[str, float]], out_dir: Path) -> None:
    write_calibration_cache(out_dir / CACHE_FILE,
                            {t: scale_from_amax(a, t) for t, a in amax.items()})
    _write_scales(out_dir, amax, methods, all_amax)
    qdq_model, _ = insert_qdq(model, amax, "tensorrt")
    onnx.save_model(qdq_model, str(out_dir / QDQ_FILE))


def _write_scales(out_dir: Path, amax: dict[str, float], methods: dict[str, str],
                  all_amax: dict[str, dict[str, float]]) -> None:
    table = {t: {"amax": a, "scale": a / 127.0, "method": methods[t],
                 "amax_by_method": {m: all_amax[m][t] for m in all_amax}}
             for t, a in amax.items()}
    (out_dir / SCALES_FILE).write_text(json.dumps(table, indent=2))


def read_scales(path: Path) -> dict[str, float]:
    """tensor -> amax from a scales.json, checked."""
    try:
        table = json.loads(path.read_text())
        return {t: float(v["amax"]) for t, v in table.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(f"{path}: not a valid scales.json ({exc})") from None


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
