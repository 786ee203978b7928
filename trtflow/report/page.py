"""The HTML page of `trtflow report`: figures (matplotlib Agg, inlined as base64 PNG) and
tables, from the runs `trtflow.report.collect` read. No scripts, no external links."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import json
from pathlib import Path
from typing import Any

from trtflow.quant.plots import METHOD_COLORS, plot_thresholds, sensitive_tensors
from trtflow.report.runs import METHODS, QUANTILES, CompileRun, ReportData, TargetRun

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
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(3, len(labels)) or 1, fontsize=12, frameon=False)
    return _png(fig)


NOISY_TAIL = 3.0  # p99 beyond this many p50s: a tail no engine explains (host load)
NOISY_PCT = 10.0  # or a p50 interval wider than ±10 %


def noise_flag(quantiles: dict[str, float]) -> str:
    """'' for a steady measurement, else why its p99 (and the p50 behind any speed-up)
    should not be trusted: a tail of many times p50, or a wide p50 interval."""
    p50, p99 = quantiles.get("p50_ms"), quantiles.get("p99_ms")
    noise = quantiles.get("noise_pct")
    why = []
    if p50 and p99 and p99 > NOISY_TAIL * p50:
        why.append(f"p99 {p99 / p50:.1f}x p50")
    if noise is not None and noise > NOISY_PCT:
        why.append(f"p50 ±{noise:.0f} %")
    return f"noisy: {', '.join(why)}" if why else ""


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
        ax.legend(fontsize=11, loc="lower right")
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
        ax2.legend(fontsize=11)
    return _png(fig)


def calibration_groups(targets: list[TargetRun]) -> list[list[TargetRun]]:
    """INT8 engines grouped by identical histograms (same model and calibration data):
    one plot per group shows every method's threshold, whichever method each run used."""
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
        return base64.b64encode(first.thresholds_png).decode("ascii") \
            if first.thresholds_png else None
    scales = tmp / f"scales-{first.run_id}.json"
    scales.write_text(json.dumps(first.scales))
    tensors = sensitive_tensors(tmp / "absent", scales)  # ranks by the scales alone
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
                             if label == "engine" and f"speedup.bs{bs}" in t.metrics else "",
                             noise_flag(qs)])
    return _table(["engine", "measured", "batch size", "p50 ms", "p95 ms", "p99 ms",
                   "throughput /s", "speed-up p50", "noise"], rows)


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
    """The registry's decision per engine; runs of an identical engine (one registered
    version) refer to the first instead of repeating its decision."""
    parts = []
    shown: dict[str, str] = {}
    for t in targets:
        p = t.promotion or {}
        head = f"{t.label}: {p.get('state', '?')}"
        if p.get("registered"):
            aliases = ", ".join(p.get("aliases", [])) or "no alias"
            head += f" — {p['registered']} ({aliases})"
            if p["registered"] in shown:
                parts.append(f"<h3 class=promo-{_e(p.get('state', ''))}>{_e(head)}</h3>")
                parts.append(f"<p>the same engine as {_e(shown[p['registered']])}: its "
                             "decision above applies</p>")
                continue
            shown[p["registered"]] = t.label
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
                        "<p class=note>the scale table was not logged</p>")
    sections.append("<h2>Fusion report</h2>")
    sections.append(_fusion(data))
    sections.append("<h2>Promotion decision</h2>")
    sections.append(_promotions(targets))
    body = "\n".join(sections)
    return (f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>trtflow report: {_e(', '.join(models))}</title><style>{_CSS}</style>"
            f"</head><body>\n{body}\n</body></html>\n")
