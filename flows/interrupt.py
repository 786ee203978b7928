"""Ctrl-C for `trtflow run`: stop within 2 s, exit 130, leave Prefect and MLflow honest.

Two things made Ctrl-C hang before. Prefect's ephemeral API server is a child in
the terminal's process group, so the same SIGINT killed it, and the run then spent
a minute retrying to report its crash to a dead server. And a stage inside a long
C call (ONNX Runtime, a TensorRT build) sees KeyboardInterrupt only when the call
returns. So `run` starts the ephemeral server itself in its own session
(`ephemeral_server`), and `Interrupt` watches for SIGINT from a thread: if the
main thread has not wound up within the grace period, the thread does the
clean-up itself (flow run Cancelled, the server stopped) and exits 130. The store
writes through temp dirs named by PID, so a dead writer leaves no half artifact.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.server import PrefectServer, ServerError, free_port, healthy

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
GRACE_SECONDS = 1.5


def _die_with_parent() -> None:  # pragma: no cover (runs in the child before exec)
    """Linux: the server gets SIGTERM when `trtflow run` dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_ephemeral(home: Path, timeout: float) -> PrefectServer:
    """Prefect's ephemeral API server (uvicorn, no UI), as Prefect starts it, but in its own
    session: Ctrl-C in the terminal reaches `trtflow run`, not the server it reports to."""
    import prefect

    port, app_dir = free_port(), str(Path(prefect.__file__).parent.parent)
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1", "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    log = home / "ephemeral-server.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", app_dir,
             "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--lifespan", "on"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, preexec_fn=_die_with_parent)
    server = PrefectServer(f"http://127.0.0.1:{port}", proc.pid, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"Prefect's ephemeral server exited with code {proc.returncode} "
                              f"before it answered; see {log}")
        if healthy(server.api_url, timeout=1.0):
            return server
        time.sleep(0.1)
    server.stop()
    raise ServerError(f"Prefect's ephemeral server did not answer within {timeout:.0f} s "
                      f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); see {log}")


@contextmanager
def ephemeral_server() -> Iterator[PrefectServer | None]:
    """PREFECT_API_URL's server when set (yields None), else our own ephemeral one for the
    duration, stopped afterwards."""
    if os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    server = start_ephemeral(Path(os.environ["PREFECT_HOME"]), timeout)
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        server.stop(timeout=5.0)


def cancel_flow_runs(flow_run_ids: list[str]) -> None:
    """Mark interrupted flow runs Cancelled (Prefect's own crash handler says Crashed)."""
    if not flow_run_ids:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    try:
        with get_client(sync_client=True) as client:
            for flow_run_id in flow_run_ids:
                client.set_flow_run_state(flow_run_id, Cancelled(
                    message="interrupted by the user (Ctrl-C)"), force=True)
    except Exception as exc:  # the server itself may be gone: say so, exit anyway
        print(f"warning: could not mark the Prefect flow run cancelled: {exc}", file=sys.stderr)


def kill_open_mlflow_runs() -> list[str]:
    """Mark the MLflow runs this process has open (in any thread) KILLED; their ids.

    The main thread does this itself when it handles Ctrl-C while logging; this is for
    the watcher, when the main thread is stuck in a C call past the grace period and the
    process exits without unwinding (so MLflow's own exit handler never runs)."""
    if "mlflow" not in sys.modules:  # nothing was logged yet: do not import it now
        return []
    try:
        from mlflow import MlflowClient
        from mlflow.tracking import fluent

        stacks = fluent._active_run_stack.get_all_thread_values().values()
        open_runs = [run.info.run_id for stack in stacks for run in stack]
        client = MlflowClient()
        for run_id in open_runs:
            client.set_terminated(run_id, "KILLED")
        return open_runs
    except Exception as exc:  # the tracking server may be what is gone: say so, exit anyway
        print(f"warning: could not mark the open MLflow runs KILLED: {exc}", file=sys.stderr)
        return []


class Interrupt:
    """Watches SIGINT through the wakeup fd (written by the C-level handler, so it fires even
    while the main thread is inside a long C call). The main thread still gets its
    KeyboardInterrupt; when it has not called `finished` within `grace` seconds, `clean_up`
    runs on the watcher thread and the process exits 130."""

    def __init__(self, clean_up: Callable[[], None], grace: float = GRACE_SECONDS) -> None:
        self.clean_up, self.grace = clean_up, grace
        self._finished = threading.Event()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        # our own handler also tells the watcher itself, for when a library has replaced
        # the wakeup fd (event loops that add signal handlers do) and swallows the
        # KeyboardInterrupt; asyncio.run replaces only Python's default handler, not this
        # one. A process started with SIGINT ignored (a background job) keeps ignoring it
        self._previous_handler = signal.getsignal(signal.SIGINT) or signal.default_int_handler
        if self._previous_handler is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self._on_sigint)
        threading.Thread(target=self._watch, name="trtflow-interrupt", daemon=True).start()

    def _on_sigint(self, signum: int, frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(self._write_fd, bytes([signal.SIGINT]))
        raise KeyboardInterrupt

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data and not self._finished.wait(self.grace):
                try:
                    self.clean_up()
                finally:
                    exit_now()

    def finished(self) -> None:
        """The main thread has cleaned up (or finished normally): the watcher stands down."""
        self._finished.set()
        signal.set_wakeup_fd(self._previous_fd)
        signal.signal(signal.SIGINT, self._previous_handler)


def exit_now(code: int = EXIT_INTERRUPTED) -> None:
    """Exit without waiting for worker threads (a calibration pool, ORT's) to drain."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
