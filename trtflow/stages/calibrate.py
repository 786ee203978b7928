"""calibrate: one histogram pass over the calibration data, scales from the methods asked for.

Its directory is a `trtflow.quant.artifact.Calibration` (that module names the files):
- the raw per-tensor histograms (methods can be compared later);
- the scales: tensor -> {amax, scale, method} for the chosen method (the default,
  `classwise`: entropy on linear-layer outputs, percentile elsewhere, by tensor class:
  quant.class_table), plus the amax of
  every method computed (those the params read: quant.amax_table) so reports compare them;
- TensorRT's text cache of the chosen scales for *every* float activation of the
  graph, as TensorRT's own calibrator writes it (TensorRT <= 10, ORT-TRT); the header
  names the chosen method's TensorRT algorithm (classwise: entropy's), the scales each
  tensor's own method;
- the INT8 Q/DQ graph, placed the TensorRT way (TensorRT 11 builds only from Q/DQ
  graphs): the subset of the cache's tensors it needs;
- the FP8 Q/DQ graph: the same placement in E4M3FN (opset 19, scale = amax/448 with
  `fp8_method`'s amax): what a TensorRT fp8 build reads, and what an ONNX Runtime fp8
  target runs on the CPU as its numerical stand-in;
- the selection-split accuracy report (method scores and `auto`'s search per tensor
  class, sensitivity where asked or where the fallback ranked layers, the fallback).
A graph that already carries Q/DQ (from QAT) keeps its scales; it still gets a cache.
`calibrate` is also what precision best's SmoothQuant candidates run on their
smoothed graph (trtflow.stages.select): one writer of calibrations.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from trtflow.errors import CalibrationError, ParamsError
from trtflow.params import CalibrationConfig
from trtflow.quant import accuracy as accuracy_mod
from trtflow.quant.amax_table import AUTO_METHODS, amax_table, needed_methods
from trtflow.quant.artifact import Calibration
from trtflow.quant.class_table import class_methods
from trtflow.quant.collect import Progress, collect_histograms
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.group_sensitivity import lazy_fallback
from trtflow.quant.method_search import search_methods, tensor_class
from trtflow.quant.methods import (
    cache_algorithm,
    method_options,
    scale_from_amax,
)
from trtflow.quant.qdq import (
    FP8_MAX,
    Placement,
    float_activations,
    insert_qdq,
    quantizable_activations,
)

if TYPE_CHECKING:
    from trtflow.context import Context
    from trtflow.stage import StageResult

VERSION = "calibrate-7"  # 3-5: NVIDIA residual rule, MaxPool inputs, complete cache, fp8
# Q/DQ, streaming histograms fed 8 samples at a time (their range starts elsewhere);
# 6: only the methods asked for (the scales' amax_by_method), auto per tensor class,
# the fallback ranks layers lazily, no sensitivity report unless asked;
# 7: the default method is classwise (a calibration stored under entropy is not reused)
# E4M3 rounds |x| / scale below 464 (halfway to the next binade step) to 448; above
# that a value saturates: it overflows E4M3 after scaling.
FP8_OVERFLOW = 464.0
PLACEMENTS: tuple[Placement, ...] = ("tensorrt", "ort_cpu")


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Activations either placement quantizes, in graph order, without duplicates."""
    seen: dict[str, None] = {}
    for placement in PLACEMENTS:
        for name in quantizable_activations(model, placement):
            seen.setdefault(name, None)
    return list(seen)


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


@dataclass
class AccuracyReport:
    method_scores: dict[str, dict[str, float]] | None = None
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    fallback: dict[str, Any] | None = None
    method_search: dict[str, Any] | None = None  # `auto`: the method of each tensor class

    def as_dict(self) -> dict[str, Any]:
        return {"method_scores": self.method_scores, "sensitivity": self.sensitivity,
                "fallback": self.fallback, "method_search": self.method_search}


def _selection(batches: Iterable[dict[str, np.ndarray]], samples: int
               ) -> list[dict[str, np.ndarray]]:
    feeds, n = [], 0
    for feed in batches:
        if n >= samples:
            break
        feeds.append({k: v[: samples - n] for k, v in feed.items()})
        n += len(next(iter(feed.values())))
    return feeds


def _choose_by_class(model: onnx.ModelProto, tensors: list[str], cfg: CalibrationConfig,
                     all_amax: dict[str, dict[str, float]], ev: accuracy_mod.Evaluator,
                     accuracy: AccuracyReport, status: Callable[[str], None] | None
                     ) -> tuple[str, dict[str, str]]:
    """`method: auto`: the method of each tensor class that agrees best with FP32 on the
    selection split (quant.method_search); graph inputs keep `input_method`."""
    of = tensor_class(model)
    fixed = {t: m for t, m in tensor_methods(model, tensors, cfg, "auto").items()
             if m != "auto"}
    _, placed = insert_qdq(model, all_amax["max"], "tensorrt")
    quantized = {row["amax_from"] for row in placed["activations"].values()}
    choice = search_methods(ev, all_amax, {t: of(t) for t in tensors}, fixed, quantized,
                            AUTO_METHODS, status)
    accuracy.method_scores, accuracy.method_search = choice.single_scores, choice.as_dict()
    return choice.method, choice.methods


def calibrate(model_path: Path, batches: Iterable[dict[str, np.ndarray]],
              cfg: CalibrationConfig, threads: int, out_dir: Path,
              progress: Progress | None = None, metric: str = "cosine",
              selection: Iterable[dict[str, np.ndarray]] | None = None,
              status: Callable[[str], None] | None = None,
              batches_again: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None
              ) -> dict[str, Any]:
    """`batches` streams the calibration data once (`histogram: exact` reads it again
    through `batches_again`); `selection` (a re-read of its start) scores methods, layer
    sensitivity and the float fallback."""
    model = onnx.load(str(model_path))
    qat = existing_qdq_amax(model)
    if qat:
        return _from_qat(model, qat, out_dir)
    if not calibration_tensors(model):
        raise CalibrationError(f"{model_path}: the graph has no float activation feeding a "
                               "Conv/Gemm/MatMul, so there is nothing to calibrate")
    tensors = float_activations(model)  # the complete cache: every float activation
    rss_before = _peak_rss_mb()
    result = collect_histograms(model, tensors, batches, threads, cfg.num_bins,
                                cfg.max_samples, progress, cfg.histogram, batches_again)
    if result.samples < cfg.min_samples:
        import warnings

        warnings.warn(f"calibration used only {result.samples} samples (< min_samples="
                      f"{cfg.min_samples}); scales may not represent the data", stacklevel=2)
    artifact = Calibration(out_dir)
    result.collector.save_npz(artifact.histograms_file)
    wanted = needed_methods(cfg.method, cfg.input_method, cfg.fp8_method)
    all_amax = amax_table(result.collector, tensors, wanted,
                          {m: method_options(m, cfg) for m in wanted}, threads)
    accuracy = AccuracyReport()
    method: str = cfg.method
    methods: dict[str, str] | None = None
    if method == "classwise":  # the fixed table; graph inputs keep `input_method`
        methods = class_methods(model, tensors, fixed={
            t: m for t, m in tensor_methods(model, tensors, cfg, method).items()
            if m != method})
    if method == "auto" or cfg.sensitivity or cfg.fallback.min_agreement is not None:
        feeds = _selection(selection or [], cfg.selection_samples)
        if not feeds:
            raise CalibrationError("method auto, sensitivity and fallback need selection "
                                   "data (the calibration set); none was given")
        ev = accuracy_mod.Evaluator(model, feeds, metric, threads)
        if method == "auto":
            method, methods = _choose_by_class(model, tensors, cfg, all_amax, ev, accuracy,
                                               status)
        methods = methods or tensor_methods(model, tensors, cfg, method)
        chosen_amax = {t: all_amax[methods[t]][t] for t in tensors}
        if cfg.sensitivity:  # the full per-layer report, asked for
            accuracy.sensitivity = accuracy_mod.sensitivity(ev, chosen_amax, status)
        if cfg.fallback.min_agreement is not None and accuracy.sensitivity:
            accuracy.fallback = accuracy_mod.fallback(ev, chosen_amax, accuracy.sensitivity,
                                                      cfg.fallback.min_agreement,
                                                      cfg.fallback.max_layers)
        elif cfg.fallback.min_agreement is not None:  # rank layers only as far as needed
            accuracy.fallback, accuracy.sensitivity = lazy_fallback(
                ev, chosen_amax, cfg.fallback.min_agreement, cfg.fallback.max_layers,
                progress=status)
    methods = methods or tensor_methods(model, tensors, cfg, method)
    chosen = {t: all_amax[methods[t]][t] for t in tensors}
    skip = accuracy.fallback["skip"] if accuracy.fallback else []
    fp8 = fp8_table(result.collector, {t: all_amax[cfg.fp8_method][t] for t in tensors},
                    cfg.fp8_method)
    header = "entropy" if method == "classwise" else method  # an algorithm TensorRT knows
    qdq_report = _write_outputs(model, chosen, methods, all_amax, skip, artifact, header, fp8)
    artifact.write_accuracy(accuracy.as_dict())
    return {
        "method": method, "requested_method": cfg.method, "input_method": cfg.input_method,
        "tensors": len(tensors), "histogram": cfg.histogram,
        "cache_coverage": qdq_report["cache_coverage"], "fp8_method": cfg.fp8_method,
        "fp8_overflowing_tensors": sorted(t for t, row in fp8.items() if row["overflow"] > 0),
        "float_layers": skip,
        "float_fraction": qdq_report["float_fraction"],
        "method_scores": accuracy.method_scores,
        "fallback_met": accuracy.fallback["met"] if accuracy.fallback else None,
        "samples": result.samples,
        "batches": result.batches, "collect_seconds": result.seconds,
        "peak_rss_mb": _peak_rss_mb(), "rss_growth_mb": _peak_rss_mb() - rss_before,
        "qat": False,
    }


def tensor_methods(model: onnx.ModelProto, tensors: list[str], cfg: CalibrationConfig,
                   method: str) -> dict[str, str]:
    """The method each tensor uses: `input_method` for graph inputs, `method` otherwise."""
    inputs = {i.name for i in model.graph.input}
    on_inputs = method if cfg.input_method == "same" else cfg.input_method
    return {t: on_inputs if t in inputs else method for t in tensors}


def _from_qat(model: onnx.ModelProto, amax: dict[str, float], out_dir: Path) -> dict[str, Any]:
    artifact = Calibration(out_dir)
    artifact.write_cache({t: a / 127.0 for t, a in amax.items()}, cache_algorithm("qat"))
    _write_scales(artifact, amax, dict.fromkeys(amax, "qat"), {"qat": amax})
    artifact.write_qdq_model(model)
    artifact.write_accuracy(AccuracyReport().as_dict())
    return {"method": "qat", "tensors": len(amax), "samples": 0, "qat": True,
            "float_layers": []}


def fp8_table(collector: HistogramCollector, amax: dict[str, float], method: str
              ) -> dict[str, dict[str, Any]]:
    """Per tensor: FP8 amax and scale (amax/448) and the fraction of calibration values
    that overflow E4M3 after scaling (|x| / scale past ``FP8_OVERFLOW``: they saturate)."""
    table = {}
    for name, a in amax.items():
        scale = float(np.float32(max(a, 2.0**-24) / FP8_MAX))
        hist = collector[name].finalized()
        limit = FP8_OVERFLOW * scale
        if hist.amax <= limit or hist.num_values == 0:
            overflow = 0.0
        else:  # bins wholly above the limit: a lower bound of the values that saturate
            first = int(np.ceil(limit / hist.bin_width))
            overflow = float(hist.counts[first:].sum()) / hist.num_values
        table[name] = {"amax": a, "scale": scale, "method": method, "overflow": overflow,
                       "max": collector[name].amax}
    return table


def _write_outputs(model: onnx.ModelProto, amax: dict[str, float], methods: dict[str, str],
                   all_amax: dict[str, dict[str, float]], skip: list[str], artifact: Calibration,
                   method: str = "entropy", fp8: dict[str, dict[str, Any]] | None = None
                   ) -> dict[str, Any]:
    in_cache = artifact.write_cache({t: scale_from_amax(a, t) for t, a in amax.items()},
                                    cache_algorithm(method))
    qdq_model, report = insert_qdq(model, amax, "tensorrt", skip=frozenset(skip))
    artifact.write_qdq_model(qdq_model)
    in_qdq = {row["amax_from"] for row in report["activations"].values()}
    if fp8 is not None:
        fp8_model, _ = insert_qdq(model, {t: row["amax"] for t, row in fp8.items()},
                                  "tensorrt", skip=frozenset(skip), precision="fp8")
        artifact.write_qdq_model(fp8_model, "fp8")
    _write_scales(artifact, amax, methods, all_amax, in_qdq, fp8)
    # counted apart, so a cache that misses an activation of the graph shows the gap
    report["cache_coverage"] = {"float_activations": len(float_activations(model)),
                                "in_cache": in_cache, "in_qdq_model": len(in_qdq)}
    return report


def _write_scales(artifact: Calibration, amax: dict[str, float], methods: dict[str, str],
                  all_amax: dict[str, dict[str, float]], in_qdq: set[str] | None = None,
                  fp8: dict[str, dict[str, Any]] | None = None) -> None:
    artifact.write_scales({t: {"amax": a, "scale": a / 127.0, "method": methods[t],
                               "amax_by_method": {m: all_amax[m][t] for m in all_amax},
                               "in_qdq_model": in_qdq is None or t in in_qdq,
                               **({"fp8": fp8[t]} if fp8 else {})}
                           for t, a in amax.items()})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def facts(ctx: Context, target: str | None) -> dict[str, Any]:
    """The agreement metric its accuracy search uses and the calibration data's digest."""
    from trtflow.context import data_digest

    cal = ctx.params.data.calibration
    return {"metric": ctx.metric(),
            "calibration_data": data_digest(ctx.root, cal) if cal else None}


def run(ctx: Context, target: str | None, out: Path, cleaned: StageResult) -> dict[str, Any]:
    """The plan's calibrate step: the cleaned graph over the params' calibration data."""
    from trtflow.datasets import open_data
    from trtflow.ort_session import default_threads
    from trtflow.progress_estimate import time_left
    from trtflow.stages.cleanup import CLEAN_FILE

    cal = ctx.params.data.calibration
    if cal is None:
        raise ParamsError("an int8 target needs data.calibration (an .npz of representative "
                          "inputs) in params")
    stream = open_data(cal, ctx.input_specs(), ctx.root, ctx.params.data.batch_size)
    total = min(len(stream), ctx.params.calibration.max_samples or len(stream))
    done, start = 0, time.monotonic()

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if ctx.progress:
            left = time_left(time.monotonic() - start, done, total)
            ctx.progress(f"calibrate: {done}/{total} samples" + (f", {left}" if left else ""))

    return calibrate(
        cleaned.file(CLEAN_FILE), (b.inputs for b in stream), ctx.params.calibration,
        default_threads(), out, progress, metric=ctx.metric(),
        selection=(b.inputs for b in stream), status=ctx.progress,
        batches_again=lambda: (b.inputs for b in stream))
