"""`trtflow run`: one compile through the Prefect flow (no server needed), logged to MLflow.

Registered on the `trtflow` app through the `trtflow.commands` entry point, so the
core package never imports `flows`; Prefect itself is imported only when the
command runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from trtflow.cli.app import (
    ROOT_OPTION,
    Progress,
    app,
    check_tracking_server,
    console,
    fail,
    no_empty_state_dir,
    out,
)
from trtflow.errors import TrtflowError


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
    root = root.resolve()
    try:
        with no_empty_state_dir(root):  # a run that fails its checks leaves no .trtflow/
            summary, start = _checked_compile(params, root, target, remeasure)
    except TrtflowError as exc:
        fail(exc)
        return
    print_summary(summary, time.perf_counter() - start)


def _checked_compile(params: Path, root: Path, target: list[str] | None,
                     remeasure: bool) -> tuple[dict[str, Any], float]:
    """Params, targets, the tracking server and the inputs checked, then the compile;
    (summary, when the compile started)."""
    from trtflow.params import load_params
    from trtflow.project import configure_environment

    try:
        loaded = load_params(params)  # bad params fail before the heavy imports below
    except TrtflowError as exc:
        if params.is_file():
            raise
        raise type(exc)(f"{exc} (relative to {Path.cwd()}: run trtflow from the project "
                        "directory, or give the params file's path; --root names the "
                        "project for the store, MLflow and data paths)") from None
    configure_environment(root)
    unknown = sorted(set(target or []) - set(loaded.targets))
    if unknown:
        from trtflow.errors import ParamsError

        raise ParamsError(f"target '{unknown[0]}' is not defined in params.targets of "
                          f"{params} (defined: {sorted(loaded.targets)})")
    check_tracking_server()
    from trtflow.context import Context, preflight

    chosen = target or [n for n, t in loaded.targets.items() if t.device == "cpu"]
    preflight(Context.create(loaded, root), chosen)  # fail fast, before Prefect
    console.print(f"[bold]trtflow run[/] {params}  (starting Prefect…)")
    from flows.databases import initialize_databases

    initialize_databases(root)  # once per project; safe for concurrent first runs
    start = time.perf_counter()
    return _compile(params, root, target, remeasure), start


def _compile(params: Path, root: Path, target: list[str] | None,
             remeasure: bool) -> dict[str, Any]:
    """The compile flow on an API server that Ctrl-C does not kill; Ctrl-C stops it within
    2 s with exit code 130, the flow run Cancelled and open MLflow runs KILLED."""
    from flows.compile import compile_flow, record_flow_runs, set_reporter
    from flows.interrupt import (
        Interrupt,
        cancel_flow_runs,
        ephemeral_server,
        exit_now,
        kill_open_mlflow_runs,
    )

    progress = Progress()
    set_reporter(progress)
    flow_runs: list[str] = []
    record_flow_runs(flow_runs)
    with ephemeral_server() as server:
        def clean_up() -> None:
            progress.status.stop()
            kill_open_mlflow_runs()  # the watcher's path: the main thread never unwound
            cancel_flow_runs(flow_runs)
            if server is not None:
                server.stop(timeout=0.5)
            console.print("[bold red]interrupted[/]: the flow run is marked Cancelled; "
                          "finished stages stay in the store (a re-run reuses them)")

        interrupt = Interrupt(clean_up)
        try:
            return compile_flow(str(params), str(root), target, remeasure)
        except KeyboardInterrupt:
            interrupt.finished()
            clean_up()
            exit_now()
            raise  # not reached
        finally:
            interrupt.finished()
            progress.status.stop()


def print_summary(summary: dict[str, Any], wall: float) -> None:
    from trtflow.stages.build_report import BuildReport
    from trtflow.stages.validation_report import ValidationReport

    table = Table(title=f"trtflow: {summary['model']}")
    for col in ("target", "accuracy", "FP32 ref. acc.", "agreement", "engine p50 bs1",
                "baseline p50 bs1", "speed-up bs1", "gates"):
        table.add_column(col)
    # a stage shared by targets (`calibrate [int8, best]`) ran, and is printed, once
    all_stages = list({(s.stage, s.key): s for stages in summary["stages"].values()
                       for s in stages}.values())
    this_run = sum(s.run_seconds for s in all_stages)
    when_built = sum(s.seconds for s in all_stages)
    for name, stages in summary["stages"].items():
        if name == "model":
            continue
        rep = ValidationReport.of(stages[-1])
        q = rep.quality
        pairs = rep.latency.pairs()
        # an engine this host cannot run: quality from its stand-in, no latency
        timing = ([f"{pairs[0][0].p50_ms:.3f} ms", f"{pairs[0][1].p50_ms:.3f} ms",
                   f"{pairs[0][1].p50_ms / pairs[0][0].p50_ms:.2f}x"] if pairs
                  else [rep.latency_note or "not measured", "-", "-"])
        if rep.decoder is not None:  # a decoder LLM: perplexity on the evaluation text
            d = rep.decoder
            quality = [f"ppl {d.perplexity:.3f} ({100 * d.perplexity_increase:+.2f} %)",
                       f"ppl {d.reference_perplexity:.3f}"]
        else:
            quality = [f"{q.accuracy:.4f}" if q.accuracy is not None else "n/a (no labels)",
                       f"{q.reference_accuracy:.4f}" if q.reference_accuracy is not None
                       else "n/a"]
        table.add_row(
            name,
            *quality,
            f"{q.agreement:.4f} ({q.metric})" + (" of the handed graph, ORT" if rep.engine_ran
                                                  else ""),
            *timing,
            "pass" if rep.passed else "FAIL",
        )
    out.print(table)
    runs = [f"{name} {summary['run_ids'][name]}" for name in summary["stages"]
            if name in summary["run_ids"]]
    if runs:  # whole ids, on their own line: `trtflow report` takes them as printed
        out.print("MLflow runs: " + ", ".join(runs), soft_wrap=True)
    n_cached = sum(s.cached for s in all_stages)
    out.print(f"stages run: {len(all_stages) - n_cached}, cached: {n_cached}; "
              f"stage time this run {this_run:.2f} s (the same stages took {when_built:.2f} s "
              f"when built: {100 * this_run / max(when_built, 1e-9):.1f}%); wall time {wall:.2f} s "
              f"(Prefect/MLflow start-up included)")
    if summary.get("reused_runs"):
        out.print(f"MLflow: nothing new to log; these engines are the runs of compile "
                  f"{summary['run_ids']['parent']} (its tag trtflow.cached_reruns counts re-runs)")
    else:
        out.print(f"MLflow: compile run {summary['run_ids']['parent']}")
    if "experiment_id" in summary:
        from trtflow.track.mlflow_log import view_path

        out.print(f"compare the engines: `make ui`, then http://127.0.0.1:5000/"
                  f"{view_path(summary['experiment_id'])}", soft_wrap=True)
    for name, stages in summary["stages"].items():
        built = next((BuildReport.of(s) for s in stages if s.stage == "build"), None)
        if built and built.selection:  # precision best: which candidate won, and why
            out.print(f"  {escape(name)}: selected {escape(built.selection.why)}")
    for name, info in (summary.get("released") or {}).items():
        print_release(name, info)


def print_release(target: str, info: dict[str, Any]) -> None:
    """One line per target: registered version, the promotion decision, the published copy."""
    from trtflow.track.release import ReleaseSummary

    summary, parts = ReleaseSummary.of(info), []
    if summary.registered:
        parts.append(f"registered {summary.registered}" if summary.created
                     else f"same engine as {summary.registered}")
        if summary.verdict:
            color = "green" if summary.verdict == "production" else "red"
            parts.append(f"[{color}]{summary.verdict}[/] ({escape(summary.reason)})")
    if summary.published:
        parts.append(f"published {summary.published}")
    if parts:
        out.print(f"  {escape(target)}: " + "; ".join(parts))
