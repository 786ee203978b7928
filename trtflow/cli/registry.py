"""`trtflow promote` and `trtflow history`: the model registry from the command line."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trtflow.cli.app import ROOT_OPTION, app, fail, out
from trtflow.errors import TrtflowError


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help="model name, e.g. digits")],
    target: Annotated[str, typer.Option("--target", "-t", help="target name, e.g. int8")],
    version: Annotated[str | None, typer.Option(
        help="registered version; default: the one aliased 'candidate'")] = None,
    params: Annotated[Path | None, typer.Option(
        help="params YAML whose `registry` section sets the gate; default: built-in "
        "budgets")] = None,
    force: Annotated[bool, typer.Option(
        help="move 'production' even if the gate refuses (recorded in the tags)")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Run the promotion gate for a registered engine; move 'production' only if it passes."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    try:
        from trtflow.params import RegistryConfig, load_params
        from trtflow.track import registry

        policy = load_params(params).registry if params else RegistryConfig()
        name = registry.registered_name(model, target)
        version = version or registry.candidate_version(name)
        decision = registry.promote(name, version, policy, force=force)
    except TrtflowError as exc:
        fail(exc)
        return
    for check in decision["checks"]:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]–[/]"}[check["passed"]]
        out.print(f"  {mark} {check['detail']}")
    if decision["promoted"]:
        out.print(f"[bold green]{name} v{version} is production[/] ({decision['reason']})")
    else:
        out.print(f"[bold red]{name} v{version} not promoted[/]: {decision['reason']}")
        raise typer.Exit(3)


@app.command()
def history(
    model: Annotated[str, typer.Argument(help="model name, e.g. digits")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON rows")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Every registered engine of a model: aliases, quality, latency, promotion decision."""
    from trtflow.project import configure_environment

    configure_environment(root.resolve())
    try:
        from trtflow.track import registry

        rows = registry.history(model)
    except TrtflowError as exc:
        fail(exc)
        return
    if as_json:
        out.print_json(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    table = Table(title=f"registry: {model}")
    for col in ("model", "version", "aliases", "registered", "quality", "p50 ms", "status"):
        table.add_column(col, no_wrap=col != "p50 ms")
    for r in rows:
        when = dt.datetime.fromtimestamp(r.created / 1000).strftime("%Y-%m-%d %H:%M")
        quality = f"{float(r.quality):.4f} {r.quality_metric}" if r.quality else ""
        p50 = ", ".join(f"bs{b}: {v:.3g}" for b, v in r.p50_by_batch_size().items())
        table.add_row(r.name, r.version, ", ".join(r.aliases), when, quality, p50, r.status)
    out.print(table)
    # reasons and published copies are long: one line each under the table, not a column
    # that wraps every row over five lines
    for r in rows:
        extra = [f"published {r.published}"] if r.published else []
        if r.reason or extra:
            out.print(f"  {r.name} v{r.version}: " + "; ".join(
                [*([r.reason] if r.reason else []), *extra]), soft_wrap=True,
                highlight=False)
