"""A moto S3 server process on 127.0.0.1 for integration tests (publish, DVC remotes).

A real process reached over HTTP by the same boto3 code that talks to AWS; no
in-process mocking. Started on a free port, stopped by its PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Ambient AWS settings that would send requests elsewhere or change retries.
UNSET_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
             "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again before returning)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    """`python -m moto.server` on 127.0.0.1:<free port>, logging to `log_path`."""

    def __init__(self, log_path: Path, startup_timeout: float = 20.0) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, **TEST_ENV}
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        self.pid = self._proc.pid
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} "
                           f"within {self.startup_timeout} s")

    def stop(self) -> None:
        """Terminate the server by its PID; kill it if it does not exit promptly."""
        if self._proc is None or self.pid is None:
            return
        if self._proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)
        self._proc = None


def isolate_aws_env(env: Any, tmp: Path) -> None:
    """Point boto3 at nothing but the test credentials (`env`: a pytest MonkeyPatch): the
    AWS variables that could steer it are unset and no ~/.aws files are read."""
    for name in UNSET_ENV:
        env.delenv(name, raising=False)
    for name, value in TEST_ENV.items():
        env.setenv(name, value)
    env.setenv("AWS_CONFIG_FILE", str(tmp / "absent-config"))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "absent-credentials"))
