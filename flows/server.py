"""A local Prefect server for `trtflow serve`: started as a child process, found again later.

Deployments, schedules, event triggers and concurrency limits need a real API
server (the ephemeral one lives only as long as one process). `trtflow serve`
starts `prefect server start` on 127.0.0.1 with its database under the
project's `.trtflow/prefect/` (git-ignored) and records the address in
`server.json` there, so `trtflow trigger` in another shell finds the same
server without PREFECT_API_URL. Nothing here imports Prefect: starting the
server is a subprocess, and waiting for it is an HTTP poll.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from trtflow.atomic import atomic_file
from trtflow.errors import TrtflowError
from trtflow.store import pid_alive

SERVER_FILE = "server.json"


class ServerError(TrtflowError):
    """The Prefect server could not be started or reached."""


@dataclass
class PrefectServer:
    url: str  # http://127.0.0.1:PORT (the UI); the API is url + "/api"
    pid: int | None  # our child's PID; None when the server was started elsewhere
    log: Path | None = None

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop our server (SIGTERM to its process group, SIGKILL after `timeout`)."""
        if self.pid is None:
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:  # not our child (recorded by another process)
                if not pid_alive(self.pid):
                    return
            time.sleep(0.2)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_server(home: Path, port: int, log: Path | None = None,
                 timeout: float = 180.0) -> PrefectServer:
    """Start `prefect server start` on 127.0.0.1:`port` with PREFECT_HOME=`home`; wait for
    /api/health (~40 s on a busy 2-core machine). Its own process group, so `stop` also
    ends the server's children."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    if healthy(url + "/api", timeout=1.0):
        raise ServerError(f"something already answers on {url}; pick another --port or set "
                          "PREFECT_API_URL to use that server")
    log = log or home / "server.log"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_UI_API_URL": f"{url}/api"}
    env.pop("PREFECT_API_URL", None)  # the server must not try to talk to another server
    prefect = Path(sys.executable).with_name("prefect")
    with open(log, "ab") as out:
        proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = PrefectServer(url, proc.pid, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"prefect server exited with code {proc.returncode} before it "
                              f"answered; see {log}")
        if healthy(server.api_url):
            return server
        time.sleep(0.5)
    server.stop()
    raise ServerError(f"prefect server on {url} did not answer /api/health within "
                      f"{timeout:.0f} s; see {log}")


def record(home: Path, server: PrefectServer) -> None:
    """Remember the server for `trtflow trigger` (atomically; removed by `forget`)."""
    with atomic_file(home / SERVER_FILE, "w") as f:
        json.dump({"url": server.url, "pid": server.pid}, f)


def forget(home: Path) -> None:
    (home / SERVER_FILE).unlink(missing_ok=True)


def recorded(home: Path) -> PrefectServer | None:
    """The server `trtflow serve` recorded for this project, if it still answers."""
    try:
        info = json.loads((home / SERVER_FILE).read_text())
    except (OSError, ValueError):
        return None
    server = PrefectServer(str(info["url"]), info.get("pid"))
    return server if healthy(server.api_url) else None


    return True
