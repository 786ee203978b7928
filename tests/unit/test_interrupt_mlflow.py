"""Ctrl-C's watcher (flows/interrupt.py) marks the MLflow runs open in any thread KILLED."""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pytest

from flows.interrupt import kill_open_mlflow_runs


def test_runs_open_in_another_thread_are_marked_killed(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.MlflowClient().create_experiment("digits",
                                                  artifact_location=str(tmp_path / "a"))
    opened, release = threading.Event(), threading.Event()
    ids: list[str] = []

    def logging() -> None:  # the main thread of `trtflow run`, stuck while logging
        with mlflow.start_run(experiment_id=exp) as parent:
            with mlflow.start_run(experiment_id=exp, nested=True) as child:
                ids.extend([parent.info.run_id, child.info.run_id])
                opened.set()
                release.wait(30)

    worker = threading.Thread(target=logging)
    worker.start()
    try:
        assert opened.wait(30)
        assert sorted(kill_open_mlflow_runs()) == sorted(ids)
        client = mlflow.MlflowClient()
        assert [client.get_run(i).info.status for i in ids] == ["KILLED", "KILLED"]
    finally:
        release.set()
        worker.join(30)
