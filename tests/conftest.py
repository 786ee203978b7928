"""Test-wide environment: Prefect, MLflow and the store live in one temp dir per session.

Set before Prefect or MLflow is imported (both read their settings at import).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="trtflow-tests-"))
os.environ["TRTFLOW_TEST_DIR"] = str(_SESSION_DIR)
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "prefect" / "results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # busy 2-core CI
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow.db'}"
os.environ["TRTFLOW_MLFLOW_ARTIFACTS"] = str(_SESSION_DIR / "mlartifacts")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project dir with the demo data written once per session (digits, minilm, resnet18)."""
    from trtflow.sources.builtin import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root)
    return root


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (read from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(pids: list[int], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
            for pid in pids:  # reap our own children so they do not linger as zombies
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass


def _drain_prefect() -> None:
    import sys

    if "prefect" not in sys.modules:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception:  # best effort: a server that is already gone cannot take them
        pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave nothing behind: servers a test started in this process (Prefect's ephemeral
    server, started by an in-process flow, outlives the worker otherwise) and this session's
    temp dir. The xdist controller only removes its dir: its children are the workers."""
    controller = (getattr(session.config.option, "numprocesses", None) or 0) > 0 and \
        not hasattr(session.config, "workerinput")
    if not controller:
        _drain_prefect()  # send what Prefect still queues while its server is up
        _stop(_descendants(os.getpid()))
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)
