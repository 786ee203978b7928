"""The `trtflow` command line.

Each command is thin: it validates inputs, calls the core or a flow, and turns
a `TrtflowError` into one paragraph on stderr with a non-zero exit code.
Prefect is imported only by commands that run a flow.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trtflow.errors import TrtflowError

app = typer.Typer(
    help="trtflow compiles a trained model into a validated, versioned inference engine:\n\n"
    "export -> cleanup -> calibrate -> build -> validate, cached per stage, logged to MLflow.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 150)

ROOT_OPTION = typer.Option("--root", help="project directory (store, MLflow, data paths)")
WAIT_OPTION = typer.Option(help="wait for the triggered compile(s) to finish")
TIMEOUT_OPTION = typer.Option(help="--wait gives up after this many seconds")


DEBUG_ENV = "TRTFLOW_DEBUG"


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="on an error, also print the Python traceback")] = False) -> None:
    """trtflow: compile a model into a validated, versioned engine."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def check_tracking_server(timeout: float = 10.0) -> None:
    """Fail now when MLFLOW_TRACKING_URI names a server that does not answer: MLflow's
    client would retry for minutes, and only after the whole compile."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    from trtflow.errors import TrackingError
    from trtflow.project import unreachable

    reason = unreachable(uri, timeout)
    if reason is not None:
        raise TrackingError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is "
                            f"unreachable: {reason}; nothing was compiled. Start the server, "
                            "or unset MLFLOW_TRACKING_URI to log to the project's sqlite "
                            "file")


def _fail(exc: TrtflowError) -> None:
    if _debug():
        traceback.print_exception(exc)
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


class _Progress:
    """A spinner while a stage runs, one line when it is done (stderr)."""

    def __init__(self) -> None:
        self.status = console.status("")

    def started(self, stage: str, target: str) -> None:
        where = escape(f" [{target}]") if target else ""
        self.status.update(f"{stage}{where}…")
        self.status.start()

    def progress(self, message: str) -> None:
        self.status.update(message)

    def finished(self, result: Any, target: str) -> None:
        self.status.stop()
        _stage_line(result, target)


def _stage_line(result: Any, target: str) -> None:
    where = escape(f" [{target}]") if target else ""
    if result.cached:
        console.print(f"  [dim]○ {result.stage}{where}: cached ({result.key[:12]}; "
                      f"took {result.seconds:.2f} s when built)[/]")
    else:
        console.print(f"  [green]✓[/] {result.stage}{where}: {result.seconds:.2f} s")


@app.command()
def run(
    params: Annotated[Path, typer.Argument(help="params YAML, e.g. params/digits.yaml")],
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="target name from params.targets (repeatable); "
        "default: every CPU target")] = None,
    remeasure: Annotated[bool, typer.Option(help="re-measure latency even if cached")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Compile one model through the Prefect flow (no server needed) and log it to MLflow."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        from trtflow.params import load_params

        loaded = load_params(params)  # bad params fail before the heavy imports below
        unknown = sorted(set(target or []) - set(loaded.targets))
        if unknown:
            from trtflow.errors import ParamsError

            raise ParamsError(f"target '{unknown[0]}' is not defined in params.targets of "
                              f"{params} (defined: {sorted(loaded.targets)})")
        check_tracking_server()
        from trtflow.pipeline import Context, preflight

        preflight(Context.create(loaded, root))  # fail fast, before Prefect
        console.print(f"[bold]trtflow run[/] {params}  (starting Prefect…)")
        from trtflow.project import initialize_databases

        initialize_databases(root)  # once per project; safe for concurrent first runs
        start = time.perf_counter()
        from flows.compile import compile_flow, set_reporter

        progress = _Progress()
        set_reporter(progress)
        try:
            summary = compile_flow(str(params), str(root), target, remeasure)
        finally:
            progress.status.stop()
    except TrtflowError as exc:
        _fail(exc)
        return
    _print_summary(summary, time.perf_counter() - start)


def _print_summary(summary: dict[str, Any], wall: float) -> None:
    table = Table(title=f"trtflow: {summary['model']}")
    for col in ("target", "accuracy", "FP32 ref. acc.", "agreement", "engine p50 bs1",
                "baseline p50 bs1", "speed-up bs1", "gates", "MLflow run"):
        table.add_column(col)
    all_stages = [s for stages in summary["stages"].values() for s in stages]
    this_run = sum(s.run_seconds for s in all_stages)
    when_built = sum(s.seconds for s in all_stages)
    for name, stages in summary["stages"].items():
        if name == "model":
            continue
        rep = stages[-1].report
        q = rep["quality"]
        eng, base = rep["latency"]["engine"][0], rep["latency"]["baseline"][0]
        table.add_row(
            name,
            f"{q['accuracy']:.4f}" if "accuracy" in q else "n/a (no labels)",
            f"{q['reference_accuracy']:.4f}" if "reference_accuracy" in q else "n/a",
            f"{q['agreement']:.4f} ({q['metric']})",
            f"{eng['p50_ms']:.3f} ms", f"{base['p50_ms']:.3f} ms",
            f"{base['p50_ms'] / eng['p50_ms']:.2f}x",
            "pass" if rep["gates"]["passed"] else "FAIL",
            summary["run_ids"].get(name, ""),
        )
    out.print(table)
    n_cached = sum(s.cached for s in all_stages)
    out.print(f"stages run: {len(all_stages) - n_cached}, cached: {n_cached}; "
              f"stage time this run {this_run:.2f} s (the same stages took {when_built:.2f} s "
              f"when built: {100 * this_run / max(when_built, 1e-9):.1f}%); wall time {wall:.2f} s "
              f"(Prefect/MLflow start-up included); MLflow parent run "
              f"{summary['run_ids']['parent']}")
    for name, info in (summary.get("released") or {}).items():
        _print_release(name, info)


def _print_release(target: str, info: dict[str, Any]) -> None:
    """One line per target: registered version, the promotion decision, the published copy."""
    parts = []
    if info.get("registered"):
        reg = f"{info['registered']} v{info['version']}"
        parts.append(f"registered {reg}" if info["created"] else f"same engine as {reg}")
        decision = info.get("decision")
        if decision is not None:
            verdict = "[green]production[/]" if decision["promoted"] else "[red]not promoted[/]"
            parts.append(f"{verdict} ({escape(decision['reason'])})")
    if info.get("published"):
        parts.append(f"published {info['published']}")
    if parts:
        out.print(f"  {escape(target)}: " + "; ".join(parts))


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="export | cleanup | calibrate | build | validate")],
    params: Annotated[Path, typer.Option("--params", "-p", help="params YAML")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="target (build, "
                                               "calibrate, validate)")] = None,
    output: Annotated[Path | None, typer.Option(
        help="copy the artifact here (DVC outs); default build/<model>/<stage>[-target]")] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Run one stage outside Prefect (what `dvc repro` calls), with the same cache keys."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        from trtflow.stage_cli import run_single_stage

        result = run_single_stage(name, params, target, output, root)
    except TrtflowError as exc:
        _fail(exc)
        return
    _stage_line(result, target or "")
    out.print(json.dumps({"stage": result.stage, "key": result.key, "digest": result.digest,
                          "path": result.path}))


BUCKET = typer.Option("--bucket", help="S3 bucket")
PREFIX = typer.Option("--prefix", help="key prefix; objects go to PREFIX/MODEL/VERSION/")
ENDPOINT = typer.Option("--endpoint-url", help="S3-compatible endpoint; default: the AWS "
                        "environment/config (AWS_ENDPOINT_URL_S3)")


@app.command()
def publish(
    params: Annotated[Path, typer.Argument(help="params YAML of the compiled model")],
    target: Annotated[str, typer.Option("--target", "-t", help="which target's engine")],
    bucket: Annotated[str, BUCKET],
    version: Annotated[str | None, typer.Option(
        help="version label; default <target>-<engine key[:12]> (content-addressed)")] = None,
    prefix: Annotated[str, PREFIX] = "trtflow",
    endpoint_url: Annotated[str | None, ENDPOINT] = None,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Upload a built engine and its manifest (sha256 of every file, params, lineage) to S3."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        from trtflow.params import load_params
        from trtflow.stage_cli import resolve_stages
        from trtflow.track.release import publish_engine

        stages = resolve_stages("validate", params, target, root)
        result = publish_engine(load_params(params), root, target, stages, bucket, prefix,
                                endpoint_url, version)
    except TrtflowError as exc:
        _fail(exc)
        return
    state = "already published, verified" if result.already_published else "published"
    out.print(f"{state}: {result.uri}")


@app.command()
def fetch(
    model: Annotated[str, typer.Argument(help="model name (params model.name)")],
    version: Annotated[str, typer.Argument(help="published version")],
    dest: Annotated[Path, typer.Argument(help="directory to create")],
    bucket: Annotated[str, BUCKET],
    prefix: Annotated[str, PREFIX] = "trtflow",
    endpoint_url: Annotated[str | None, ENDPOINT] = None,
) -> None:
    """Download a published engine, verifying every file's sha256 against its manifest."""
    try:
        from trtflow.track.publish import fetch as fetch_engine
        from trtflow.track.publish import s3_client

        result = fetch_engine(bucket, prefix, model, version, dest,
                              client=s3_client(endpoint_url) if endpoint_url else None)
    except TrtflowError as exc:
        _fail(exc)
        return
    out.print(f"fetched and verified {len(result.manifest['files'])} files: {result.dest}")


@app.command()
def prepare(root: Annotated[Path, ROOT_OPTION] = Path(".")) -> None:
    """Write the demo data sets under data/ (deterministic: digits, sentences, resnet18)."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    from trtflow.sources.builtin import write_demo_data

    for path in write_demo_data(root.resolve()):
        console.print(f"  wrote {path.relative_to(root.resolve())}")


@app.command()
def inspect(
    source: Annotated[str, typer.Argument(help="model.onnx | model.pt2 | pkg.mod:factory | "
                                          "models:/NAME/VERSION | digits|minilm|resnet18")],
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Print a model source's inputs, outputs, op histogram and parameter count."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    try:
        from trtflow.inspect_source import describe

        info = describe(source, root.resolve())
    except TrtflowError as exc:
        _fail(exc)
        return
    out.print(f"[bold]{info['name']}[/]  ({next(iter(info['source']))} source), "
              f"{info['parameters']:,} parameters")
    table = Table("input", "dtype", "shape")
    for spec in info.get("inputs") or []:
        table.add_row(spec["name"], spec["dtype"], str(spec["shape"]))
    out.print(table if info.get("inputs") else f"inputs: {info.get('inputs_note')}")
    out.print(f"outputs: {info.get('outputs')}")
    out.print("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))


@app.command()
def init(
    source: Annotated[str, typer.Argument(help="same forms as `trtflow inspect`")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="params file to "
                                                "write; default params/<name>.yaml")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Write a params skeleton for your own model, to edit and then `trtflow run`."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    try:
        from trtflow.errors import ParamsError
        from trtflow.inspect_source import describe, params_skeleton

        info = describe(source, root.resolve())
        path = output or root / "params" / f"{info['name']}.yaml"
        if path.exists() and not force:
            raise ParamsError(f"{path} exists; pass --force to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        from trtflow.atomic import atomic_file

        with atomic_file(path, "w") as f:
            f.write(params_skeleton(info))
    except TrtflowError as exc:
        _fail(exc)
        return
    out.print(f"wrote {path}: edit data paths and targets, then `trtflow run {path}`")


# Command groups kept in their own modules; each registers on `app` when imported.
# One line per module, so parallel work on different command groups does not collide.
from trtflow import cli_ops  # noqa: E402,F401,I001  (serve, trigger, matrix)
from trtflow import cli_registry  # noqa: E402,F401  (promote, history)
from trtflow import cli_report  # noqa: E402,F401  (report)
from trtflow import cli_store  # noqa: E402,F401  (store verify, store gc)
from trtflow import cli_data  # noqa: E402,F401  (data push)


def main() -> None:
    try:
        app()
    except TrtflowError as exc:  # raised outside a command body (e.g. in a callback)
        if _debug():
            traceback.print_exception(exc)
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                      soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug, or a failure no check caught: one line, not a traceback
        if _debug():
            traceback.print_exception(exc)
        where = "" if _debug() else " (run `trtflow --debug ...` for the traceback)"
        console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: "
                      f"{escape(' '.join(str(exc).split())[:500])}{where}", highlight=False,
                      soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # `python -m trtflow.cli`: run the imported module's app, the one
    from trtflow.cli import main as _main  # the command-group modules registered on

    _main()
