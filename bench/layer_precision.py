"""Per-layer precision and the calibration default, on the seeded models (issue 26 item 4).

Models (built in code, seeded weights, exported and cleaned by trtflow's own export and
cleanup): resnet18-, mobilenet_v3_large-, efficientnet_b0-shaped (``bench/seeded_models.py``),
RegNetY-800MF-shaped and DistilBERT-shaped (``bench/seeded_more.py``). Inputs: smooth random
images / random token ids; calibration on ``--samples`` (seed 0), every accuracy figure on
32 held-out samples (seed 1), as cosine of the outputs with the FP32 graph's.

Part ``calibration``: the calibrate stage with ``method`` entropy (the default), max and
auto, timed; from auto's scales (which hold every method's amax) also percentile and two
fixed per-class tables (``linear`` outputs entropy, every other class max / percentile: what
auto picked on the models measured, at entropy's cost, no evaluation pass). Each judged by
its TensorRT-placed Q/DQ graph in ONNX Runtime (the graph's own arithmetic).

Part ``selection``: ``precision: best`` restricted to its INT8 candidates (every class-level
variant: float depthwise / MatMul blocks, OpenVINO schemes) on the auto calibration, gate
0.99 cosine on the selection split; then, side by side in one latency race of fixed rounds
(bs 1 and 8, interleaved, paired ratios with their 99 % interval): the class-level INT8 pick,
the per-layer pick (what ``select_engine`` keeps after per-layer precision), the same
OpenVINO graph with its float parts in bf16 (where the CPU has it) and OpenVINO +
NNCF INT8 (``nncf.quantize`` defaults on the same calibration samples; transformer type for
DistilBERT), each with its held-out cosine. CPU flags and the load average go in the JSON.

    python bench/layer_precision.py                       # every model, both parts
    python bench/layer_precision.py --models resnet18 --parts selection --budget 30
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "build" / "bench" / "layer_precision"
MODELS = ("resnet18", "mobilenet_v3_large", "efficientnet_b0", "regnety_800mf", "distilbert")
HELD_OUT = 32
SEQ = 32
VOCAB = 8000


def images(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    import calibration_speed as cs

    return cs._images(n, seed)


def tokens(n: int, seed: int, batch: int = 32) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        ids = rng.integers(1000, VOCAB, size=(b, SEQ), dtype=np.int64)
        ids[:, 0], ids[:, -1] = 101, 102
        out.append({"input_ids": ids, "attention_mask": np.ones((b, SEQ), dtype=np.int64)})
    return out


def samples(model: str, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    return tokens(n, seed) if model == "distilbert" else images(n, seed)


def prepare(model: str) -> Path:
    """The cleaned ONNX graph (exported and cleaned once, kept under build/)."""
    import calibration_speed as cs

    if model in cs.MODELS:
        return cs.prepare(model)
    clean = WORK / model / "clean.onnx"
    if clean.is_file():
        return clean
    import onnx
    import seeded_more

    from trtflow.graph.cleanup import cleanup
    from trtflow.params import ExportConfig, TensorSpec
    from trtflow.sources import LoadedModel
    from trtflow.stages.export import export_model

    clean.parent.mkdir(parents=True, exist_ok=True)
    if model == "distilbert":
        module = seeded_more.distilbert_shaped()
        specs = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"],
                            range=(0, VOCAB - 1)),
                 TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"],
                            range=(1, 1))]
        outputs = ["sentence_embedding"]
    else:
        module = seeded_more.regnety_800mf_shaped()
        specs = [TensorSpec(name="image", shape=["batch", 3, 224, 224], range=(-2.0, 2.0))]
        outputs = ["logits"]
    sample = {k: v[:2] for k, v in samples(model, 2, 0)[0].items()}
    export_model(LoadedModel(module, None, specs, outputs), ExportConfig(atol=1e-3, rtol=1e-2),
                 sample, clean.parent)
    cleaned, _ = cleanup(onnx.load(str(clean.parent / "model.onnx")))
    onnx.save_model(cleaned, str(clean))
    return clean


def threads() -> int:
    return os.cpu_count() or 1


def cosine(reference: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    from trtflow.quant import accuracy

    return accuracy.agreement(reference, got, "cosine")


def host() -> dict[str, Any]:
    flags = subprocess.run("grep -o 'avx512[a-z0-9_]*\\|amx[a-z0-9_]*\\|avx2' /proc/cpuinfo"
                           " | sort -u", shell=True, capture_output=True, text=True).stdout.split()
    from trtflow.latency import host_fingerprint

    return {**host_fingerprint(), "cores": os.cpu_count(), "simd_flags": flags}


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


# --- part 1: the calibration default -------------------------------------------------

CLASS_TABLES = {"classwise-max": "max", "classwise-percentile": "percentile"}


def calibration_part(model: str, n: int) -> dict[str, Any]:
    import onnx

    from trtflow.params import CalibrationConfig
    from trtflow.quant.accuracy import run_outputs
    from trtflow.quant.artifact import Calibration
    from trtflow.quant.method_search import tensor_class
    from trtflow.quant.qdq import insert_qdq
    from trtflow.stages.calibrate import calibrate

    clean = prepare(model)
    feeds = samples(model, n, 0)
    held = samples(model, HELD_OUT, 1)
    graph = onnx.load(str(clean))
    reference = run_outputs(graph, held, threads())
    rows: dict[str, Any] = {}

    def judge(qdq: Any) -> dict[str, float]:
        from trtflow.quant import accuracy

        got = run_outputs(qdq, held, threads())
        return {"cosine": cosine(reference, got),
                "relative_error": accuracy.relative_error(reference, got)}

    for method in ("entropy", "max", "auto"):
        out = WORK / model / f"calib-{method}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        start = time.perf_counter()
        report = calibrate(clean, iter(feeds), CalibrationConfig(method=method), threads(), out,
                           metric="cosine", selection=iter(feeds))
        seconds = time.perf_counter() - start
        rows[method] = {"seconds": seconds, "chosen": report["method"],
                        **judge(onnx.load(str(Calibration(out).qdq_model())))}
        print(model, method, json.dumps(rows[method]), flush=True)
    scales = Calibration(WORK / model / "calib-auto").scales()
    of = tensor_class(graph)
    inputs = {i.name for i in graph.graph.input}
    by_method = {m: {t: row["amax_by_method"][m] for t, row in scales.items()}
                 for m in ("entropy", "max", "percentile")}
    qdq, _ = insert_qdq(graph, by_method["percentile"], "tensorrt")
    rows["percentile"] = {"seconds": None, "note": "amax from the auto calibration",
                          **judge(qdq)}
    for name, other in CLASS_TABLES.items():
        amax = {t: by_method["entropy" if of(t) == "linear" and t not in inputs else other][t]
                for t in scales}
        qdq, _ = insert_qdq(graph, amax, "tensorrt")
        rows[name] = {"seconds": rows["entropy"]["seconds"],
                      "note": f"linear outputs entropy, the rest {other}: no evaluation pass, "
                      "so entropy's stage time (the amax of max/percentile is ~free)",
                      **judge(qdq)}
        print(model, name, json.dumps(rows[name]), flush=True)
    auto_search = Calibration(WORK / model / "calib-auto").accuracy().get("method_search") or {}
    rows["auto"]["by_class"] = auto_search.get("by_class")
    return {"samples": n, "held_out": HELD_OUT, "rows": rows, "uptime": uptime()}


# --- part 2: per-layer precision vs class-level INT8 vs OpenVINO + NNCF INT8 ------------

def nncf_engine(clean: Path, feeds: list[dict[str, np.ndarray]], model: str) -> Any:
    import nncf
    import openvino as ov

    ov_model = ov.Core().read_model(str(clean))
    kind = nncf.ModelType.TRANSFORMER if model == "distilbert" else None
    quantized = nncf.quantize(ov_model, nncf.Dataset(feeds), subset_size=len(feeds),
                              model_type=kind)
    compiled = ov.Core().compile_model(quantized, "CPU", {
        "INFERENCE_NUM_THREADS": threads(), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    return _ov_engine(compiled)


def _ov_engine(compiled: Any) -> Any:
    """A compiled OpenVINO model behind the `run(inputs) -> {output: array}` the race uses."""
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    class Engine:
        def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = {p.get_any_name(): v for p, v in request.infer(inputs).items()}
            return {n: np.array(result[n]) for n in names}

    return Engine()


def has_bf16() -> bool:
    from trtflow.stages.select import has_bf16 as found

    return found()


def openvino_bf16(ir: Path) -> Any:
    """The per-layer pick's OpenVINO graph (its Q/DQ IR) compiled with the float parts in
    bf16 (INFERENCE_PRECISION_HINT bf16): what a `bf16` float precision would give."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(ir), "CPU", {
        "INFERENCE_NUM_THREADS": threads(), "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    return _ov_engine(compiled)


def selection_part(model: str, n: int, budget_s: float, rounds: int, method: str = "auto"
                   ) -> dict[str, Any]:
    from trtflow.backends import Calibration, build_engine, load_engine
    from trtflow.backends.onnxruntime_backend import OrtEngine
    from trtflow.datasets import tile_batch
    from trtflow.latency_race import RacePolicy, run_race
    from trtflow.params import SelectPolicy, Target
    from trtflow.stages.select import select_engine

    clean = prepare(model)
    feeds = samples(model, n, 0)
    held = samples(model, HELD_OUT, 1)
    calib_dir = WORK / model / f"calib-{method}"
    if not calib_dir.is_file() and not (calib_dir / "scales.json").is_file():
        raise SystemExit(f"{model}: run the calibration part first ({calib_dir})")
    calibration = Calibration(calib_dir)
    selection = {k: v[:16] for k, v in feeds[0].items()}
    out = WORK / model / "best"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    target = Target(precision="best", select=SelectPolicy(precisions=["int8"],
                                                          budget_s=budget_s))
    start = time.perf_counter()
    report = select_engine(clean, target, out, calibration, selection, "cosine", 0.99,
                           threads(), progress=lambda m: print(f"  {model}: {m}", flush=True))
    select_s = time.perf_counter() - start
    chosen = report["selection"]
    searches = chosen.get("layer_precision") or []
    class_name = chosen.get("class_level") or chosen["winner"]
    rows = {c["name"]: c for c in chosen["candidates"]}
    engines: dict[str, Any] = {"per-layer": load_engine(out, threads(), spinning=False)}
    if class_name != chosen["winner"]:  # rebuild the class-level pick beside it
        row = rows[class_name]
        cls_dir = WORK / model / "class-level"
        shutil.rmtree(cls_dir, ignore_errors=True)
        cls_dir.mkdir(parents=True)
        calib = calibration
        if row["float_ops"]:
            from trtflow.stages.select import _with_float_ops

            calib = _with_float_ops(calibration, clean, tuple(row["float_ops"]), cls_dir)
        build_engine(clean, Target.model_validate(row["target"]), cls_dir, calib)
        engines["class-level"] = load_engine(cls_dir, threads(), spinning=False)
    if (out / "model.xml").is_file() and has_bf16():  # OpenVINO: the float parts in bf16
        engines["per-layer-bf16"] = openvino_bf16(out / "model.xml")
    engines["nncf-int8"] = nncf_engine(clean, [{k: v[i:i + 1] for k, v in f.items()}
                                               for f in feeds
                                               for i in range(len(next(iter(f.values()))))],
                                       model)
    reference_engine = OrtEngine.from_model(clean, threads(), spinning=False)
    ref = [list(reference_engine.run(f).values()) for f in held]
    accuracy = {name: cosine(ref, [list(e.run(f).values()) for f in held])
                for name, e in engines.items()}
    inputs = {bs: tile_batch({k: v[:8] for k, v in held[0].items()}, bs) for bs in (1, 8)}
    load_before = uptime()
    verdict = run_race({name: {bs: functools.partial(e.run, x) for bs, x in inputs.items()}
                        for name, e in engines.items()},
                       RacePolicy(budget_s=1e9, min_rounds=rounds, max_rounds=rounds),
                       order=list(engines))
    nncf_p50 = verdict.p50_ms["nncf-int8"]
    return {
        "samples": n, "calibration": method, "budget_s": budget_s,
        "select_seconds": select_s, "winner": chosen["winner"],
        "class_level": class_name, "why": chosen["why"],
        "held_out_cosine": accuracy,
        "p50_ms": verdict.p50_ms, "noise_pct": verdict.noise_pct,
        "speed_vs_nncf": {name: {str(bs): nncf_p50[bs] / p50[bs] for bs in p50}
                          for name, p50 in verdict.p50_ms.items()},
        "race": verdict.as_dict(), "load_before_race": load_before, "load_after": uptime(),
        "layer_precision": [{k: layer.get(k) for k in (
            "start", "result", "mode", "groups", "ranked", "steps", "kept_groups",
            "float_layers", "stopped", "seconds", "ranking_seconds", "start_agreement",
            "agreement", "met")} for layer in searches],
        "candidates": {n: {"agreement": c["agreement"], "passed": c["passed"],
                           "error": c["error"], "score_ms": c.get("score_ms")}
                       for n, c in rows.items()},
        "selection_race": chosen["race"]["reason"]}


def main() -> None:
    from trtflow.errors import BuildError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--parts", nargs="*", default=["calibration", "selection"],
                        choices=["calibration", "selection"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--budget", type=float, default=60.0, help="select.budget_s")
    parser.add_argument("--rounds", type=int, default=15, help="rounds of the final race")
    parser.add_argument("--calibration", default="auto", choices=["entropy", "max", "auto"],
                        help="the calibration the selection part uses (the calibration "
                        "part writes all three)")
    parser.add_argument("--out", type=Path, default=RESULTS / "layer_precision.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.out.is_file():  # a run of some models keeps the others' figures
        with contextlib.suppress(ValueError):
            results = json.loads(args.out.read_text())
    results.update(when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), host=host())
    for model in args.models:
        row = results.setdefault("models", {}).setdefault(model, {})
        row["uptime_before"] = uptime()
        for part in args.parts:
            start = time.perf_counter()
            key = part if part == "calibration" or args.calibration == "auto" else \
                f"{part}-{args.calibration}"
            try:
                row[key] = (calibration_part(model, args.samples) if part == "calibration"
                            else selection_part(model, args.samples, args.budget, args.rounds,
                                                args.calibration))
            except BuildError as exc:  # e.g. no candidate reached the gate: a result too
                row[key] = {"error": str(exc), "uptime": uptime()}
            row[key]["part_seconds"] = time.perf_counter() - start
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2, default=str))
            print(model, key, json.dumps({k: v for k, v in row[key].items() if k in (
                "rows", "winner", "class_level", "held_out_cosine", "speed_vs_nncf",
                "select_seconds")}, indent=1, default=str), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
