"""GPU benchmark: PyTorch eager / autocast / torch.compile vs every trtflow GPU engine.

Per model and batch size (1, 8, 32), in one process and side by side: PyTorch eager
FP32 and autocast FP16; torch.compile default, reduce-overhead and max-autotune
(each its own `--parts` entry, max-autotune capped to `--autotune-batches`);
trtflow's ONNX Runtime CUDA engines, built by the stage plan (a params file per
model, one target per variant: export -> cleanup -> build, the same steps and keys
as `trtflow run`), fp16/fp32 with and without ONNX Runtime's transformer fusion
(MultiHeadAttention etc.), each with and without CUDA graphs; trtflow's
AOTInductor engines (backend torch-inductor: one .pt2 per precision, dynamic
batch) with and without CUDA-graph replay, and with static-scale FP8 Linear layers
for the transformers. Accuracy: cosine vs eager FP32 on the same input. Latency:
CUDA events around blocks of calls, each call synchronized (see `time_call`);
median of the block means, their min..max the noise interval. The summary per
(model, batch) names the engine `precision: best` would keep (fastest trtflow
engine with cosine >= --min-cosine) against the best torch.compile mode, with a
tie verdict when the intervals overlap. JSON is written after every contender, so
a run cut short keeps what it measured; the short table is printed last.

Models are built in code with seeded weights (no download): ResNet-50
(torchvision's layout, BatchNorm statistics re-estimated on random images),
BERT-base and all-MiniLM-L6-v2's encoder from their configs (non-zero biases and
LayerNorm parameters, as trained models have), sequence 128.

    bench/gpu_device.sh (the device side: onnxruntime-gpu in six calls, then a run)
    python bench/gpu.py --device cpu --quick --out DIR  # smoke test, any machine
    python bench/gpu.py --flow params/resnet18_gpu.yaml --out DIR  # a params file's cuda targets
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
DEFAULT_PARTS = ("eager,ort,compile:reduce-overhead,inductor,compile:default,"
                 "compile:max-autotune")


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


def trained_like(module: nn.Module) -> nn.Module:
    """Non-zero biases and LayerNorm affine parameters (a fresh BertModel has zeros and ones,
    which graph cleanups then delete: a trained model keeps those Adds and Muls)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear) and sub.bias is not None:
                sub.bias.normal_(0.0, 0.02)
            elif isinstance(sub, nn.LayerNorm):
                sub.weight.normal_(1.0, 0.05)
                sub.bias.normal_(0.0, 0.02)
    return module


def bert(device: str, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    return trained_like(BertEncoder(quick)).to(device).eval()


# all-MiniLM-L6-v2's config (its 91 MB of weights do not travel to the device: seeded
# random weights time the same kernels).
MINILM_CONFIG = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, vocab_size=30522)


class MiniLMShaped(nn.Module):
    """all-MiniLM-L6-v2's encoder + mean pooling + L2 normalisation (trtflow's minilm demo)."""

    def __init__(self, quick: bool) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        size = dict(MINILM_CONFIG, num_hidden_layers=2) if quick else MINILM_CONFIG
        self.encoder = BertModel(BertConfig(**size), add_pooling_layer=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2.0, dim=1)


def minilm(device: str, quick: bool) -> nn.Module:
    torch.manual_seed(0)
    return trained_like(MiniLMShaped(quick)).to(device).eval()


def seeded_resnet50() -> nn.Module:
    """Factory for the stage plan (`model.source.factory: gpu:seeded_resnet50`)."""
    return resnet50("cpu", QUICK)


def seeded_bert() -> nn.Module:
    return bert("cpu", QUICK)


def seeded_minilm() -> nn.Module:
    return minilm("cpu", QUICK)


QUICK = os.environ.get("TRTFLOW_GPU_BENCH_QUICK") == "1"
MODELS: dict[str, Callable[[str, bool], nn.Module]] = {
    "resnet50": resnet50, "bert": bert, "minilm": minilm}
OUTPUTS = {"resnet50": ["logits"], "bert": ["last_hidden_state"], "minilm": ["sentence_embedding"]}


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


def time_call(fn: Callable[[], object], device: str, warmup: int, blocks: int,
              block_s: float) -> dict[str, Any]:
    """Latency per call: `blocks` blocks of n calls, each call followed by a device sync
    (no overlap of one call's launches with the previous call's kernels), each block
    timed with CUDA events (host clock on the CPU); median of the block means, and
    their min..max as the noise interval. n makes a block last about `block_s`."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    probe = 0
    while probe < 3 or time.perf_counter() - t0 < 0.05:
        fn()
        sync(device)
        probe += 1
    per_call = (time.perf_counter() - t0) / probe
    n = max(5, min(2000, int(block_s / max(per_call, 1e-6))))
    means = []
    for _ in range(blocks):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
                torch.cuda.synchronize()
            end.record()
            end.synchronize()
            means.append(start.elapsed_time(end) / n)
        else:
            s = time.perf_counter()
            for _ in range(n):
                fn()
            means.append((time.perf_counter() - s) * 1e3 / n)
    arr = np.asarray(means)
    return {"median_ms": float(np.median(arr)), "min_ms": float(arr.min()),
            "max_ms": float(arr.max()), "blocks": blocks, "calls_per_block": n}


def accuracy(out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a = out.astype(np.float64).reshape(len(out), -1)
    b = ref.astype(np.float64).reshape(len(ref), -1)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                      1e-30)
    return {"max_abs_error": float(np.abs(a - b).max()), "cosine": float(cos.mean()),
            "ref_max_abs": float(np.abs(b).max()),
            "finite": bool(np.isfinite(a).all())}


# --- trtflow ORT CUDA engines ----------------------------------------------------------------


def specs_for(name: str) -> list[Any]:
    from trtflow.params import TensorSpec

    if name == "resnet50":
        return [TensorSpec(name="image", shape=["batch", 3, 224, 224])]
    return [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
            TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"])]


PLAN_PARAMS = """# written by bench/gpu.py: {name}'s ORT CUDA engines through trtflow's stage plan
model:
  name: gpu-{name}
  source:
    factory: gpu:seeded_{name}
    weights: none
  inputs: {inputs}
  outputs: {outputs}
export:
  opset: 18
targets: {targets}
"""


def trtflow_engines(name: str, work: Path, seq: int, want_int8: bool, fused: bool,
                    log: Callable[[str], None], device: str) -> dict[str, Any]:
    """trtflow's ORT CUDA engines built by the stage plan (export -> cleanup -> build per
    target, the same steps and cache keys as `trtflow run`): a params file per model with
    one target per variant; transformers with ONNX Runtime's transformer fusion (the
    backend's default for graphs with attention) and without."""
    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import run_up_to

    if name == "resnet50":
        inputs = [{"name": "image", "shape": ["batch", 3, 224, 224], "range": [-2.0, 2.0]}]
    else:
        inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"],
                   "range": [1000, 30000]},
                  {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "sequence"],
                   "range": [1, 1]}]
    targets: dict[str, Any] = {}
    for precision in ORT_PRECISIONS:
        options = {"transformer_fusion": "off"}
        if device != "cuda":  # smoke test: the same engine code on ORT's CPU provider
            options["execution_device"] = "cpu"
        if name != "resnet50" and fused:
            targets[f"fused_{precision}"] = {"backend": "onnxruntime", "device": "cuda",
                                             "precision": precision,
                                             "options": {**options, "transformer_fusion": "on"}}
        targets[precision] = {"backend": "onnxruntime", "device": "cuda",
                              "precision": precision, "options": options}
    if want_int8:
        raise SystemExit("--int8 needs calibration data in the plan's params: not wired here")
    params_path = work / "params.yaml"
    params_path.write_text(PLAN_PARAMS.format(name=name, inputs=json.dumps(inputs),
                                              outputs=json.dumps(OUTPUTS[name]),
                                              targets=json.dumps(targets)))
    sys.path.insert(0, str(ROOT / "bench"))  # the factory module
    ctx = Context.create(load_params(params_path), work)
    built: dict[str, Any] = {}
    fusion: dict[str, Any] = {}
    for label in targets:
        start = time.perf_counter()
        try:
            stages = run_up_to(ctx, "build", label)
        except Exception as exc:
            built[label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            traceback.print_exc()
            continue
        report = stages[-1].report
        precision_report = dict(report.get("precision") or {})
        if "transformer_fusion" in precision_report:
            fusion[label] = precision_report.pop("transformer_fusion")
            log(f"{name}: {label}: fused {fusion[label]['fused']}, attention "
                f"{fusion[label]['attention_fused']}")
        built[label] = {"dir": str(stages[-1].path), "build_s": time.perf_counter() - start,
                        "stages": {s.stage: {"key": s.key[:16], "cached": s.cached,
                                             "seconds": s.seconds} for s in stages},
                        "precision_report": precision_report,
                        "engine_ops": report.get("engine_ops")}
        log(f"{name}: built ORT CUDA {label} through the plan in {built[label]['build_s']:.1f}s")
    return {"plan": str(params_path), "fusion": fusion, "engines": built}


def ort_contenders(name: str, built: dict[str, Any], batches: tuple[int, ...],
                   inputs: dict[int, dict[str, np.ndarray]], refs: dict[int, np.ndarray],
                   args: argparse.Namespace, record: Callable[[str, int, dict[str, Any]], None],
                   ) -> None:
    from trtflow.backends.ort_cuda import OrtGpuEngine

    variants = []
    for label, info in built["engines"].items():
        if "dir" not in info:
            continue
        variants.append((f"trtflow_ort_cuda_{label}_cudagraph", label, True))
        if label in ("fp16",) or args.quick:
            variants.append((f"trtflow_ort_cuda_{label}", label, False))
    for contender, label, graph in variants:
        try:
            engine = OrtGpuEngine.load(Path(built["engines"][label]["dir"]), cuda_graph=graph)
        except Exception as exc:
            for bs in batches:
                record(contender, bs, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        for bs in batches:
            try:
                t0 = time.perf_counter()
                profile = engine.bind(inputs[bs])
                setup_s = time.perf_counter() - t0
                result = time_call(profile.run, args.device, args.warmup, args.blocks,
                                   args.block_s)
                profile.run()
                out = profile.fetch()[engine.output_names[0]]
                result.update(accuracy(out, refs[bs]))
                result.update(profile_setup_s=setup_s, cuda_graph=profile.cuda_graph,
                              note=profile.note)
            except Exception as exc:
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                traceback.print_exc()
            record(contender, bs, result)
        del engine


# --- AOTInductor engines ----------------------------------------------------------------------


def inductor_contenders(name: str, module: nn.Module, work: Path, seq: int,
                        batches: tuple[int, ...], dev_inputs: dict[int, dict[str, torch.Tensor]],
                        refs: dict[int, np.ndarray], args: argparse.Namespace,
                        record: Callable[[str, int, dict[str, Any]], None],
                        log: Callable[[str], None], entry: dict[str, Any]) -> None:
    """trtflow's torch-inductor backend: one .pt2 per precision (dynamic batch), run with
    and without CUDA-graph replay; FP8 Linear (static scales) for the transformers."""
    from trtflow.backends import torch_inductor as ti

    names = [s.name for s in specs_for(name)]
    example = tuple(torch.from_numpy(v) for v in make_inputs(name, 2, seq, seed=7).values())
    dynamic = {n: {0: "batch"} for n in names}
    precisions = args.inductor_precisions.split(",")
    variants: list[tuple[str, str, ti.InductorOptions]] = [
        (p, p, ti.InductorOptions()) for p in precisions[:1]]
    if name != "resnet50" and args.device == "cuda" and ti.fp8_supported("cuda") \
            and not args.no_fp8:  # FP8 Linear with static (calibrated) activation scales
        calib = [tuple(torch.from_numpy(v).to(args.device) for v in
                       make_inputs(name, 8, seq, seed=200 + i).values()) for i in range(4)]
        fp8_amax = ti.linear_input_amax(module, calib)
        variants.append(("fp8_fp16", "fp16", ti.InductorOptions(fp8_linear=True)))
    else:
        fp8_amax = None
    variants += [(p, p, ti.InductorOptions()) for p in precisions[1:]]
    if args.inductor_autotune and name in args.inductor_autotune.split(","):
        variants.append(("fp16_autotune", "fp16", ti.InductorOptions(max_autotune=True)))
    entry.setdefault("inductor", {})
    for label, precision, options in variants:
        if time.perf_counter() - MODEL_START > args.model_budget_s - 45:
            for bs in batches:
                record(f"trtflow_inductor_{label}_cudagraph", bs, {"not_run": "time budget"})
            continue
        out = work / f"inductor-{label}"
        out.mkdir(parents=True, exist_ok=True)
        try:
            report = ti.compile_package(module, example, names, dynamic, precision,
                                        args.device, out, options, fp8_amax)
        except Exception as exc:
            entry["inductor"][label] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            traceback.print_exc()
            continue
        entry["inductor"][label] = {k: report.get(k) for k in
                                    ("export_s", "compile_s", "engine_bytes")}
        if "fp8_linear" in report:
            entry["inductor"][label]["fp8_linears"] = len(report["fp8_linear"])
        log(f"{name}: AOTInductor {label} compiled in {report['compile_s']:.1f}s")
        for graph in ((True, False) if args.device == "cuda" else (False,)):
            engine = ti.InductorEngine(out, cuda_graph=graph)
            contender = f"trtflow_inductor_{label}" + ("_cudagraph" if graph else "")
            for bs in batches:
                try:
                    tensors = tuple(t.to(engine.dtypes[n]) for n, t in
                                    zip(names, dev_inputs[bs].values(), strict=True))
                    with torch.inference_mode():
                        result = time_call(lambda t=tensors, e=engine: e(*t), args.device,
                                           args.warmup, args.blocks, args.block_s)
                        outs = engine(*tensors)
                    out_t = outs[0] if isinstance(outs, tuple | list) else outs
                    result.update(accuracy(out_t.float().cpu().numpy(), refs[bs]))
                    result["cuda_graph"] = engine.use_graph
                    if engine.notes:
                        result["note"] = "; ".join(engine.notes)
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300]}"}
                    traceback.print_exc()
                record(contender, bs, result)


# --- one model -------------------------------------------------------------------------


class Recorder:
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path, self.data = path, dict(meta)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)


MODEL_START = 0.0
ORT_PRECISIONS: tuple[str, ...] = ("fp32", "fp16")


def bench_model(name: str, args: argparse.Namespace, rec: Recorder,
                log: Callable[[str], None]) -> None:
    global MODEL_START
    MODEL_START = time.perf_counter()
    device = args.device
    seq = 32 if args.quick else 128
    batches = (1, 2) if args.quick else (1, 8, 32)
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
    module = MODELS[name](device, args.quick)
    entry: dict[str, Any] = {"batch_sizes": list(batches), "contenders": {}}
    if name != "resnet50":
        entry["sequence"] = seq
    rec.data["models"][name] = entry
    parts = args.parts.split(",")

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
            log(f"{name} bs{bs} {label}: median {result['median_ms']:.3f} ms "
                f"[{result['min_ms']:.3f}..{result['max_ms']:.3f}], "
                f"cos {result.get('cosine', float('nan')):.6f}")
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
                    result = time_call(lambda bs=bs: fn(**dev_inputs[bs]), device, args.warmup,
                                       args.blocks, args.block_s)
                    out = fn(**dev_inputs[bs])
                result.update(accuracy(out.float().cpu().numpy(), refs[bs]))
                result["first_call_s"] = first_s
            except Exception as exc:  # one failing contender must not end the run
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                traceback.print_exc()
            record(label, bs, result)

    def compile_mode(mode: str) -> None:
        need = 150 if mode == "max-autotune" else 30  # what a mode's compile takes, about
        if time.perf_counter() - MODEL_START > args.model_budget_s - need:
            for bs in batches:
                record(f"torch_compile_{mode}_fp16", bs, {"not_run": "time budget"})
            return
        torch._dynamo.reset()
        compiled = torch.compile(module, mode=None if mode == "default" else mode)
        mode_batches = batches
        if mode == "max-autotune" and args.autotune_batches:
            mode_batches = tuple(int(b) for b in args.autotune_batches.split(","))
        try:
            for bs in batches:
                if bs not in mode_batches:
                    record(f"torch_compile_{mode}_fp16", bs,
                           {"not_run": "max-autotune capped to --autotune-batches"})
            sub = {bs: dev_inputs[bs] for bs in mode_batches}
            for bs in mode_batches:
                ctx = torch.autocast(device_type=device, dtype=torch.float16
                                     if device == "cuda" else torch.bfloat16)
                try:
                    with torch.inference_mode(), ctx:
                        t0 = time.perf_counter()
                        out = compiled(**sub[bs])
                        sync(device)
                        first_s = time.perf_counter() - t0
                        result = time_call(lambda bs=bs: compiled(**sub[bs]), device,
                                           args.warmup, args.blocks, args.block_s)
                        out = compiled(**sub[bs])
                    result.update(accuracy(out.float().cpu().numpy(), refs[bs]))
                    result["first_call_s"] = first_s
                except Exception as exc:
                    result = {"error": f"{type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300]}"}
                    traceback.print_exc()
                record(f"torch_compile_{mode}_fp16", bs, result)
        finally:
            torch._dynamo.reset()

    work = Path(tempfile.mkdtemp(prefix=f"trtflow-gpu-{name}-"))
    for part in parts:
        if part == "eager":
            torch_contender("pytorch_eager_fp32", module, autocast=False)
            torch_contender("pytorch_eager_autocast_fp16", module, autocast=True)
        elif part == "ort":
            try:
                built = trtflow_engines(name, work, seq, args.int8, not args.no_fused, log,
                                        device)
                module.to(device)
                entry["trtflow"] = built
                rec.save()
                ort_contenders(name, built, batches, inputs, refs, args, record)
            except Exception as exc:
                entry["trtflow_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}"
                traceback.print_exc()
                rec.save()
            module.to(device)
        elif part == "inductor":
            inductor_contenders(name, module, work, seq, batches,
                                {bs: dev_inputs[bs] for bs in batches}, refs, args, record, log,
                                entry)
        elif part.startswith("compile:"):
            compile_mode(part.split(":", 1)[1])
        else:
            raise SystemExit(f"--parts: unknown part '{part}' (eager, ort, inductor, "
                             "compile:MODE)")
        summarize(entry, args.min_cosine)
        rec.save()
    if device == "cuda":
        torch.cuda.empty_cache()


def summarize(entry: dict[str, Any], min_cosine: float) -> None:
    """Speed-up vs eager FP32, the best torch.compile mode, the best trtflow engine and
    the engine `best` would keep (fastest with cosine >= min_cosine), with the noise."""
    rows = entry["contenders"]
    base = rows.get("pytorch_eager_fp32", {})
    summary: dict[str, Any] = {}
    for bs in entry["batch_sizes"]:
        key = f"bs{bs}"
        eager = base.get(key, {}).get("median_ms")
        timed = {label: r[key] for label, r in rows.items() if "median_ms" in r.get(key, {})}
        if eager:
            for r in timed.values():
                r["speedup_vs_eager_fp32"] = eager / r["median_ms"]
        compiled = {k: v for k, v in timed.items() if k.startswith("torch_compile_")}
        ours = {k: v for k, v in timed.items() if k.startswith("trtflow_")
                and v.get("cosine", 0) >= min_cosine and v.get("finite", True)}
        best_compile = min(compiled.items(), key=lambda kv: kv[1]["median_ms"]) \
            if compiled else None
        best_ours = min(ours.items(), key=lambda kv: kv[1]["median_ms"]) if ours else None
        row: dict[str, Any] = {"eager_fp32_ms": eager}
        if best_compile:
            row["best_torch_compile"] = {"label": best_compile[0],
                                         "median_ms": best_compile[1]["median_ms"]}
        if best_ours:
            row["selected_trtflow"] = {
                "label": best_ours[0], "median_ms": best_ours[1]["median_ms"],
                "cosine": best_ours[1].get("cosine"),
                "speedup_vs_eager_fp32": eager / best_ours[1]["median_ms"] if eager else None}
        if best_ours and best_compile:
            o, c = best_ours[1], best_compile[1]
            ratio = c["median_ms"] / o["median_ms"]
            # noise: the block-mean intervals of the two overlap -> a tie
            overlap = o["min_ms"] <= c["max_ms"] and c["min_ms"] <= o["max_ms"]
            row["vs_best_compile"] = ratio
            row["verdict"] = ("tie (inside the noise)" if overlap else
                              ("faster" if ratio > 1 else "slower"))
        summary[key] = row
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
    parser.add_argument("--models", default="resnet50,bert,minilm")
    parser.add_argument("--parts", default=DEFAULT_PARTS,
                        help="in order: eager, ort, inductor, compile:MODE (each mode its own)")
    parser.add_argument("--int8", action="store_true", help="also the ORT int8 Q/DQ engine")
    parser.add_argument("--no-fused", action="store_true",
                        help="no ORT transformer fusion variant")
    parser.add_argument("--no-fp8", action="store_true", help="no AOTInductor FP8 Linear")
    parser.add_argument("--ort-precisions", default="fp32,fp16",
                        help="ORT CUDA engine precisions (each +- transformer fusion)")
    parser.add_argument("--inductor-precisions", default="fp16,bf16")
    parser.add_argument("--inductor-autotune", default="",
                        help="models that also get an AOTInductor max-autotune package")
    parser.add_argument("--autotune-batches", default="1",
                        help="batch sizes torch.compile max-autotune runs (its compile cost)")
    parser.add_argument("--batches", help="override the batch sizes, e.g. 32")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--block-s", type=float, default=0.1, help="seconds per timed block")
    parser.add_argument("--min-cosine", type=float, default=0.995,
                        help="the agreement gate of the engine `best` keeps")
    parser.add_argument("--model-budget-s", type=float, default=1e9,
                        help="per model: skip compile modes / packages once past this")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    parser.add_argument("--name", default="gpu.json")
    parser.add_argument("--flow", type=Path, help="run a params file's cuda targets instead")
    parser.add_argument("--targets", help="comma-separated target names for --flow")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge result JSONs into --name")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    global QUICK
    QUICK = args.quick
    if args.quick:  # the plan imports this file again as the factory module `gpu`
        os.environ["TRTFLOW_GPU_BENCH_QUICK"] = "1"
    global ORT_PRECISIONS
    ORT_PRECISIONS = tuple(args.ort_precisions.split(","))

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - START:7.1f}s] {msg}", flush=True)

    if args.merge:  # several device calls -> one file; each run kept whole, in order
        runs = [{"source": path.name, **json.loads(path.read_text())} for path in args.merge]
        devices = sorted({str(r.get("device")) for r in runs})
        merged = {"device": devices[0] if len(devices) == 1 else devices, "runs": runs}
        (args.out / args.name).write_text(json.dumps(merged, indent=2))
        return
    import onnxruntime as ort

    if args.device == "cuda":
        ort.preload_dlls()
        torch.backends.cudnn.benchmark = True
    if args.flow:
        run_flow(args.flow, args.targets.split(",") if args.targets else None, args.out, log)
        return

    rec = Recorder(args.out / args.name, {
        "device": device_name(args.device), "device_kind": args.device,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
        "python": platform.python_version(), "quick": args.quick,
        "timing": "latency: each call followed by torch.cuda.synchronize(); CUDA events "
                  "around blocks of n calls (a block ~--block-s); median of the block means, "
                  "min..max = noise interval; inputs already on the device",
        "args": vars(args) | {"out": str(args.out)},
        "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                 "matmul": torch.backends.cuda.matmul.allow_tf32},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": {}})
    rec.save()
    for name in args.models.split(","):
        log(f"== {name}")
        bench_model(name, args, rec, log)
    rec.data["wall_s"] = time.perf_counter() - START
    rec.save()
    print_table(rec.data)


def print_table(data: dict[str, Any]) -> None:
    """The short table last in stdout: per model and batch, eager FP32, the best
    torch.compile, the engine `best` keeps, and the ratios the targets name."""
    print(f"\n{data.get('device')}  (ms, median of block means)")
    print(f"{'model':9} {'bs':>3} {'eager32':>8} {'compile':>8} {'trtflow':>8} {'x comp':>6} "
          f"{'x eager':>7}  selected / best compile / verdict")
    for name, entry in data["models"].items():
        for key, row in entry.get("summary", {}).items():
            comp = row.get("best_torch_compile") or {}
            ours = row.get("selected_trtflow") or {}

            def ms(v: Any) -> str:
                return f"{v:8.3f}" if isinstance(v, float) else f"{'-':>8}"

            ratio = row.get("vs_best_compile")
            speed = ours.get("speedup_vs_eager_fp32")
            print(f"{name:9} {key[2:]:>3} {ms(row.get('eager_fp32_ms'))} "
                  f"{ms(comp.get('median_ms'))} {ms(ours.get('median_ms'))} "
                  f"{(f'{ratio:6.2f}' if ratio else '     -')} "
                  f"{(f'{speed:7.2f}' if speed else '      -')}  {ours.get('label', '-')} / "
                  f"{comp.get('label', '-')} / {row.get('verdict', '-')}")


if __name__ == "__main__":
    main()
