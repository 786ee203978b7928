"""A real `mlflow server` process for tests: `mlflow/serve.sh` (what `make ui` runs).

By default it serves the session's tracking store (tests/conftest.py); `store`
gives it a sqlite file and artifact folder of its own, and `port` a fixed port
(a restarted server comes back where clients expect it). Started in its own
process group, stopped (or killed, as an outage) by that group's id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..conftest import REPO
from .s3_server import free_port


class MlflowServer:
    def __init__(self, log: Path, store: Path | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLFLOW_PORT": str(self.port), "PYTHON": sys.executable}
        if store is not None:
            env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
            env["TRTFLOW_MLFLOW_ARTIFACTS"] = str(store / "mlartifacts")
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "serve.sh")], env=env,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait(self, timeout: float = 180.0) -> MlflowServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).close()
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {timeout} s")

    def kill(self) -> None:
        """An outage: SIGKILL to the whole group, no shutdown."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
