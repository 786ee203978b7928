"""`trtflow store verify` and `trtflow store gc`: the artifact store's health and size.

verify re-hashes every artifact against the digests recorded when it was written.
gc keeps what something still refers to and removes the rest:
- every artifact whose key an MLflow run records (`trtflow.stage.<stage>.key` tags),
  so each logged or registered engine stays reproducible from its own stages;
- every artifact the params files reach (default: `params/*.yaml`; `--keep FILE`),
  resolved stage by stage through the same keys a run would compute;
- stages the compile pipeline does not own (`train`: the demo weights; downloads).
Temp dirs of killed writers and damaged entries always go. gc deletes only under
the store's exclusive lock, which no running trtflow process lets it take.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from trtflow.cli.app import ROOT_OPTION, app, console, fail, out
from trtflow.errors import StoreError, TrtflowError

store_app = typer.Typer(help="Check and clean the artifact store (.trtflow/store).",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")

def _store_dir(root: Path) -> Path:
    return root.resolve() / ".trtflow" / "store"


@store_app.command()
def verify(root: Annotated[Path, ROOT_OPTION] = Path(".")) -> None:
    """Re-hash every artifact against its recorded sha256 digests; exit 2 on any corruption."""
    from trtflow.store import verify_store

    store = _store_dir(root)
    try:
        report = verify_store(store)
        for path in report.in_progress:
            console.print(f"  [dim]being written by a running process: {path}[/]")
        for path in report.abandoned:
            console.print(f"  [yellow]left by an interrupted write (not an artifact; "
                          f"`trtflow store gc` removes it): {path}[/]")
        for path, problem in report.corrupt:
            console.print(f"  [red]corrupt[/] {path}: {problem}", highlight=False)
        if not report.ok:
            raise StoreError(f"{len(report.corrupt)} of {report.checked} artifacts in {store} "
                             "fail verification; a cached run would reuse them: remove them "
                             "with `trtflow store gc` (damaged entries always go) and re-run")
    except TrtflowError as exc:
        fail(exc)
        return
    legacy = f" ({report.legacy} written before per-file digests: tree digest checked)" \
        if report.legacy else ""
    out.print(f"verified {report.checked} artifacts in {store}: all intact{legacy}")


@store_app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed, "
                                          "remove nothing")] = False,
    keep: Annotated[list[Path] | None, typer.Option(
        "--keep", help="params file whose stages stay (repeatable); default params/*.yaml")
    ] = None,
    mlflow: Annotated[bool, typer.Option(help="keep what MLflow runs reference (reads the "
                                         "tracking store; fails if it cannot)")] = True,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Remove artifacts no MLflow run and no params file refers to, and interrupted writes."""
    from trtflow.project import configure_environment
    from trtflow.store import collect_garbage

    root = root.resolve()
    configure_environment(root)
    store = _store_dir(root)
    try:
        if not store.is_dir():
            raise StoreError(f"no artifact store at {store} (nothing was ever compiled here)")
        referenced: set[tuple[str, str]] = set()
        if mlflow:
            from trtflow.cli.app import check_tracking_server

            check_tracking_server()
            referenced |= mlflow_references()
        for params in keep if keep is not None else sorted((root / "params").glob("*.yaml")):
            referenced |= params_references(params, root, store)
        from trtflow.plan import STEPS

        # folders of the plan's stages are kept by reference; any other folder is judged whole
        others = {p.name for p in store.iterdir() if p.is_dir()} - set(STEPS)
        report = collect_garbage(store, referenced, others, dry_run=dry_run)
    except TrtflowError as exc:
        fail(exc)
        return
    verb = "would remove" if dry_run else "removed"
    why = {path: problem for path, problem in report.damaged}
    for path in report.removed:
        damaged = f" (damaged: {why[path]})" if path in why else ""
        out.print(f"  {verb} {path.relative_to(store)}{damaged}", markup=False)
    out.print(f"{verb} {len(report.removed)} entries ({report.freed_bytes / 1e6:.1f} MB), "
              f"kept {report.kept}")


def mlflow_references() -> set[tuple[str, str]]:
    """(stage, key) of every artifact an MLflow run in the tracking store records."""
    import logging
    import os

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return set()  # no tracking database yet: no run refers to anything
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        found: set[tuple[str, str]] = set()
        experiments = client.search_experiments(view_type=ViewType.ALL)
        ids = [e.experiment_id for e in experiments]
        for start in range(0, len(ids), 50):
            token = None
            while True:
                runs = client.search_runs(ids[start:start + 50], run_view_type=ViewType.ALL,
                                          max_results=1000, page_token=token)
                for run in runs:
                    for tag, value in run.data.tags.items():
                        parts = tag.split(".")
                        if len(parts) == 4 and parts[:2] == ["trtflow", "stage"] \
                                and parts[3] == "key":
                            found.add((parts[2], value))
                token = runs.token
                if not token:
                    break
    except Exception as exc:  # any failure to read runs: removing blind would be unsafe
        raise StoreError(f"cannot read MLflow runs at {uri} "
                         f"to learn which artifacts they reference ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); nothing was "
                         "removed (pass --no-mlflow to ignore MLflow)") from None
    return found


def params_references(params_path: Path, root: Path, store_dir: Path
                      ) -> set[tuple[str, str]]:
    """Keys a run of `params_path` would look up, as far as its stages exist in the store."""
    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import Node, plan
    from trtflow.stage import StageResult, cached_result, step_key
    from trtflow.store import ArtifactStore

    found: set[tuple[str, str]] = set()
    try:
        params = load_params(params_path)
        ctx = Context(params, root, ArtifactStore(store_dir, hold_lock=False))
        present: dict[Node, StageResult] = {}
        for node in plan(params, list(params.targets)):  # upstream first
            if not all(u in present for u in node.upstream):
                continue  # an input is not stored, so neither is anything built from it
            key = step_key(node.step, ctx, node.target, [present[u] for u in node.upstream])
            result = cached_result(node.step, ctx, key)
            if result is not None:
                present[node] = result
                found.add((node.step.name, key))
    except TrtflowError as exc:
        print(f"warning: {params_path}: cannot resolve its artifacts ({exc}); "
              "they count as unreferenced", file=sys.stderr)
    return found


@app.command("check-cache")
def check_cache(
    cache: Annotated[Path, typer.Argument(help="TensorRT calibration cache (text format)")],
    model: Annotated[Path, typer.Argument(help="the ONNX graph it is meant for")],
    fp8: Annotated[bool, typer.Option(
        "--fp8", help="also refuse scales whose 448x (E4M3's max) overflows float32")] = False,
) -> None:
    """Check a calibration cache (e.g. from TensorRT) against an ONNX graph, before use.

    Refused, naming the line: a malformed line, NaN/Inf/zero/negative, subnormal scales,
    scales whose 127x (448x with --fp8) overflows float32, a foreign header (a calibrator
    TensorRT does not write, a version outside TensorRT 8/10/11), tensors not in the graph.
    """
    try:
        from trtflow.quant.cache import check_cache_matches, check_trustworthy
        from trtflow.sources import check_onnx_file

        header = check_trustworthy(cache, 448.0 if fp8 else 127.0)
        graph = check_onnx_file(model)
        names = {v.name for v in graph.graph.input} | {
            o for node in graph.graph.node for o in node.output}
        scales = check_cache_matches(cache, names, model)
    except TrtflowError as exc:
        fail(exc)
        return
    out.print(f"{cache} ({header}) fits {model}: {len(scales)} tensor scales, all positive "
              "and finite")
