"""Log `bench/gpu.py` results (JSON brought back from the device) to MLflow here.

The device has no MLflow, so the GPU benchmark writes JSON; this logs each run
in it as one MLflow run of the `gpu-bench` experiment: the environment as
params, every contender's median/p99 latency, speed-up vs eager FP32 and
cosine vs FP32 as metrics (`<model>.<contender>.<bs>.<figure>`), and the JSON
itself as an artifact, so GPU engines compare in the same UI as CPU ones.

    python bench/log_gpu_results.py bench/results/gpu_h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

FIGURES = ("median_ms", "p99_ms", "min_ms", "max_ms", "speedup_vs_eager_fp32", "cosine")
SUMMARY = ("vs_best_compile", "eager_fp32_ms")
ENV = ("device", "torch", "cuda", "onnxruntime", "python", "timing", "started")


def metrics_of(run: dict[str, Any]) -> dict[str, float]:
    out = {}
    for model, result in run.get("models", {}).items():
        for contender, by_bs in result.get("contenders", {}).items():
            for bs, row in by_bs.items():
                if not isinstance(row, dict):
                    continue
                for fig in FIGURES:
                    if isinstance(row.get(fig), int | float):
                        out[f"{model}.{contender}.{bs}.{fig}"] = float(row[fig])
        # the engine `best` keeps vs the best torch.compile mode, per batch size
        for bs, row in result.get("summary", {}).items():
            for fig in SUMMARY:
                if isinstance(row.get(fig), int | float):
                    out[f"{model}.summary.{bs}.{fig}"] = float(row[fig])
            selected = row.get("selected_trtflow") or {}
            for fig in ("median_ms", "speedup_vs_eager_fp32"):
                if isinstance(selected.get(fig), int | float):
                    out[f"{model}.summary.{bs}.selected_{fig}"] = float(selected[fig])
    return out


def log_results(path: Path, experiment: str = "gpu-bench") -> list[str]:
    import mlflow

    data = json.loads(path.read_text())
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///.trtflow/mlflow.db"))
    from trtflow.track.mlflow_log import experiment_id

    os.environ.setdefault("TRTFLOW_MLFLOW_ARTIFACTS",
                          str(Path(".trtflow", "mlartifacts").absolute()))
    mlflow.set_experiment(experiment_id=experiment_id(experiment))  # artifacts under .trtflow
    run_ids = []
    for run in data.get("runs", [data]):
        name = f"{run.get('source', path.name)} on {run.get('device', data.get('device'))}"
        with mlflow.start_run(run_name=name) as active:
            mlflow.log_params({k: str(run[k])[:500] for k in ENV if k in run})
            mlflow.log_metrics(metrics_of(run))
            mlflow.log_artifact(str(path))
            run_ids.append(active.info.run_id)
    return run_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON written by bench/gpu.py")
    args = parser.parse_args(argv)
    for path in args.results:
        if not path.is_file():
            print(f"error: {path} does not exist (expected bench/gpu.py's JSON)", file=sys.stderr)
            return 2
        for run_id in log_results(path):
            print(f"logged {path} -> MLflow run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
