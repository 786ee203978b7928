"""The committed H100 results log to MLflow (sqlite) with one metric per contender figure."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from log_gpu_results import log_results, main  # noqa: E402


def test_h100_results_become_mlflow_runs() -> None:
    run_ids = log_results(REPO / "bench/results/gpu_h100.json", experiment="gpu-bench-test")
    assert run_ids
    metrics = {k: v for r in run_ids for k, v in mlflow.get_run(r).data.metrics.items()}
    assert any(k.startswith("resnet50.pytorch_eager_fp32.bs1.median_ms") for k in metrics)
    assert mlflow.get_run(run_ids[0]).data.params["device"].startswith("NVIDIA")


def test_missing_results_file_is_named(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope.json")]) == 2
    assert "nope.json does not exist" in capsys.readouterr().err
