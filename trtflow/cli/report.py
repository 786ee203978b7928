"""`trtflow report`: one self-contained HTML page comparing compile runs (trtflow/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trtflow.cli.app import ROOT_OPTION, app, check_tracking_server, fail, out
from trtflow.errors import TrtflowError


@app.command()
def report(
    run_ids: Annotated[list[str], typer.Argument(
        help="MLflow run ids, or unique prefixes of them (as tables print them): compile (parent) "
        "runs bring all their targets; target runs come alone")],
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file to write")] = Path(
        "report.html"),
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Write one HTML page with latency vs batch size, accuracy vs calibration method,
    histograms with thresholds, the fusion report and the promotion decision."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        check_tracking_server()
        from trtflow.report import write_report

        data = write_report(run_ids, output, root)
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(f"[green]report[/]: {output} ({len(data.targets)} engine(s) from "
              f"{len(data.compiles)} compile run(s))")
