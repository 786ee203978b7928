"""Ctrl-C in a terminal stops `trtflow run`: exit 130, the Prefect flow run Cancelled, an
MLflow run being logged KILLED, no server left behind, no half artifact, and the next run
resumes from the finished stages."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import write_params

_SESSION_STATE = ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL",
                  "MLFLOW_TRACKING_URI", "TRTFLOW_MLFLOW_ARTIFACTS")
HANG = 60.0  # a hang detector, not a timing assertion: the old behaviour took 70-78 s


def _run_in_terminal(root: Path, args: list[str], interrupt_at: str | None,
                     api_url: str | None = None, tracking_uri: str | None = None,
                     interrupt_when: Callable[[], bool] | None = None) -> tuple[int, str]:
    """`trtflow ARGS` on a pty of its own; once `interrupt_at` shows (or `interrupt_when`
    says so), type Ctrl-C (the terminal sends SIGINT to the whole foreground process
    group, as for a user)."""
    trtflow = str(Path(sys.executable).with_name("trtflow"))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        # a shell starts a foreground command with SIGINT at its default; pytest itself may
        # have been started as a background job (`make test &`), which ignores SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.chdir(root)
        for name in _SESSION_STATE:  # this project's own Prefect home, MLflow and store
            os.environ.pop(name, None)
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
        if tracking_uri:
            os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        os.execv(trtflow, [trtflow, *args])
    output, sent, deadline = b"", 0.0, time.monotonic() + 900
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        shown = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", output)
        due = (interrupt_at and re.search(interrupt_at.encode(), shown)) or \
            (interrupt_when is not None and interrupt_when())
        if due and not sent:
            os.write(fd, b"\x03")
            sent, deadline = time.monotonic(), time.monotonic() + HANG
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if sent:
        print(f"Ctrl-C at {interrupt_at or 'interrupt_when'!r}: exited "
              f"{time.monotonic() - sent:.2f} s later")
    assert (interrupt_at is None and interrupt_when is None) or sent, \
        output.decode(errors="replace")[-3000:]
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def _running(stage: str) -> str:
    """The spinner's line while `stage` runs (its name or its progress), not its done line."""
    return rf"(?<![✓○] ){stage}( \[[^\]]*\])?(…|: \d+/)"


def _flow_run_states(root: Path) -> list[str]:
    with sqlite3.connect(root / ".trtflow" / "prefect" / "prefect.db") as db:
        return [row[0] for row in db.execute(
            "SELECT state_name FROM flow_run ORDER BY created")]


def _servers_of(root: Path) -> list[int]:
    """Live processes whose PREFECT_HOME is this project's."""
    home = f"PREFECT_HOME={root / '.trtflow' / 'prefect'}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if home in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_ctrl_c_at_each_stage_exits_130_and_cancels_the_flow_run(demo_root: Path,
                                                                 tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "data").symlink_to(demo_root / "data")
    params = write_params(root)
    args = ["run", str(params), "-t", "int8"]
    cancelled = 0
    for stage in ("export", "calibrate", "validate"):
        code, output = _run_in_terminal(root, args, interrupt_at=_running(stage))
        assert code == 130, output[-3000:]
        assert "interrupted" in output
        cancelled += 1
        assert _flow_run_states(root).count("Cancelled") == cancelled
        assert not _servers_of(root), "the ephemeral Prefect server outlived the run"
        store = root / ".trtflow" / "store"
        assert not list(store.glob("*/.tmp-*")), "a half-written artifact was left"
    code, output = _run_in_terminal(root, args, interrupt_at=None)
    assert code == 0, output[-3000:]
    assert "cached" in output  # the stages finished before each Ctrl-C are reused
    assert re.search(r"MLflow runs: int8 [0-9a-f]{32}\b", output)  # whole, for `report`


def test_ctrl_c_on_a_real_prefect_server_cancels_the_flow_run_and_the_server_lives_on(
        demo_root: Path, tmp_path: Path) -> None:
    from flows.server import free_port, healthy, start_server

    root = tmp_path / "project"
    root.mkdir()
    (root / "data").symlink_to(demo_root / "data")
    params = write_params(root)
    server = start_server(root / ".trtflow" / "prefect", free_port())
    try:
        code, output = _run_in_terminal(root, ["run", str(params), "-t", "int8"],
                                        interrupt_at=_running("calibrate"),
                                        api_url=server.api_url)
        assert code == 130, output[-3000:]
        assert _flow_run_states(root) == ["Cancelled"]
        assert healthy(server.api_url)  # the user's server is not ours to stop
    finally:
        server.stop()


def test_ctrl_c_while_logging_to_a_real_mlflow_server_marks_the_runs_killed(
        demo_root: Path, tmp_path: Path) -> None:
    """Ctrl-C once the compile's MLflow runs are open (read from the server's own store):
    exit 130, and every run of that compile is KILLED on the server, none left RUNNING or
    marked FINISHED/FAILED as if the compile had ended."""
    from mlflow import MlflowClient

    from .mlflow_server import MlflowServer

    root = tmp_path / "project"
    root.mkdir()
    (root / "data").symlink_to(demo_root / "data")
    params = write_params(root)
    store = tmp_path / "mlflow-store"
    store.mkdir()
    server = MlflowServer(tmp_path / "mlflow.log", store=store).wait()

    def logging() -> bool:  # a run of the compile is open on the server
        try:
            with sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True) as db:
                return bool(db.execute("SELECT 1 FROM runs WHERE status = 'RUNNING'")
                            .fetchone())
        except sqlite3.Error:  # the server is still creating its schema
            return False

    try:
        code, output = _run_in_terminal(root, ["run", str(params), "-t", "int8"],
                                        interrupt_at=None, tracking_uri=server.url,
                                        interrupt_when=logging)
        assert code == 130, output[-3000:]
        runs = MlflowClient(tracking_uri=server.url).search_runs(
            [e.experiment_id for e in MlflowClient(tracking_uri=server.url)
             .search_experiments()])
        assert runs, "no MLflow run was opened"
        assert {r.info.status for r in runs} == {"KILLED"}, [
            (r.info.run_name, r.info.status) for r in runs]
        assert _flow_run_states(root) == ["Cancelled"]
    finally:
        server.stop()
