"""Q/DQ placement benchmark: one set of amax, each Q/DQ form vs FP32 on ONNX Runtime CPU.

ResNet-18-shaped model (seeded random weights, BatchNorm folded by onnxscript's
optimizer). amax = max |activation| over 8 random inputs (a crude stand-in for
calibration). Forms, each timed in the same run, interleaved round by round with the
FP32 baseline (2 intra-op threads, ORT_ENABLE_ALL), at batch 1 and 8:

- tensorrt:              TensorRT placement (Q/DQ on op inputs only), int8;
- ort_cpu int8:          ORT placement, int8 activations, default session;
- ort_cpu int8 +allowed: the same with ``session.qdqisint8allowed`` (S8S8 kernels);
- ort_cpu uint8:         ORT placement, uint8 activations (U8S8, MLAS's x86 fast path);
- ort_cpu uint8 rr:      the same with 7-bit weights (``reduce_range``: no u8 x s8 saturation);
- ort_cpu uint8 u8u8:    uint8 with ``session.x64quantprecision`` (exact U8U8 kernels).

Reports latency (median and min per call), speed-up over FP32, relative L2 error
against FP32 on 8 unseen inputs, and the ops ORT's optimized graph runs.

    python bench/qdq_placement.py        # writes bench/results/qdq_placement.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
THREADS = 2
BATCH_SIZES = (1, 8)
ROUNDS = 5
SECONDS_PER_TURN = {1: 0.6, 8: 1.5}  # per form per round, at least one call


def build_fp32(path: Path):
    import onnx
    import onnxscript.optimizer
    import torch

    from trtflow.sources.models import resnet18_shaped

    image = torch.randn(1, 3, 224, 224)
    program = torch.onnx.export(
        resnet18_shaped(), (image,), dynamo=True, external_data=False,
        input_names=["image"], output_names=["logits"],
        dynamic_shapes={"image": {0: torch.export.Dim("batch")}})
    model = onnxscript.optimizer.optimize(program.model_proto)
    onnx.save(model, path)
    return model


def max_amax(model, names: list[str], images: np.ndarray) -> dict[str, float]:
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in outputs)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = [o.name for o in probe.graph.output]
    amax = dict.fromkeys(names, 0.0)
    for start in range(0, len(images), 4):  # bounded memory: 4 images per call
        for name, value in zip(wanted, session.run(wanted, {"image": images[start:start + 4]}),
                               strict=True):
            if name in amax:
                amax[name] = max(amax[name], float(np.abs(value).max()))
    return amax


def session(path: Path, config: dict[str, str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_interleaved(sessions: dict, batch: np.ndarray, seconds: float) -> dict[str, list[float]]:
    """Per-call seconds, forms taking turns each round so drift hits all of them alike."""
    feeds = {"image": batch}
    for s in sessions.values():  # warm-up
        s.run(None, feeds)
        s.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(ROUNDS):
        for name, s in sessions.items():
            deadline = time.perf_counter() + seconds
            while True:
                start = time.perf_counter()
                s.run(None, feeds)
                times[name].append(time.perf_counter() - start)
                if time.perf_counter() > deadline:
                    break
    return times


def cpu_info() -> dict:
    from trtflow.latency import host_fingerprint

    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next((line.partition(":")[2].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("flags")), "")
    return {**host_fingerprint(), "flags": flags.split(), "machine": platform.machine()}


def main() -> None:
    import onnx
    import onnxruntime as ort

    from trtflow.quant.qdq import (
        ORT_INT8_ALLOWED,
        ORT_U8U8_PRECISION,
        count_fused_ops,
        insert_qdq,
        quantizable_activations,
        u8s8_may_saturate,
    )

    began = time.perf_counter()
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    unseen = rng.standard_normal((8, 3, 224, 224), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        fp32_path = tmp_dir / "fp32.onnx"
        model = build_fp32(fp32_path)
        names = list(dict.fromkeys(quantizable_activations(model, "tensorrt")
                                   + quantizable_activations(model, "ort_cpu")))
        amax = max_amax(model, names, calibration)
        prepared = time.perf_counter() - began

        forms: dict[str, tuple[Path, dict[str, str]]] = {"fp32": (fp32_path, {})}
        reports = {}
        for name, placement, dtype, reduce_range, config in (
                ("tensorrt", "tensorrt", "int8", False, {}),
                ("ort_cpu int8", "ort_cpu", "int8", False, {}),
                ("ort_cpu int8 +allowed", "ort_cpu", "int8", False, ORT_INT8_ALLOWED),
                ("ort_cpu uint8", "ort_cpu", "uint8", False, {}),
                ("ort_cpu uint8 rr", "ort_cpu", "uint8", True, {}),
                ("ort_cpu uint8 u8u8", "ort_cpu", "uint8", False, ORT_U8U8_PRECISION)):
            path = tmp_dir / f"{placement}_{dtype}_{int(reduce_range)}.onnx"
            if not path.exists():
                qdq_model, report = insert_qdq(model, amax, placement, dtype,
                                               reduce_range=reduce_range)
                onnx.save(qdq_model, path)
                reports[path] = report
            forms[name] = (path, config)

        sessions = {name: session(path, config) for name, (path, config) in forms.items()}
        reference = sessions["fp32"].run(None, {"image": unseen})[0]
        results: dict[str, dict] = {}
        for name, (path, config) in forms.items():
            output = sessions[name].run(None, {"image": unseen})[0]
            ops = count_fused_ops(path, "all", config)
            report = reports.get(path, {})
            results[name] = {
                "session_config": config,
                "relative_l2_error": float(np.linalg.norm(output - reference)
                                           / np.linalg.norm(reference)),
                "max_abs_error": float(np.abs(output - reference).max()),
                "optimized_ops": dict(sorted(ops.items())),
                "float_fraction": report.get("float_fraction"),
                "qdq_model_bytes": path.stat().st_size,
                "latency": {},
            }
        ort_version = ort.__version__

        for batch_size in BATCH_SIZES:
            times = time_interleaved(sessions, unseen[:batch_size], SECONDS_PER_TURN[batch_size])
            fp32_median = float(np.median(times["fp32"]))
            for name, samples in times.items():
                ms = np.asarray(samples) * 1e3
                results[name]["latency"][f"bs{batch_size}"] = {
                    "calls": len(samples), "median_ms": float(np.median(ms)),
                    "min_ms": float(ms.min()),
                    "speedup_vs_fp32": fp32_median / float(np.median(samples))}

    cpu = cpu_info()
    summary = {
        "benchmark": "qdq_placement",
        "model": "resnet18_shaped (random weights, BN folded), 3x224x224",
        "amax": "max |activation| over 8 standard-normal images",
        "error_inputs": "8 other standard-normal images; error vs ORT FP32",
        "threads": THREADS, "graph_optimization": "ORT_ENABLE_ALL",
        "onnxruntime": ort_version, "cpu": cpu,
        "u8s8_may_saturate": u8s8_may_saturate(cpu["flags"]),
        "quantized_tensors": len(names),
        "forms": results,
        "prepare_s": round(prepared, 1),
        "wall_s": round(time.perf_counter() - began, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "qdq_placement.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")

    print(f"{cpu['cpu']} ({cpu['simd']}), ORT {ort_version}, {THREADS} threads, ORT_ENABLE_ALL")
    print(f"{'form':24s} {'bs1 ms':>8s} {'x fp32':>7s} {'bs8 ms':>8s} {'x fp32':>7s}"
          f" {'rel err':>8s}  fused ops")
    for name, r in results.items():
        b1, b8 = r["latency"]["bs1"], r["latency"]["bs8"]
        fused = {k: v for k, v in r["optimized_ops"].items()
                 if k.startswith(("QLinear", "QGemm")) or k in ("Conv", "FusedConv")}
        print(f"{name:24s} {b1['median_ms']:8.1f} {b1['speedup_vs_fp32']:7.2f}"
              f" {b8['median_ms']:8.1f} {b8['speedup_vs_fp32']:7.2f}"
              f" {r['relative_l2_error']:8.4f}  {fused}")
    print(f"wrote {out.relative_to(ROOT)} in {summary['wall_s']} s")


if __name__ == "__main__":
    main()
