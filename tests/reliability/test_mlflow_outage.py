"""The MLflow tracking server dies in the middle of a run, then comes back.

A real `mlflow server` (its own sqlite store) on 127.0.0.1; `trtflow run` logs to
it over HTTP. The server is killed (SIGKILL, no shutdown) as soon as the build
stage's artifact is complete, while validation runs, so the outage hits the
logging at the end of the compile. The run must fail with one message naming the
server and saying the stages are safe, leave nothing half-written, and a re-run
after the server is back on the same port must log the compile from the cached
stages without recomputing them.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from ..integration.mlflow_server import MlflowServer
from .conftest import TRTFLOW, fast_params, leftovers, new_project, project_env, trtflow

pytestmark = pytest.mark.slow  # two compiles and two server starts: ~2 min on 2 cores


def _built(store: Path) -> bool:
    build = store / "build"
    return build.is_dir() and any(not p.name.startswith(".") for p in build.iterdir())


def test_tracking_server_dies_mid_run_then_the_rerun_logs_from_cache(
        tmp_path: Path, digits_data: Path) -> None:
    root = new_project(tmp_path, digits_data, "outage")
    # a long latency series keeps validation busy while the server goes away
    fast_params(root, targets=("fp32",), validate={"iterations": 400, "max_seconds": 4,
                                                    "batch_sizes": [1, 8]})
    server = MlflowServer(tmp_path / "mlflow.log", store=tmp_path / "mlflow-store").wait()
    env = project_env(MLFLOW_TRACKING_URI=server.url)
    try:
        proc = subprocess.Popen([TRTFLOW, "run", "p.yaml"], cwd=root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 600
        while not _built(root / ".trtflow" / "store") and proc.poll() is None:
            assert time.monotonic() < deadline, "the build stage never completed"
            time.sleep(0.05)
        server.kill()
        killed_at = time.monotonic()
        out, err = proc.communicate(timeout=600)
        failed_after = time.monotonic() - killed_at
        print(f"run failed {failed_after:.1f} s after the server was killed")

        assert proc.returncode != 0, out + err
        assert "stopped answering while" in err and server.url in err, err
        assert "run the same command again once the server is back" in err
        assert "Traceback" not in err
        assert leftovers(root) == []
        verify = trtflow("store", "verify", cwd=root)
        assert verify.returncode == 0, verify.stdout + verify.stderr

        server = MlflowServer(tmp_path / "mlflow.log", store=tmp_path / "mlflow-store",
                              port=server.port).wait()
        again = trtflow("run", "p.yaml", cwd=root, env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "stages run: 0," in again.stdout, again.stdout  # nothing recomputed
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=server.url)
        exp = client.get_experiment_by_name("digits")
        assert exp is not None
        finished = [r for r in client.search_runs([exp.experiment_id])
                    if r.info.status == "FINISHED" and r.data.tags.get("trtflow.target")]
        assert [r.data.tags["trtflow.target"] for r in finished] == ["fp32"]
    finally:
        server.stop()
