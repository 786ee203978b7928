"""TensorRT-RTX parse and build times on this host (no GPU needed), per model and precision.

For each model (digits, resnet18) the clean graph and calibration come from the same
cached stages as `trtflow run` (export -> cleanup -> calibrate, no Prefect; `trtflow
prepare` first). Each precision's graph (tensorrt_network.typed_graph: clean FP32, ModelOpt
AutoCast FP16/BF16, INT8/FP8 Q/DQ) is parsed strongly typed and built for the default
archs (fp8: sm89, sm120), `--repeats` times; the JSON keeps each time, the median, the
plan size, the precision report's summary and the engine's kernels per input type, with
the CPU flags. Benchmarks are not tests: nothing here asserts a time.

    python bench/tensorrt_rtx.py [--models digits resnet18] [--repeats 3] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "tensorrt_rtx.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")


def stages(model: str, root: Path) -> tuple[Path, object]:
    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import CLEAN_FILE, run_up_to
    from trtflow.project import configure_environment
    from trtflow.quant.artifact import Calibration

    configure_environment(root)
    ctx = Context.create(load_params(root / "params" / f"{model}.yaml"), root)
    _, cleaned, calibrated = run_up_to(ctx, "calibrate", "int8")
    return cleaned.file(CLEAN_FILE), Calibration(Path(calibrated.path))


def one_model(model: str, repeats: int, root: Path) -> dict:
    from trtflow.backends.tensorrt_network import typed_graph
    from trtflow.backends.tensorrt_rtx import TensorRTRtxOptions, archs_for, build_plan

    clean, calibration = stages(model, root)
    rows = {}
    for precision in PRECISIONS:
        archs, _ = archs_for(precision, TensorRTRtxOptions())
        parse, build, convert = [], [], []
        report: dict = {}
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                graph, _ = typed_graph(precision, clean, calibration, Path(tmp))  # type: ignore[arg-type]
                convert.append(time.perf_counter() - start)
                report = build_plan(graph, archs, Path(tmp))
            parse.append(report["tensorrt_rtx"]["parse_seconds"])
            build.append(report["tensorrt_rtx"]["build_seconds"])
        rows[precision] = {
            "gpu_archs": archs, "parse_s": parse, "build_s": build, "convert_s": convert,
            "parse_median_s": statistics.median(parse),
            "build_median_s": statistics.median(build),
            "convert_median_s": statistics.median(convert),
            "plan_bytes": report["engine_bytes"],
            "precision": {k: report["precision"][k] for k in (
                "by_precision", "convolutions", "convolutions_int8_inputs",
                "convolutions_fp8_inputs")},
            "engine_kernels": report["fusion"]["kernel_input_types"],
            "engine_layers": report["fusion"]["layers"],
            "fused_layers": report["fusion"]["fused_layers"]}
        print(f"{model:9s} {precision:5s} parse {rows[precision]['parse_median_s']:.3f} s  "
              f"build {rows[precision]['build_median_s']:.3f} s  "
              f"(graph {rows[precision]['convert_median_s']:.2f} s)  "
              f"plan {report['engine_bytes'] / 1e6:.1f} MB  {report['precision']['by_precision']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits", "resnet18"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=ROOT, help="project directory (store, "
                        "data; `trtflow prepare --root` writes the demo data)")
    args = parser.parse_args()
    from trtflow.backends.tensorrt_rtx import rtx
    from trtflow.latency import cpu_flags, host_fingerprint

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update({
        "tensorrt_rtx": rtx().__version__, "host": host_fingerprint(),
        "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "repeats": args.repeats,
        "note": "build times on a CPU-only host: TensorRT-RTX compiles for the named archs "
                "without a GPU; the plans were not run here"})
    models = results.setdefault("models", {})
    for model in args.models:
        models[model] = one_model(model, args.repeats, args.root.resolve())
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
