"""`trtflow report`: one self-contained HTML page about a set of compile runs.

It shows what MLflow's compare view cannot: latency against batch size per
precision (engine and baseline), accuracy against calibration method, each
tensor's histogram with every method's threshold, the fusion report (cleanup
passes and the ops of each engine) and the promotion decision of the registry.

Everything is read back from MLflow (run metrics, params and tags, artifacts,
model-version tags), so the page describes what was logged, not what a local
re-run would give. Two things MLflow does not hold are taken from the project's
artifact store by the stage key that the run records: the raw histograms
(`histograms.npz`; the run logs only a thresholds plot) and, when a run has no
logged engine, the build report. Images are PNGs inlined as base64 (matplotlib
Agg); the page has no scripts and no external links, so it can be mailed or
attached to a ticket as one file.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtflow.atomic import atomic_file
from trtflow.errors import TrtflowError
from trtflow.quant.plots import METHOD_COLORS, plot_thresholds, sensitive_tensors

_LATENCY_METRIC = re.compile(
    r"^(engine|baseline)\.bs(\d+)\.(p50_ms|p95_ms|p99_ms|throughput_per_s)$")
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


def _get_run(client: Any, run_id: str, tracking_uri: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(f"run id {run_id!r}: no such MLflow run in {tracking_uri} "
                          f"({first}); list runs with the MLflow UI (`make ui`)") from None
    if "trtflow.model" not in run.data.tags:
        raise ReportError(f"run id {run_id!r} is not a trtflow compile run (it has no "
                          "trtflow.model tag); pass a compile run or one of its target runs")
    return run


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
    return (meta or {}).get("report", {}).get("engine_ops")


def _calibration(target: TargetRun, run: Any, store: Any, tmp: Path) -> None:
    target.scales = _read_json(_download(run.info.run_id, "calibration/scales.json", tmp))
    accuracy = _read_json(_download(run.info.run_id, "calibration/accuracy.json", tmp))
    target.method_scores = (accuracy or {}).get("method_scores")
    logged = _download(run.info.run_id, "calibration/histograms.npz", tmp)
    key = run.data.tags.get("trtflow.stage.calibrate.key", "")
    if logged is not None:
        target.histograms = logged
        return
    artifact = store.get("calibrate", key) if key and store is not None else None
    if artifact is not None and artifact.file("histograms.npz").is_file():
        target.histograms = artifact.file("histograms.npz")
        target.histograms_note = ("histograms read from the project's store by the calibrate "
                                  "key: MLflow holds only the thresholds plot")
    else:
        target.histograms_note = ("histograms.npz is not logged to MLflow and calibrate key "
                                  f"{key[:12] or '?'} is not in this project's store (run the "
                                  "report from the project that compiled it, or pass --root)")


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


# ---------------------------------------------------------------- figures


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_figure(targets: list[TargetRun]) -> str | None:
    """p50/p95/p99 against batch size: one line per engine, its baseline dashed."""
    measured = [t for t in targets if t.latency.get("engine")]
    if not measured:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(QUANTILES), figsize=(13, 4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, q in zip(axes[0], QUANTILES, strict=True):
        for i, t in enumerate(measured):
            color = colors[i % len(colors)]
            for label, style in (("engine", "-o"), ("baseline", "--x")):
                rows = t.latency.get(label, {})
                sizes = sorted(bs for bs in rows if q in rows[bs])
                if not sizes:
                    continue
                name = f"{t.precision} {t.label}" if label == "engine" else \
                    f"baseline of {t.target} ({t.run_id[:8]})"
                ax.plot(sizes, [rows[bs][q] for bs in sizes], style, color=color,
                        alpha=1.0 if label == "engine" else 0.5, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(f"{q.removesuffix('_ms')} latency (ms)")
        ax.set_title(q.removesuffix("_ms"))
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2,
               fontsize=8, frameon=False)
    return _png(fig)


def _quality(t: TargetRun) -> tuple[str, float | None, float | None]:
    """(metric name, engine value, FP32 reference value)."""
    if "accuracy" in t.metrics:
        return "accuracy", t.metrics["accuracy"], t.metrics.get("reference_accuracy")
    return "agreement", t.metrics.get("agreement"), 1.0


def accuracy_figure(targets: list[TargetRun]) -> str | None:
    """Quality per engine, grouped by calibration method; selection-split scores of `auto`."""
    rows = [(t, metric, value, ref) for t in targets
            for metric, value, ref in [_quality(t)] if value is not None]
    if not rows:
        return None
    scored = [t for t in targets if t.method_scores]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2 if scored else 1, figsize=(13 if scored else 8, 4),
                             squeeze=False)
    ax = axes[0][0]
    rows.sort(key=lambda r: (r[0].method or "", r[0].target))
    values = [float(r[2] or 0.0) for r in rows]
    colors = ["tab:gray" if r[0].method is None else
              METHOD_COLORS.get(r[0].method, "tab:purple") for r in rows]
    bars = ax.bar(range(len(rows)), values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.4f}", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=8)
    refs = {float(r[3]) for r in rows if r[3] is not None}
    for ref in refs:
        ax.axhline(ref, color="k", linestyle=":", linewidth=1, label=f"FP32 reference {ref:.4f}")
    low = min(values + list(refs))
    ax.set_ylim(max(0.0, low - max(0.02, (1 - low) * 0.5)), min(1.0, max(values + list(refs))) +
                0.01)
    ax.set_xticks(range(len(rows)), [f"{r[0].method or 'no calibration'}\n{r[0].target}\n"
                                     f"{r[0].run_id[:6]}" for r in rows], fontsize=8)
    ax.set_ylabel(rows[0][1])
    ax.set_title("test-split quality by calibration method")
    if refs:
        ax.legend(fontsize=8, loc="lower right")
    if scored:
        ax2 = axes[0][1]
        width = 0.8 / len(scored)
        methods = sorted({m for t in scored for m in (t.method_scores or {})})
        for i, t in enumerate(scored):
            scores = t.method_scores or {}
            ax2.bar([j + i * width for j in range(len(methods))],
                    [scores.get(m, {}).get("agreement", 0.0) for m in methods], width,
                    label=t.label)
        ax2.set_xticks([j + 0.4 - width / 2 for j in range(len(methods))], methods)
        ax2.set_ylabel("agreement with FP32")
        ax2.set_title("method: auto — selection-split scores")
        ax2.legend(fontsize=7)
    return _png(fig)


def calibration_groups(targets: list[TargetRun]) -> list[list[TargetRun]]:
    """INT8 engines grouped by identical histograms (same model and calibration data):
    one plot per group shows every method's threshold, whichever method each run used."""
    import hashlib

    groups: dict[str, list[TargetRun]] = {}
    for t in targets:
        if not t.method:
            continue
        digest = (hashlib.sha256(t.histograms.read_bytes()).hexdigest()
                  if t.histograms is not None else f"none-{t.run_id}")
        groups.setdefault(digest, []).append(t)
    return list(groups.values())


def threshold_figure(group: list[TargetRun], tmp: Path) -> str | None:
    """The tensors where the methods disagree most, with each method's threshold."""
    first = group[0]
    if first.histograms is None or first.scales is None:
        return None
    scales = tmp / f"scales-{first.run_id}.json"
    scales.write_text(json.dumps(first.scales))
    tensors = sensitive_tensors(tmp / "absent-accuracy.json", scales)
    png = plot_thresholds(first.histograms, scales, tensors, tmp / f"thr-{first.run_id}.png")
    return base64.b64encode(png.read_bytes()).decode("ascii")


# ---------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">'


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _summary(targets: list[TargetRun]) -> str:
    """One row per engine: the columns MLflow's compare view shows, plus the decision."""
    rows = []
    for t in targets:
        metric, quality, ref = _quality(t)
        bs = min(t.latency.get("engine", {}) or [0])
        lat = t.latency.get("engine", {}).get(bs, {})
        speedup = t.metrics.get(f"speedup.bs{bs}")
        size = t.metrics.get("engine_bytes")
        method = t.method or "–"
        if t.method and t.method_configured == "auto":
            method = f"auto → {t.method}"
        promo = t.promotion or {}
        rows.append([t.run_id[:12], f"{t.model}/{t.target}", f"{t.precision} {t.backend}",
                     method, "–" if quality is None else f"{quality:.4f}",
                     "–" if ref is None else f"{ref:.4f}", f"{bs}",
                     " / ".join(_ms(lat.get(q)) for q in QUANTILES),
                     "–" if speedup is None else f"{speedup:.2f}x",
                     "–" if size is None else f"{int(size)}",
                     t.tags.get("trtflow.gates_passed", "?"),
                     f"{promo.get('registered') or '–'}: {promo.get('state', '–')}"])
    metric = _quality(targets[0])[0] if targets else "quality"
    return _table(["run", "model/target", "precision", "calibration", metric,
                   "FP32 reference", "batch", "p50 / p95 / p99 ms", "speed-up p50",
                   "engine bytes", "gates passed", "registry"], rows, "wide")


def _latency_table(targets: list[TargetRun]) -> str:
    rows = []
    for t in targets:
        for label in ("engine", "baseline"):
            for bs, qs in sorted(t.latency.get(label, {}).items()):
                rows.append([t.label, label, bs, *(_ms(qs.get(q)) for q in QUANTILES),
                             f"{qs.get('throughput_per_s', 0):.1f}",
                             f"{t.metrics[f'speedup.bs{bs}']:.2f}x"
                             if label == "engine" and f"speedup.bs{bs}" in t.metrics else ""])
    return _table(["engine", "measured", "batch size", "p50 ms", "p95 ms", "p99 ms",
                   "throughput /s", "speed-up p50"], rows)


def _scales_table(group: list[TargetRun]) -> str:
    """amax per method (shared histograms), then the amax each run used."""
    names = sorted(set().union(*((t.scales or {}).keys() for t in group)))
    rows = []
    for name in names:
        by: dict[str, float] = next(((t.scales or {})[name].get("amax_by_method", {}) for t in group
                   if name in (t.scales or {})), {})
        used = []
        for t in group:
            s = (t.scales or {}).get(name)
            used.append(f"{s.get('amax', 0):.5g} ({s.get('method', '?')})" if s else "–")
        rows.append([name, *(f"{by[m]:.5g}" if m in by else "–" for m in METHODS), *used])
    return _table(["tensor", *(f"amax {m}" for m in METHODS),
                   *(f"used by {t.target} {t.run_id[:8]}" for t in group)], rows)


def _fusion(data: ReportData) -> str:
    """Per cleaned graph (compiles with the same cleanup key share one): the cleanup's
    fusions and passes, then op counts exported -> cleaned -> each engine."""
    by_key: dict[str, list[CompileRun]] = {}
    for c in data.compiles.values():
        by_key.setdefault(c.cleanup_key, []).append(c)
    parts = []
    for compiles in by_key.values():
        ids = {c.run_id for c in compiles}
        targets = [t for t in data.targets if t.parent_id in ids]
        rep = next((c.cleanup for c in compiles if c.cleanup), None)
        parts.append(f"<h3>{_e(compiles[0].model)}: compile run(s) "
                     f"{_e(', '.join(c.run_id[:12] for c in compiles))}</h3>")
        if rep is None:
            parts.append("<p class=note>cleanup_report.json was not logged on this run.</p>")
        else:
            parts.append(f"<p>cleanup: {rep.get('nodes_before')} → {rep.get('nodes_after')} "
                         "nodes</p>")
            parts.append(_table(["fusion", "count"], sorted(
                [k, v] for k, v in (rep.get("fusion_counts") or {}).items()) or [["none", 0]]))
            parts.append(_table(["pass", "nodes before", "nodes after"], [
                [p.get("pass"), p.get("nodes_before"), p.get("nodes_after")]
                for p in rep.get("passes", [])]))
        ops_before = (rep or {}).get("ops_before", {})
        ops_after = (rep or {}).get("ops_after", {})
        names = sorted(set(ops_before) | set(ops_after) |
                       {op for t in targets for op in (t.engine_ops or {})})
        header = ["op", "exported", "after cleanup",
                  *(f"engine {t.target} {t.method or ''} {t.run_id[:6]}" for t in targets)]
        rows = [[op, ops_before.get(op, ""), ops_after.get(op, ""),
                 *((t.engine_ops or {}).get(op, "") for t in targets)] for op in names]
        parts.append(_table(header, rows))
        missing = [t.label for t in targets if t.engine_ops is None]
        if missing:
            parts.append(f"<p class=note>no build report found for {_e(', '.join(missing))}"
                         "</p>")
    return "\n".join(parts)


def _promotions(targets: list[TargetRun]) -> str:
    parts = []
    for t in targets:
        p = t.promotion or {}
        head = f"{t.label}: {p.get('state', '?')}"
        if p.get("registered"):
            aliases = ", ".join(p.get("aliases", [])) or "no alias"
            head += f" — {p['registered']} ({aliases})"
        parts.append(f"<h3 class=promo-{_e(p.get('state', ''))}>{_e(head)}</h3>")
        parts.append(f"<p>reason: {_e(p.get('reason', ''))}</p>")
        if p.get("checks"):
            parts.append(_table(["check", "passed", "detail"], [
                [c.get("check"), {True: "yes", False: "no", None: "n/a"}.get(c.get("passed")),
                 c.get("detail")] for c in p["checks"]]))
        if p.get("all_aliases"):
            parts.append("<p>registry aliases now: " + _e(", ".join(
                f"{a} → v{v}" for a, v in sorted(p["all_aliases"].items()))) + "</p>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{font-size:1em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f3f3f3}
table.wide td:first-child{font-family:monospace}
img{max-width:100%}.note{color:#a60}.promo-promoted{color:#070}.promo-refused{color:#b00}
"""


def render(data: ReportData, tmp: Path) -> str:
    targets = data.targets
    models = sorted({t.model for t in targets})
    sections = [f"<h1>trtflow report: {_e(', '.join(models))}</h1>",
                f"<p>{len(targets)} engine(s) from {len(data.compiles)} compile run(s); "
                f"tracking store {_e(data.tracking_uri)}; generated "
                f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.</p>",
                "<h2>Runs</h2>", _summary(targets)]
    sections.append("<h2>Latency vs batch size</h2>")
    lat = latency_figure(targets)
    sections.append(_img(lat, "latency vs batch size") if lat else
                    "<p class=note>no latency was logged</p>")
    sections.append(_latency_table(targets))
    sections.append("<h2>Accuracy vs calibration method</h2>")
    acc = accuracy_figure(targets)
    sections.append(_img(acc, "accuracy vs calibration method") if acc else
                    "<p class=note>no quality metric was logged</p>")
    sections.append("<h2>Calibration: histograms and thresholds</h2>")
    sections.append("<p>|x| histograms (log counts) of the tensors where the methods disagree "
                    "most, with each method's threshold (amax). Engines calibrated on the same "
                    "histograms share one plot; its solid line is the method the first of them "
                    "used.</p>")
    groups = calibration_groups(targets)
    if not groups:
        sections.append("<p class=note>no INT8 engine among these runs</p>")
    for group in groups:
        used = "; ".join(f"{t.label} used {t.method}" for t in group)
        sections.append(f"<h3>{_e(used)}</h3>")
        figure = threshold_figure(group, tmp)
        if figure:
            sections.append(_img(figure, f"thresholds {group[0].label}"))
        for note in sorted({t.histograms_note for t in group if t.histograms_note}):
            sections.append(f"<p class=note>{_e(note)}</p>")
        sections.append(_scales_table(group) if any(t.scales for t in group) else
                        "<p class=note>scales.json was not logged</p>")
    sections.append("<h2>Fusion report</h2>")
    sections.append(_fusion(data))
    sections.append("<h2>Promotion decision</h2>")
    sections.append(_promotions(targets))
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>trtflow report: {_e(', '.join(models))}</title><style>{_CSS}</style>"
            f"</head><body>\n{body}\n</body></html>\n")


def write_report(run_ids: list[str], output: Path, root: Path) -> ReportData:
    """Collect, render and write the page atomically; returns what it showed."""
    with tempfile.TemporaryDirectory(prefix="trtflow-report-") as tmp:
        data = collect(run_ids, root, Path(tmp))
        page = render(data, Path(tmp))
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(output, "w") as f:
        os.fchmod(f.fileno(), 0o644)  # a page to share, not a secret (mkstemp makes 0600)
        f.write(page)
    return data
