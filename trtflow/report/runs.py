"""What a report shows, read back from MLflow (and the store): runs, targets, metrics."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtflow.errors import StoreError, TrtflowError
from trtflow.stages.build_report import BuildReport

_LATENCY_METRIC = re.compile(
    r"^(engine|baseline)\.bs(\d+)\.(p50_ms|p95_ms|p99_ms|throughput_per_s|noise_pct)$")
QUANTILES = ("p50_ms", "p95_ms", "p99_ms")
METHODS = ("entropy", "percentile", "mse", "max")


class ReportError(TrtflowError):
    """A report was asked for a run that MLflow does not have, or that trtflow did not log."""


@dataclass
class TargetRun:
    """One nested target run (one engine) and what the report shows about it."""

    run_id: str
    model: str
    target: str
    precision: str
    backend: str
    method: str | None  # calibration method chosen; None for float engines
    method_configured: str | None  # `calibration.method` of the compile (e.g. auto)
    parent_id: str | None
    metrics: dict[str, float]
    tags: dict[str, str]
    latency: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    scales: dict[str, Any] | None = None
    histograms: Path | None = None
    histograms_note: str = ""
    thresholds_png: bytes | None = None  # the plot the run logged, when histograms are missing
    method_scores: dict[str, dict[str, float]] | None = None
    engine_ops: dict[str, int] | None = None
    promotion: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        method = f" {self.method}" if self.method else ""
        return f"{self.model}/{self.target}{method} ({self.run_id[:8]})"

    @property
    def short(self) -> str:
        return f"{self.target}\n{self.method or self.precision}\n{self.run_id[:6]}"


@dataclass
class CompileRun:
    """A parent (compile) run: its cleanup report is shared by its targets."""

    run_id: str
    model: str
    params: dict[str, str]
    cleanup_key: str
    cleanup: dict[str, Any] | None = None


@dataclass
class ReportData:
    compiles: dict[str, CompileRun]
    targets: list[TargetRun]
    tracking_uri: str


# ---------------------------------------------------------------- reading MLflow


def _client() -> Any:
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    return mlflow.MlflowClient()


RUN_ID_LENGTH = 32  # MLflow's run ids: 32 hex digits
MIN_PREFIX = 1  # a short one is fine: more than one match lists them


def _get_run(client: Any, run_id: str, tracking_uri: str) -> Any:
    """The run with this id, or the one trtflow run whose id starts with it (tables print
    ids cut short): an unknown or ambiguous prefix says so, listing the candidates."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if MIN_PREFIX <= len(run_id) < RUN_ID_LENGTH and re.fullmatch(r"[0-9a-f]+", run_id):
            run = _by_prefix(client, run_id, tracking_uri)
        else:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ReportError(f"run id {run_id!r}: no such MLflow run in {tracking_uri} "
                              f"({first}); list runs with the MLflow UI (`make ui`)") from None
    if "trtflow.model" not in run.data.tags:
        raise ReportError(f"run id {run_id!r} is not a trtflow compile run (it has no "
                          "trtflow.model tag); pass a compile run or one of its target runs")
    return run


def _by_prefix(client: Any, prefix: str, tracking_uri: str) -> Any:
    """The one trtflow run (tag trtflow.model) whose id starts with `prefix`."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found: list[Any] = []
    token = None
    while experiments:
        page = client.search_runs(experiments, "tags.`trtflow.model` LIKE '%'",
                                  run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        found += [r for r in page if r.info.run_id.startswith(prefix)]
        token = page.token
        if not token:
            break
    if len(found) == 1:
        return found[0]
    if not found:
        raise ReportError(f"run id {prefix!r}: no trtflow run in {tracking_uri} has this id "
                          "or an id starting with it; `trtflow run` prints the ids of its "
                          "runs (MLflow runs: ...), the MLflow UI (`make ui`) lists them")
    shown = ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in found[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    raise ReportError(f"run id prefix {prefix!r} matches {len(found)} runs in {tracking_uri}: "
                      f"{shown}{more}; give more of the id")


def resolve_runs(client: Any, run_ids: Iterable[str], tracking_uri: str
                 ) -> tuple[dict[str, Any], list[Any]]:
    """Parent runs (by id) and target runs, in the order given; a parent brings its targets."""
    parents: dict[str, Any] = {}
    targets: dict[str, Any] = {}
    for run_id in run_ids:
        run = _get_run(client, run_id.strip(), tracking_uri)
        if "trtflow.target" in run.data.tags:
            targets.setdefault(run.info.run_id, run)
            parent_id = run.data.tags.get("mlflow.parentRunId")
            if parent_id and parent_id not in parents:
                parents[parent_id] = _get_run(client, parent_id, tracking_uri)
            continue
        parents[run.info.run_id] = run
        children = client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'",
            order_by=["attributes.start_time ASC"])
        if not children:
            raise ReportError(f"run id {run_id!r} is a compile run without target runs "
                              "(did the compile fail before logging?)")
        for child in children:
            targets.setdefault(child.info.run_id, child)
    return parents, list(targets.values())


def _download(run_id: str | None, path: str, dst: Path, artifact_uri: str | None = None
              ) -> Path | None:
    """One artifact, or None when it was not logged."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        if artifact_uri:
            local = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri,
                                                        dst_path=str(dst))
        else:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                        dst_path=str(dst))
    except (MlflowException, OSError):
        return None
    found = Path(local)
    return found if found.is_file() else None


def _read_json(path: Path | None) -> Any:
    return json.loads(path.read_text()) if path is not None else None


def _latency(metrics: dict[str, float]) -> dict[str, dict[int, dict[str, float]]]:
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name, value in metrics.items():
        match = _LATENCY_METRIC.match(name)
        if match:
            label, bs, q = match.groups()
            out.setdefault(label, {}).setdefault(int(bs), {})[q] = value
    return out


def _engine_ops(client: Any, run: Any, store: Any, tmp: Path) -> dict[str, int] | None:
    """The build report's engine ops: from the logged engine, else the project's store."""
    tags = run.data.tags
    key = tags.get("trtflow.stage.build.key", "")
    found = None
    model_uri = tags.get("trtflow.engine_model_uri", "")
    if model_uri.startswith("models:/") and key:
        try:
            logged = client.get_logged_model(model_uri.removeprefix("models:/"))
            found = _download(None, "", tmp, f"{logged.artifact_location.rstrip('/')}/"
                              f"artifacts/{key}/artifact.json")
        except Exception:  # an older MLflow or a deleted model: try the other places
            found = None
    found = found or _download(run.info.run_id, "engine/artifact.json", tmp)
    meta = _read_json(found)
    if meta is None and key and store is not None:
        artifact = store.get("build", key)
        meta = artifact.meta() if artifact else None
    if not meta or "report" not in meta:
        return None
    try:
        return BuildReport.from_dict(meta["report"]).engine_ops
    except StoreError:  # not a build report trtflow wrote: the page shows no ops
        return None


def _calibration(target: TargetRun, run: Any, store: Any, tmp: Path) -> None:
    from trtflow.quant.artifact import Calibration
    from trtflow.track.mlflow_log import LOGGED_CALIBRATION

    # the run's artifact folder holds the calibrate directory's files under their names
    logged_dir = Calibration(Path(LOGGED_CALIBRATION))

    def download(path: Path) -> Path | None:
        return _download(run.info.run_id, path.as_posix(), tmp)

    target.scales = _read_json(download(logged_dir.scales_file))
    accuracy = _read_json(download(logged_dir.accuracy_file))
    target.method_scores = (accuracy or {}).get("method_scores")
    logged = download(logged_dir.histograms_file)
    key = run.data.tags.get("trtflow.stage.calibrate.key", "")
    if logged is not None:
        target.histograms = logged
        return
    artifact = store.get("calibrate", key) if key and store is not None else None
    stored = Calibration(artifact.path) if artifact is not None else None
    if stored is not None and stored.histograms_file.is_file():
        target.histograms = stored.histograms_file
        target.histograms_note = ("histograms read from the project's store by the calibrate "
                                  "key: MLflow holds only the thresholds plot")
    else:
        target.histograms_note = ("the histograms are not logged to MLflow and calibrate key "
                                  f"{key[:12] or '?'} is not in this project's store (run the "
                                  "report from the project that compiled it, or pass --root); "
                                  "shown: the thresholds plot the run logged")
        logged_plot = download(Path(LOGGED_CALIBRATION) / "thresholds.png")
        target.thresholds_png = logged_plot.read_bytes() if logged_plot else None


def _promotion(client: Any, run: Any) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    tags = run.data.tags
    registered = tags.get("trtflow.registered_version")
    if not registered:
        if tags.get("trtflow.gates_passed") == "false":
            why = f"validation gates failed ({tags.get('trtflow.gate_failure', '?')})"
        else:
            why = "registry disabled, or the run predates registration"
        return {"registered": None, "state": "not registered", "reason": why, "checks": []}
    name, _, version = registered.rpartition("/")
    try:
        mv = client.get_model_version(name, version)
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        return {"registered": registered, "state": "unknown",
                "reason": f"model version not readable: {str(exc).splitlines()[0]}",
                "checks": []}
    try:
        checks = json.loads(mv.tags.get("trtflow.promotion.checks", "[]"))
    except json.JSONDecodeError:
        checks = []
    return {"registered": registered, "state": mv.tags.get("trtflow.promotion", "?"),
            "reason": mv.tags.get("trtflow.promotion.reason", ""), "checks": checks,
            "aliases": sorted(a for a, v in aliases.items() if str(v) == str(version)),
            "all_aliases": {a: str(v) for a, v in aliases.items()}}


def collect(run_ids: list[str], root: Path, tmp: Path) -> ReportData:
    """Everything the page shows, read from MLflow (and the store under `root`)."""
    from trtflow.store import ArtifactStore

    if not run_ids:
        raise ReportError("no run ids given: pass one or more compile or target run ids")
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    client = _client()
    parents, runs = resolve_runs(client, run_ids, tracking_uri)
    store_dir = root / ".trtflow" / "store"
    store = ArtifactStore(store_dir, hold_lock=False) if store_dir.is_dir() else None
    compiles = {}
    for pid, prun in parents.items():
        compiles[pid] = CompileRun(pid, prun.data.tags["trtflow.model"], dict(prun.data.params),
                                   prun.data.tags.get("trtflow.stage.cleanup.key", pid),
                                   _read_json(_download(pid, "cleanup_report.json", tmp)))
    targets = []
    for i, run in enumerate(runs):
        params, tags = run.data.params, run.data.tags
        parent_id = tags.get("mlflow.parentRunId")
        parent = compiles.get(parent_id or "")
        target = TargetRun(
            run_id=run.info.run_id, model=tags["trtflow.model"], target=tags["trtflow.target"],
            precision=params.get("target.precision", "?"),
            backend=params.get("target.backend", "?"),
            method=params.get("calibration.method_chosen"),
            method_configured=parent.params.get("calibration.method") if parent else None,
            parent_id=parent_id, metrics=dict(run.data.metrics), tags=dict(tags))
        target.latency = _latency(target.metrics)
        work = tmp / f"run{i}"
        work.mkdir()
        if target.method:
            _calibration(target, run, store, work)
        target.engine_ops = _engine_ops(client, run, store, work)
        target.promotion = _promotion(client, run)
        targets.append(target)
    return ReportData(compiles, targets, tracking_uri)

