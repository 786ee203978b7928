"""`trtflow report`: one self-contained HTML page about a set of compile runs.

It shows what MLflow's compare view cannot: latency against batch size per
precision (engine and baseline), accuracy against calibration method, each
tensor's histogram with every method's threshold, the fusion report (cleanup
passes and the ops of each engine) and the promotion decision of the registry.

Everything is read back from MLflow (run metrics, params and tags, artifacts,
model-version tags), so the page describes what was logged, not what a local
re-run would give. Two things MLflow does not hold are taken from the project's
artifact store by the stage key that the run records: the raw histograms
(the run logs only a thresholds plot of them) and, when a run has no
logged engine, the build report. Images are PNGs inlined as base64 (matplotlib
Agg; `trtflow/report/page.py` draws them); the page has no scripts and no
external links, so it can be mailed or attached to a ticket as one file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trtflow.atomic import atomic_file
from trtflow.report.page import render
from trtflow.report.runs import ReportData, ReportError, collect

__all__ = ["ReportData", "ReportError", "collect", "write_report"]


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
