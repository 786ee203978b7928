"""The `trtflow` application: the Typer app, its shared options and its error handling.

Command modules (`trtflow/cli/*.py`, and the flow commands in `flows/cli/`)
import this module and register on `app`; this module imports none of them.
Each command is thin: it validates inputs, calls the core or a flow, and turns
a `TrtflowError` into one paragraph on stderr with a non-zero exit code.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from trtflow.errors import DamagedArtifactWarning, DataCastWarning, TrtflowError

_option_type = typer.core.TyperOption.display_type_rich


def _flag_type(option: typer.core.TyperOption, ctx: Any) -> str | None:
    """Typer 0.29 prints a type column for every option, `<bool>` after each flag: a flag
    takes no value, so its column stays empty (values of other options keep theirs)."""
    return None if option.is_flag else _option_type(option, ctx)


typer.core.TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign,assignment]

# `trtflow -h` lists the commands a new user needs first; the rest follow as registered
FIRST_COMMANDS = ("run", "init", "inspect", "prepare", "history", "promote", "report",
                  "publish", "fetch", "serve", "trigger", "matrix")


class _CommandsInOrder(typer.core.TyperGroup):
    def list_commands(self, ctx: Any) -> list[str]:
        names = list(super().list_commands(ctx))
        first = [n for n in FIRST_COMMANDS if n in names]
        return first + [n for n in names if n not in first]


app = typer.Typer(
    cls=_CommandsInOrder,
    help="trtflow compiles a trained model into a validated, versioned inference engine:\n\n"
    "export -> cleanup -> calibrate -> build -> validate, cached per stage, logged to MLflow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 150)

ROOT_OPTION = typer.Option("--root", help="project directory (store, MLflow, data paths)")
WAIT_OPTION = typer.Option(help="wait for the triggered compile(s) to finish")
TIMEOUT_OPTION = typer.Option(help="--wait gives up after this many seconds")


DEBUG_ENV = "TRTFLOW_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"trtflow {version('trtflow')}")
        except PackageNotFoundError:
            print("trtflow (not installed: run `make` or `pip install -e .`)")
        raise typer.Exit()


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="on an error, also print the Python traceback")] = False,
             version: Annotated[bool, typer.Option(
                 "--version", is_eager=True, callback=_print_version,
                 help="print trtflow's version and exit")] = False) -> None:
    """trtflow: compile a model into a validated, versioned engine."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
    warnings.showwarning = _show_warning


_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """trtflow's own warnings (a data cast, a damaged artifact) as one plain line; others
    as Python prints them."""
    if issubclass(category, (DataCastWarning, DamagedArtifactWarning)) and not debug_enabled():
        print(f"warning: {message}", file=sys.stderr)
        return
    _python_showwarning(message, category, filename, lineno, file, line)


def check_tracking_server(timeout: float = 10.0) -> None:
    """Fail now when MLFLOW_TRACKING_URI names a server that does not answer: MLflow's
    client would retry for minutes, and only after the whole compile."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    from trtflow.errors import TrackingError
    from trtflow.track.health import unreachable

    reason = unreachable(uri, timeout)
    if reason is not None:
        raise TrackingError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is "
                            f"unreachable: {reason}; nothing was compiled. Start the server, "
                            "or unset MLFLOW_TRACKING_URI to log to the project's sqlite "
                            "file")


@contextmanager
def no_empty_state_dir(root: Path) -> Iterator[None]:
    """A command that fails before writing anything leaves no empty `.trtflow/` behind in
    a directory that had none (a run started outside the project, a wrong data path)."""
    from trtflow.project import state_dir

    state = state_dir(root)
    fresh = not state.exists()
    try:
        yield
    finally:
        if fresh and state.is_dir() and not any(p.is_file() or p.is_symlink()
                                                for p in state.rglob("*")):
            shutil.rmtree(state, ignore_errors=True)


def fail(exc: TrtflowError) -> None:
    """Print a trtflow error as one paragraph and exit with its code."""
    if debug_enabled():
        traceback.print_exception(exc)
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


HEARTBEAT_SECONDS = 20.0  # piped output: a line at least this often while a stage runs
PROGRESS_EVERY_SECONDS = 5.0  # piped output: a stage's progress messages, at most this often


class Progress:
    """A spinner while a stage runs, one line when it is done (stderr). Piped (CI, `| tee`),
    where a spinner shows nothing: a line when a stage starts, its progress messages at most
    every few seconds, and a heartbeat with the elapsed time at least every 20 s."""

    def __init__(self, piped: bool | None = None) -> None:
        self.status = console.status("")
        self.piped = (not console.is_terminal) if piped is None else piped
        self._stage, self._message, self._started, self._printed = "", "", 0.0, 0.0
        self._last_message = 0.0  # when a progress message was last printed (0: none yet)
        self._lock = threading.Lock()
        self._running = threading.Event()
        if self.piped:
            threading.Thread(target=self._heartbeat, name="trtflow-heartbeat",
                             daemon=True).start()

    def started(self, stage: str, target: str) -> None:
        where = escape(f" [{target}]") if target else ""
        if not self.piped:
            self.status.update(f"{stage}{where}…")
            self.status.start()
            return
        with self._lock:
            self._stage, self._message = f"{stage}{where}", ""
            self._started = self._printed = time.monotonic()
            self._last_message = 0.0  # a stage's first message is printed at once
        console.print(f"  → {stage}{where}: started", soft_wrap=True)
        self._running.set()

    def progress(self, message: str) -> None:
        if not self.piped:
            self.status.update(message)
            return
        with self._lock:
            self._message = message
            due = time.monotonic() - self._last_message >= PROGRESS_EVERY_SECONDS
            if due:
                self._last_message = time.monotonic()
        if due:
            self._line()

    def _line(self) -> None:
        with self._lock:
            now = time.monotonic()
            stage, message, elapsed, self._printed = (self._stage, self._message,
                                                     now - self._started, now)
        console.print(f"  … {stage}: {elapsed:.0f} s" + (f" ({escape(message)})" if message
                                                         else ""), soft_wrap=True)

    def _heartbeat(self) -> None:
        while True:
            self._running.wait()
            time.sleep(1.0)
            with self._lock:
                due = time.monotonic() - self._printed >= HEARTBEAT_SECONDS
            if due and self._running.is_set():
                self._line()

    def finished(self, result: Any, target: str) -> None:
        self._running.clear()
        self.status.stop()
        stage_line(result, target)


def stage_line(result: Any, target: str, copied_to: str = "") -> None:
    """One line per stage: run or cached, its time, and (for `trtflow stage`) where the
    artifact was copied."""
    where = escape(f" [{target}]") if target else ""
    dest = escape(f" -> {copied_to}") if copied_to else ""
    if result.cached:
        console.print(f"  [dim]○ {result.stage}{where}: cached ({result.key[:12]}; "
                      f"took {result.seconds:.2f} s when built){dest}[/]", soft_wrap=True)
    else:
        console.print(f"  [green]✓[/] {result.stage}{where}: {result.seconds:.2f} s "
                      f"({result.key[:12]}){dest}", soft_wrap=True)


def main() -> None:
    try:
        app()
    except TrtflowError as exc:  # raised outside a command body (e.g. in a callback)
        if debug_enabled():
            traceback.print_exception(exc)
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                      soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, or a failure no check caught: one line, not a traceback
        if debug_enabled():
            traceback.print_exception(exc)
        where = "" if debug_enabled() else " (run `trtflow --debug ...` for the traceback)"
        console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: "
                      f"{escape(' '.join(str(exc).split())[:500])}{where}", highlight=False,
                      soft_wrap=True)
        sys.exit(1)

