"""The compile flow: export -> cleanup -> [calibrate] -> build -> validate, per target."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

from prefect import flow

from tasks.stages import stage_task
from trtflow.context import Context
from trtflow.errors import ParamsError
from trtflow.params import load_params
from trtflow.plan import Node, plan
from trtflow.stage import StageResult
from trtflow.stages.validate import gate_error
from trtflow.stages.validation_report import ValidationReport


class Reporter(Protocol):
    """Display hook (the CLI's progress): told when a stage starts and when it is done."""

    def started(self, stage: str, target: str) -> None: ...
    def finished(self, result: StageResult, target: str) -> None: ...
    def progress(self, message: str) -> None: ...


_reporter: ContextVar[Reporter | None] = ContextVar("trtflow_reporter", default=None)


def set_reporter(report: Reporter | None) -> None:
    _reporter.set(report)


_flow_runs: ContextVar[list[str] | None] = ContextVar("trtflow_flow_runs", default=None)


def record_flow_runs(ids: list[str]) -> None:
    """Append the id of each compile flow run started from here to `ids` (the CLI marks
    them Cancelled on Ctrl-C)."""
    _flow_runs.set(ids)


def _run(ctx: Context, node: Node, upstream: list[StageResult], shown_as: str) -> StageResult:
    start = time.perf_counter()
    report = _reporter.get()
    if report:
        report.started(node.step.name, shown_as)
    state = stage_task(ctx, node.step.name, node.target or "", upstream, return_state=True)
    result: StageResult = state.result()  # raises the stage's own error on failure
    result.prefect_state = state.name
    result.cached = result.cached or state.name == "Cached"
    result.run_seconds = time.perf_counter() - start
    if report:
        report.finished(result, shown_as)
    return result


def select_targets(ctx: Context, names: list[str] | None) -> list[str]:
    if names:
        for n in names:
            ctx.target(n)
        return names
    cpu = [n for n, t in ctx.params.targets.items() if t.device == "cpu"]
    if not cpu:
        raise ParamsError("params.targets has no CPU target; pick one with --target")
    return cpu


def _run_name() -> str:
    """`compile digits [fp32,int8]`, not a random `daffy-bandicoot` (a subflow of a matrix
    or a triggered compile is found by its name in the Prefect UI)."""
    import yaml
    from prefect.runtime import flow_run

    parameters = flow_run.get_parameters()
    path = Path(str(parameters.get("params_path", "")))
    try:
        name = str(yaml.safe_load(path.read_text())["model"]["name"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        name = path.stem
    targets = parameters.get("targets") or []
    return f"compile {name}" + (f" [{','.join(targets)}]" if targets else "")


def _terminate(run_ids: list[str], status: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for run_id in run_ids:
        try:
            client.set_terminated(run_id, status)
        except Exception:  # the tracking server itself may be what failed
            pass


@contextmanager
def _failed_on_error(run_ids: dict[str, str]) -> Iterator[None]:
    """A compile that fails after its MLflow runs were logged (publishing, registering)
    marks them FAILED, or KILLED on Ctrl-C: a FINISHED run must mean a finished compile."""
    try:
        yield
    except KeyboardInterrupt:
        _terminate(list(run_ids.values()), "KILLED")
        raise
    except BaseException:
        _terminate(list(run_ids.values()), "FAILED")
        raise


@contextmanager
def _killed_on_interrupt(started_ms: int) -> Iterator[None]:
    """Ctrl-C while the runs are being logged: MLflow's own exit marks them FAILED; the
    compile run and its target runs say KILLED instead."""
    try:
        yield
    except KeyboardInterrupt:
        import mlflow

        last = mlflow.last_active_run()
        if last is not None and last.info.start_time >= started_ms:
            parent = last.data.tags.get("mlflow.parentRunId", last.info.run_id)
            children = mlflow.search_runs(
                experiment_ids=[last.info.experiment_id], output_format="list",
                filter_string=f"tags.mlflow.parentRunId = '{parent}'")
            _terminate([parent, *(r.info.run_id for r in children)], "KILLED")
        raise


@flow(name="compile", flow_run_name=_run_name, validate_parameters=False)
def compile_flow(params_path: str, root: str, targets: list[str] | None = None,
                 remeasure: bool = False) -> dict[str, Any]:
    start, started_ms = time.perf_counter(), int(time.time() * 1000)
    flow_runs = _flow_runs.get()
    if flow_runs is not None:
        from prefect.runtime import flow_run

        flow_runs.append(str(flow_run.id))
    params = load_params(params_path)
    ctx = Context.create(params, Path(root), remeasure=remeasure)
    reporter = _reporter.get()
    ctx.progress = reporter.progress if reporter else None
    names = select_targets(ctx, targets)
    if params.publish.bucket:  # a dead endpoint or missing bucket fails before any stage
        from trtflow.track.publish import check_bucket

        check_bucket(params.publish.bucket, params.publish.endpoint_url)
    stages = plan(params, names)
    done: dict[Node, StageResult] = {}
    for node in stages:
        done[node] = _run(ctx, node, [done[u] for u in node.upstream], stages.shown_as(node))
    model_stages = [done[n] for n in stages.model_nodes()]  # export, cleanup (a decoder: export)
    per_target = {name: [done[n] for n in stages.of_target(name)] for name in names}

    from trtflow.track.mlflow_log import log_compile, tracking_server_guard
    from trtflow.track.release import release

    wall = time.perf_counter() - start
    with tracking_server_guard("logging the compile"), _killed_on_interrupt(started_ms):
        run_ids = log_compile(params, params_path, Path(root), model_stages, per_target, wall)
    with tracking_server_guard("registering the engines"), _failed_on_error(run_ids):
        released = release(params, Path(root), per_target, run_ids, model_stages)
        import mlflow

        parent = mlflow.MlflowClient().get_run(run_ids["parent"])
    verdicts = {n: ValidationReport.of(stages[-1]) for n, stages in per_target.items()}
    failed = [n for n, report in verdicts.items() if not report.passed]
    summary = {"model": params.model.name, "run_ids": run_ids, "wall_seconds": wall,
               "stages": {"model": model_stages, **per_target}, "released": released,
               "experiment_id": parent.info.experiment_id,
               # a fully cached re-run links to the runs that built these engines
               "reused_runs": parent.info.start_time < started_ms}
    if failed:
        raise gate_error(verdicts[failed[0]], failed[0])
    return summary
