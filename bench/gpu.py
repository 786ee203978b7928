"""GPU benchmark: PyTorch eager / autocast / torch.compile vs every trtflow GPU engine.

Per model and batch size, in one process and side by side: PyTorch eager FP32,
eager autocast FP16, torch.compile (default, max-autotune, reduce-overhead; each
reported, the fastest taken as "best"), and trtflow's ONNX Runtime CUDA engines
(FP32, mixed FP16, with and without CUDA graphs, INT8 Q/DQ), all built through
trtflow's own stages (export -> cleanup -> [calibrate] -> build). Inputs live on
the GPU for every contender; each call is timed with a host timer between
`torch.cuda.synchronize()` calls (ORT synchronizes its own stream before `run`
returns). Accuracy is against eager FP32 on the same input: max abs error and
mean cosine similarity. Results are written as JSON (with the device name) after
every contender, so a run cut short keeps what it measured.

Models are built in code with seeded random weights (no download):
ResNet-50 (torchvision's layout, BatchNorm statistics re-estimated on random
images so activations stay in a trained network's range) and a BERT-base-shaped
encoder from a transformers config (12 layers, hidden 768, sequence 128).

    python bench/gpu.py --out DIR                       # on the GPU machine
    python bench/gpu.py --device cpu --quick --out DIR  # smoke test, any machine
    python bench/gpu.py --flow params/resnet18_gpu.yaml --out DIR  # GPU targets via stages
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


# --- models --------------------------------------------------------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet50(nn.Module):
    """torchvision.models.resnet50's layout (v1.5: stride in the 3x3), random weights."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet50(device: str, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    model = ResNet50().to(device)
    # Re-estimate BatchNorm statistics on random images: with the default (0, 1)
    # statistics a random ResNet-50's activations grow block after block, far past
    # what a trained network (and float16) sees.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(1 if quick else 4):
            model(torch.randn(8, 3, 224, 224, device=device))
    return model.eval()


class BertEncoder(nn.Module):
    """BERT-base-shaped encoder from a config (no download); returns the last hidden state."""

    def __init__(self, quick: bool) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        size = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=512) if quick else {}
        config = BertConfig(**size)
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def bert(device: str, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    return BertEncoder(quick).to(device).eval()


def make_inputs(model_name: str, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model_name == "resnet50":
        return {"image": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
    ids = rng.integers(1000, 30000, size=(batch, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64)}


# --- timing --------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str, warmup: int, iters: int,
              max_seconds: float) -> dict[str, Any]:
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    deadline = time.perf_counter() + max_seconds
    while len(times) < iters and (len(times) < 10 or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "iterations": len(ms)}


def accuracy(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a = out.astype(np.float64).reshape(len(out), -1)
    b = ref.astype(np.float64).reshape(len(ref), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                      1e-30)
    return {"max_abs_error": float(np.abs(a - b).max()), "cosine": float(cos.mean()),
            "ref_max_abs": float(np.abs(b).max()),
            "finite": bool(np.isfinite(a).all())}


# --- trtflow engines -------------------------------------------------------------------


def trtflow_engines(name: str, module: nn.Module, work: Path, quick: bool,
                    want_int8: bool, log: Callable[[str], None], device: str) -> dict[str, Any]:
    """Export, clean, calibrate and build every ORT GPU engine with trtflow's own stages."""
    import onnx

    from trtflow.backends import Calibration, build_engine
    from trtflow.graph.cleanup import PASSES, cleanup
    from trtflow.params import CalibrationConfig, ExportConfig, Target, TensorSpec
    from trtflow.sources import LoadedModel
    from trtflow.stages import calibrate as calibrate_stage
    from trtflow.stages.export import export_model

    if name == "resnet50":
        specs = [TensorSpec(name="image", shape=["batch", 3, 224, 224])]
        outputs = ["logits"]
    else:
        specs = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
                 TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"])]
        outputs = ["last_hidden_state"]
    cpu_module = module.to("cpu")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    (work / "export").mkdir(parents=True, exist_ok=True)
    sample = make_inputs(name, 2, 32 if quick else 128, seed=5)
    export_report = export_model(LoadedModel(cpu_module, None, specs, outputs),
                                 ExportConfig(opset=18, atol=1e-3, rtol=1e-3), sample,
                                 work / "export")
    timings["export_s"] = time.perf_counter() - start
    start = time.perf_counter()
    passes = tuple(PASSES[p] for p in ("onnxscript", "onnxslim", "shape_inference"))
    cleaned, cleanup_report = cleanup(onnx.load(str(work / "export" / "model.onnx")), passes)
    clean = work / "model.clean.onnx"
    onnx.save_model(cleaned, str(clean))
    timings["cleanup_s"] = time.perf_counter() - start
    log(f"{name}: exported and cleaned ({timings})")

    scales = None
    calib_report: dict[str, Any] = {}
    if want_int8:
        start = time.perf_counter()
        samples = 8 if quick else 64
        batches = [make_inputs(name, 8, 32 if quick else 128, seed=100 + i)
                   for i in range(samples // 8)]
        (work / "calib").mkdir(exist_ok=True)
        cfg = CalibrationConfig(method="entropy", sensitivity=False, min_samples=8)
        calib_report = calibrate_stage.calibrate(clean, iter(batches), cfg,
                                                 os.cpu_count() or 1, work / "calib")
        scales = calibrate_stage.read_scales(work / "calib" / calibrate_stage.SCALES_FILE)
        timings["calibrate_s"] = time.perf_counter() - start
        log(f"{name}: calibrated {len(scales)} tensors in {timings['calibrate_s']:.1f}s")

    built: dict[str, Any] = {}
    for precision in ("fp32", "fp16") + (("int8",) if want_int8 else ()):
        out = work / f"engine-{precision}"
        out.mkdir(exist_ok=True)
        start = time.perf_counter()
        target = Target(backend="onnxruntime", device="cuda", precision=precision)  # type: ignore[arg-type]
        if device == "cuda":
            report = build_engine(clean, target, out,
                                  Calibration(work / "calib") if precision == "int8" else None)
        else:  # smoke test: the same engine code on ORT's CPU provider
            from trtflow.backends import ort_cuda

            report = ort_cuda.build(clean, target, out, scales, [], None, execution_device="cpu")
        built[precision] = {"dir": str(out), "build_s": time.perf_counter() - start,
                            "precision_report": report.get("precision"),
                            "engine_ops": report.get("engine_ops")}
        log(f"{name}: built ORT CUDA {precision} in {built[precision]['build_s']:.1f}s")
    return {"timings": timings, "export_parity": export_report.get("parity"),
            "cleanup_ops_after": cleanup_report.get("ops_after"),
            "calibration": {k: calib_report.get(k) for k in ("method", "tensors", "samples")}
            if calib_report else None, "engines": built}


# --- one model -------------------------------------------------------------------------


class Recorder:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.data = path, dict(meta)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


def bench_model(name: str, args: argparse.Namespace, rec: Recorder,
                log: Callable[[str], None]) -> None:
    device = args.device
    seq = 32 if args.quick else 128
    batches = (1, 2) if args.quick else ((1, 32) if name == "resnet50" else (1, 8))
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    module = resnet50(device, args.quick) if name == "resnet50" else bert(device, args.quick)
    entry: dict[str, Any] = {"batch_sizes": list(batches), "contenders": {}}
    if name != "resnet50":
        entry["sequence"] = seq
    rec.data["models"][name] = entry
    parts = set(args.parts.split(","))
    iters, warmup = (5, 2) if args.quick else (args.iters, 20)

    inputs = {bs: make_inputs(name, bs, seq, seed=bs) for bs in batches}
    dev_inputs = {bs: {k: torch.from_numpy(v).to(device) for k, v in inputs[bs].items()}
                  for bs in batches}
    with torch.inference_mode():
        refs = {bs: module(**dev_inputs[bs]).float().cpu().numpy() for bs in batches}

    def record(label: str, bs: int, result: dict[str, Any]) -> None:
        row = entry["contenders"].setdefault(label, {})
        row[f"bs{bs}"] = result
        rec.save()
        if "median_ms" in result:
            log(f"{name} bs{bs} {label}: median {result['median_ms']:.3f} ms, p99 "
                f"{result['p99_ms']:.3f} ms, cos {result.get('cosine', float('nan')):.6f}")
        else:
            log(f"{name} bs{bs} {label}: {result}")

    def torch_contender(label: str, fn: Callable[..., torch.Tensor], autocast: bool) -> None:
        for bs in batches:
            ctx = (torch.autocast(device_type=device, dtype=torch.float16 if device == "cuda"
                                  else torch.bfloat16) if autocast else contextlib.nullcontext())
            try:
                with torch.inference_mode(), ctx:
                    t0 = time.perf_counter()
                    out = fn(**dev_inputs[bs])
                    sync(device)
                    first_s = time.perf_counter() - t0
                    result = time_call(lambda bs=bs: fn(**dev_inputs[bs]), device, warmup, iters,
                                       args.max_seconds)
                    out = fn(**dev_inputs[bs])
                result.update(accuracy(out.float().cpu().numpy(), refs[bs]))
                result["first_call_s"] = first_s
            except Exception as exc:  # one failing contender must not end the run
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                traceback.print_exc()
            record(label, bs, result)

    if "eager" in parts:
        torch_contender("pytorch_eager_fp32", module, autocast=False)
        torch_contender("pytorch_eager_autocast_fp16", module, autocast=True)

    if "ort" in parts:
        work = Path(tempfile.mkdtemp(prefix=f"trtflow-gpu-{name}-"))
        try:
            built = trtflow_engines(name, module, work, args.quick, not args.no_int8, log,
                                    device)
            module.to(device)
            entry["trtflow"] = built
            rec.save()
            ort_contenders(name, built, batches, inputs, refs, args, record, log)
        except Exception as exc:
            entry["trtflow_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}"
            traceback.print_exc()
            rec.save()
        module.to(device)

    if "compile" in parts:
        for mode in args.compile_modes.split(","):
            if time.perf_counter() - START > args.budget_s:
                for bs in batches:
                    record(f"torch_compile_{mode}_fp16", bs, {"not_run": "time budget"})
                continue
            torch._dynamo.reset()
            compiled = torch.compile(module, mode=None if mode == "default" else mode)
            torch_contender(f"torch_compile_{mode}_fp16", compiled, autocast=True)
        torch._dynamo.reset()
    summarize(entry)
    rec.save()
    del module
    if device == "cuda":
        torch.cuda.empty_cache()


def ort_contenders(name: str, built: dict[str, Any], batches: tuple[int, ...],
                   inputs: dict[int, dict[str, np.ndarray]], refs: dict[int, np.ndarray],
                   args: argparse.Namespace, record: Callable[[str, int, dict[str, Any]], None],
                   log: Callable[[str], None]) -> None:
    from trtflow.backends.ort_cuda import OrtGpuEngine

    iters, warmup = (5, 2) if args.quick else (args.iters, 20)
    variants = []
    for precision in built["engines"]:
        variants.append((f"trtflow_ort_cuda_{precision}_cudagraph", precision, True, None))
        variants.append((f"trtflow_ort_cuda_{precision}", precision, False, None))
    if name == "resnet50":  # the engines default to NHWC; NCHW and cuDNN bias fusion for contrast
        for precision in ("fp32", "fp16"):
            variants.append((f"trtflow_ort_cuda_{precision}_cudagraph_nchw", precision, True,
                             {"prefer_nhwc": "0", "fuse_conv_bias": "0"}))
        variants.append(("trtflow_ort_cuda_fp16_cudagraph_no_fuse_conv_bias", "fp16", True,
                         {"fuse_conv_bias": "0"}))
    for label, precision, graph, options in variants:
        try:
            engine = OrtGpuEngine.load(Path(built["engines"][precision]["dir"]), cuda_graph=graph,
                                       cuda_options=options)
        except Exception as exc:
            for bs in batches:
                record(label, bs, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        for bs in batches:
            try:
                t0 = time.perf_counter()
                profile = engine.bind(inputs[bs])
                setup_s = time.perf_counter() - t0
                result = time_call(profile.run, args.device, warmup, iters, args.max_seconds)
                profile.run()
                out = profile.fetch()[engine.output_names[0]]
                result.update(accuracy(out, refs[bs]))
                result.update(profile_setup_s=setup_s, cuda_graph=profile.cuda_graph,
                              note=profile.note)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                traceback.print_exc()
            record(label, bs, result)
        del engine


def summarize(entry: dict[str, Any]) -> None:
    """Speed-up of every contender vs eager FP32, and the best torch.compile per batch."""
    rows = entry["contenders"]
    base = rows.get("pytorch_eager_fp32", {})
    summary: dict[str, Any] = {}
    for bs in entry["batch_sizes"]:
        key = f"bs{bs}"
        eager = base.get(key, {}).get("median_ms")
        timed = {label: r[key]["median_ms"] for label, r in rows.items()
                 if "median_ms" in r.get(key, {})}
        if eager:
            for r in rows.values():
                if "median_ms" in r.get(key, {}):
                    r[key]["speedup_vs_eager_fp32"] = eager / r[key]["median_ms"]
        compiled = {k: v for k, v in timed.items() if k.startswith("torch_compile_")}
        ours = {k: v for k, v in timed.items() if k.startswith("trtflow_")}
        best_compile = min(compiled.items(), key=lambda kv: kv[1]) if compiled else None
        best_ours = min(ours.items(), key=lambda kv: kv[1]) if ours else None
        summary[key] = {
            "eager_fp32_ms": eager,
            "best_torch_compile": {"label": best_compile[0], "median_ms": best_compile[1]}
            if best_compile else None,
            "best_trtflow": {"label": best_ours[0], "median_ms": best_ours[1],
                             "speedup_vs_eager_fp32": eager / best_ours[1] if eager else None}
            if best_ours else None,
            "trtflow_faster_than_best_compile": (best_ours[1] < best_compile[1])
            if best_ours and best_compile else None,
        }
    entry["summary"] = summary


# --- GPU targets through the stages ----------------------------------------------------


def run_flow(params_path: Path, targets: list[str] | None, out: Path,
             log: Callable[[str], None]) -> None:
    """Each cuda target of a params file through export/cleanup/[calibrate]/build/validate
    (the same stages `trtflow stage` and the Prefect flow call), reports to JSON."""
    from trtflow.dvc_stage import resolve_stages
    from trtflow.params import load_params

    params = load_params(params_path)
    ensure_demo_data(params)
    names = targets or [n for n, t in params.targets.items() if t.device == "cuda"]
    result: dict[str, Any] = {"params": str(params_path), "device": device_name("cuda"),
                              "targets": {}}
    for name in names:
        start = time.perf_counter()
        try:
            stages = resolve_stages("validate", params_path, name, ROOT)
            report = stages[-1].report
            result["targets"][name] = {
                "target": params.targets[name].model_dump(mode="json"),
                "stages": {s.stage: {"seconds": s.seconds, "cached": s.cached} for s in stages},
                "build": stages[-2].report, "validation": report,
                "wall_s": time.perf_counter() - start}
            log(f"flow {name}: gates passed={report['gates']['passed']}, speed-up p50 "
                f"{report['speedup_p50']}, agreement {report['quality']['agreement']:.5f}")
        except Exception as exc:
            result["targets"][name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
            traceback.print_exc()
        (out / "flow.json").write_text(json.dumps(result, indent=2, default=str))


def ensure_demo_data(params: Any) -> None:
    """resnet18's demo npz files (38 + 19 MB) are generated, not carried: same generator and
    seed as `trtflow prepare` (trtflow.sources.builtin.write_demo_data), same bytes."""
    from trtflow.sources.builtin import _save_npz

    if params.model.source.builtin != "resnet18":
        return
    rng = np.random.default_rng(1)
    for split, n in (("calibration", 64), ("evaluation", 32)):
        images = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        path = ROOT / "data" / "resnet18" / f"{split}.npz"
        if not path.exists():
            _save_npz(path, image=images)


# --- main ------------------------------------------------------------------------------


def device_name(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few iterations")
    parser.add_argument("--models", default="resnet50,bert")
    parser.add_argument("--parts", default="eager,ort,compile")
    parser.add_argument("--compile-modes", default=",".join(COMPILE_MODES))
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--batches", help="override the batch sizes, e.g. 32")
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=10.0)
    parser.add_argument("--budget-s", type=float, default=1e9,
                        help="skip torch.compile modes once this many seconds have passed")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--name", default="gpu.json")
    parser.add_argument("--flow", type=Path, help="run a params file's cuda targets instead")
    parser.add_argument("--targets", help="comma-separated target names for --flow")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge result JSONs into --name")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - START:7.1f}s] {msg}", flush=True)

    if args.merge:  # several device calls -> one file; each run kept whole, in order
        runs = [{"source": path.name, **json.loads(path.read_text())} for path in args.merge]
        devices = sorted({str(r.get("device")) for r in runs})
        merged = {"device": devices[0] if len(devices) == 1 else devices, "runs": runs}
        (args.out / args.name).write_text(json.dumps(merged, indent=2))
        return
    if args.flow:
        run_flow(args.flow, args.targets.split(",") if args.targets else None, args.out, log)
        return
    if args.device == "cuda":
        import onnxruntime

        onnxruntime.preload_dlls()
        torch.backends.cudnn.benchmark = True
    import onnxruntime as ort

    rec = Recorder(args.out / args.name, {
        "device": device_name(args.device), "device_kind": args.device,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
        "python": platform.python_version(), "quick": args.quick,
        "timing": "host perf_counter around each call, torch.cuda.synchronize() before and "
                  "after; inputs already on the device; median and p99 over the iterations",
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                 "matmul": torch.backends.cuda.matmul.allow_tf32},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": {}})
    rec.save()
    for name in args.models.split(","):
        log(f"== {name}")
        bench_model(name, args, rec, log)
    rec.data["wall_s"] = time.perf_counter() - START
    rec.save()
    for name, entry in rec.data["models"].items():
        for key, summary in entry.get("summary", {}).items():
            log(f"SUMMARY {name} {key}: {json.dumps(summary)}")


if __name__ == "__main__":
    main()
