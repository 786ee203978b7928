"""Ctrl-C in a terminal stops `trtflow run`: exit 130, the Prefect flow run Cancelled, no
server left behind, no half artifact, and the next run resumes from the finished stages."""

from __future__ import annotations

import os
import pty
import re
import select
import sqlite3
import sys
import time
from pathlib import Path

from .conftest import write_params

_SESSION_STATE = ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL",
                  "MLFLOW_TRACKING_URI", "TRTFLOW_MLFLOW_ARTIFACTS")
HANG = 60.0  # a hang detector, not a timing assertion: the old behaviour took 70-78 s


def _run_in_terminal(root: Path, args: list[str], interrupt_at: str | None,
                     api_url: str | None = None) -> tuple[int, str]:
    """`trtflow ARGS` on a pty of its own; once `interrupt_at` shows, type Ctrl-C (the
    terminal sends SIGINT to the whole foreground process group, as for a user)."""
    trtflow = str(Path(sys.executable).with_name("trtflow"))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.chdir(root)
        for name in _SESSION_STATE:  # this project's own Prefect home, MLflow and store
            os.environ.pop(name, None)
        if api_url:
            os.environ["PREFECT_API_URL"] = api_url
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
        if interrupt_at and not sent and re.search(interrupt_at.encode(), shown):
            os.write(fd, b"\x03")
            sent, deadline = time.monotonic(), time.monotonic() + HANG
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    if sent:
        print(f"Ctrl-C at {interrupt_at!r}: exited {time.monotonic() - sent:.2f} s later")
    assert interrupt_at is None or sent, output.decode(errors="replace")[-3000:]
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
