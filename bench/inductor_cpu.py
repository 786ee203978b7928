"""AOTInductor on the CPU vs ONNX Runtime and OpenVINO: is `torch-inductor` a useful
`precision: best` candidate on an x86 host?

For trtflow's demo models (resnet18, minilm with its real weights), at batch 1 and 8, in
one process: PyTorch eager FP32; ORT FP32 on the cleaned graph (trtflow's export and
cleanup, ORT_ENABLE_ALL); OpenVINO on the same graph at its default precision hint
(bf16 on AVX512_BF16/AMX hosts: the label says what ran) and with the f32 hint;
AOTInductor packages (trtflow.backends.torch_inductor) in fp32 and, where the CPU has
AVX512_BF16 or AMX, bf16. Timed in alternating rounds (each round runs every contender
once per batch size, after one untimed call) so drift and other load hit all alike;
median per contender, and the spread of the rounds as the noise.

    python bench/inductor_cpu.py [--models resnet18 minilm] [--rounds 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def model_and_inputs(name: str, batch: int) -> tuple[Any, list[Any], list[str],
                                                     dict[str, np.ndarray]]:
    import torch

    from trtflow.params import TensorSpec
    from trtflow.sources.models import MiniLMEncoder, resnet18_shaped

    rng = np.random.default_rng(batch)
    if name == "resnet18":
        specs = [TensorSpec(name="image", shape=["batch", 3, 224, 224])]
        return (resnet18_shaped(), specs, ["logits"],
                {"image": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)})
    torch.manual_seed(0)
    specs = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
             TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"])]
    ids = rng.integers(1000, 30000, size=(batch, 64)).astype(np.int64)
    return (MiniLMEncoder().eval(), specs, ["sentence_embedding"],
            {"input_ids": ids, "attention_mask": np.ones_like(ids)})


def cleaned_graph(name: str, module: Any, specs: list[Any], outputs: list[str],
                  sample: dict[str, np.ndarray], work: Path) -> Path:
    import onnx

    from trtflow.graph.cleanup import PASSES, cleanup
    from trtflow.params import ExportConfig
    from trtflow.sources import LoadedModel
    from trtflow.stages.export import export_model

    export_model(LoadedModel(module, None, specs, outputs),
                 ExportConfig(opset=18, atol=1e-3, rtol=1e-3), sample, work)
    passes = tuple(PASSES[p] for p in ("onnxscript", "onnxslim", "shape_inference"))
    cleaned, _ = cleanup(onnx.load(str(work / "model.onnx")), passes)
    onnx.save_model(cleaned, str(work / "model.clean.onnx"))
    return work / "model.clean.onnx"


def ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)[0]


def openvino_runner(path: Path, hint: str | None, threads: int) -> tuple[Runner, str]:
    import openvino as ov

    props: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if hint:
        props["INFERENCE_PRECISION_HINT"] = hint
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", props)
    request = compiled.create_infer_request()
    ran = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return (lambda feeds: np.array(list(request.infer(feeds).values())[0])), ran


def inductor_runner(module: Any, specs: list[Any], sample: dict[str, np.ndarray],
                    precision: str, work: Path) -> tuple[Runner, dict[str, Any]]:
    import torch

    from trtflow.backends import torch_inductor as ti

    names = [s.name for s in specs]
    example = tuple(torch.from_numpy(sample[n]) for n in names)
    out = work / f"inductor-{precision}"
    out.mkdir()
    report = ti.compile_package(module, example, names, {n: {0: "batch"} for n in names},
                                precision, "cpu", out)
    engine = ti.InductorEngine(out)
    return (lambda feeds: engine.run(feeds)["output_0"]), {
        k: report[k] for k in ("export_s", "compile_s", "engine_bytes")}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = a.astype(np.float64).reshape(len(a), -1), b.astype(np.float64).reshape(len(b), -1)
    return float(((x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)))
                 .mean())


def bench_model(name: str, rounds: int, batches: list[int], threads: int,
                log: Callable[[str], None]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix=f"inductor-cpu-{name}-"))
    module, specs, outputs, _ = model_and_inputs(name, 2)
    sample = model_and_inputs(name, 2)[3]
    clean = cleaned_graph(name, module, specs, outputs, sample, work)
    feeds = {bs: model_and_inputs(name, bs)[3] for bs in batches}
    names = [s.name for s in specs]

    def eager(f: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return module(*(torch.from_numpy(f[n]) for n in names)).numpy()

    contenders: dict[str, Runner] = {"PyTorch eager FP32": eager,
                                     "ORT FP32": ort_runner(clean, threads)}
    run, ran = openvino_runner(clean, None, threads)
    contenders[f"OpenVINO default ({ran})"] = run
    contenders["OpenVINO f32 hint"] = openvino_runner(clean, "f32", threads)[0]
    builds: dict[str, Any] = {}
    cpu_bf16 = bool({"avx512_bf16", "amx_bf16"} & _proc_flags())
    for precision in ("fp32", "bf16") if cpu_bf16 else ("fp32",):
        start = time.perf_counter()
        contenders[f"AOTInductor {precision}"], builds[precision] = inductor_runner(
            module, specs, sample, precision, work)
        log(f"{name}: AOTInductor {precision} built in {time.perf_counter() - start:.0f}s")
    refs = {bs: eager(feeds[bs]) for bs in batches}
    quality = {c: {f"bs{bs}": cosine(run(feeds[bs]), refs[bs]) for bs in batches}
               for c, run in contenders.items()}
    series: dict[str, dict[int, list[float]]] = {c: {bs: [] for bs in batches}
                                                 for c in contenders}
    for _ in range(rounds):
        for bs in batches:
            for c, run in contenders.items():
                run(feeds[bs])  # untimed: steady state, not a cold cache
                start = time.perf_counter()
                run(feeds[bs])
                series[c][bs].append((time.perf_counter() - start) * 1e3)
    rows: dict[str, Any] = {}
    for c in contenders:
        rows[c] = {}
        for bs in batches:
            s = series[c][bs]
            q1, q3 = np.percentile(s, [25, 75])
            rows[c][f"bs{bs}"] = {"median_ms": statistics.median(s), "iqr_ms": [q1, q3],
                                  "cosine": quality[c][f"bs{bs}"]}
    return {"contenders": rows, "inductor_builds": builds, "threads": threads,
            "load_average": os.getloadavg()}


def _proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "minilm"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" /
                        "inductor_cpu.json")
    args = parser.parse_args()
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)

    from trtflow.backends.torch_inductor import host_name

    flags = sorted(_proc_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16",
                                    "amx_bf16", "amx_int8", "amx_tile"})
    result: dict[str, Any] = {"cpu": host_name("cpu"), "cpu_flags": flags,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "models": {}}
    batches = [int(b) for b in args.batches.split(",")]
    for name in args.models:
        log(f"== {name}")
        result["models"][name] = bench_model(name, args.rounds, batches, args.threads, log)
        args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['cpu']} {flags}, {args.threads} threads (ms, median of rounds)")
    for name, entry in result["models"].items():
        for c, row in entry["contenders"].items():
            cells = "  ".join(f"{k} {v['median_ms']:8.2f} (cos {v['cosine']:.5f})"
                              for k, v in row.items())
            print(f"{name:9} {c:34} {cells}")


if __name__ == "__main__":
    main()
