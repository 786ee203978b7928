"""`trtflow data push PATH`: record a new version of a data set with DVC, push it to the DVC
remote, and emit `trtflow.dataset.updated` for every model whose params read it.

`dvc push` itself knows nothing of Prefect; this is the one command that both
publishes the data and tells the served `compile-on-new-version` deployment to
recompile what depends on it. Order: check everything first (the path, the DVC
remote, the Prefect server), then `dvc add`, `dvc push`, and only then emit the
events, so no compile starts on data that is not on the remote.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from trtflow.cli.app import ROOT_OPTION, TIMEOUT_OPTION, WAIT_OPTION, app, console, fail, out
from trtflow.errors import DataError, ParamsError, TrtflowError

data_app = typer.Typer(help="Publish data set versions (DVC) and trigger the compiles that "
                       "read them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _dvc(root: Path, *args: str) -> str:
    """Run the project's `dvc`; its own message on failure, as a DataError."""
    dvc = Path(sys.executable).with_name("dvc")
    res = subprocess.run([str(dvc), *args], cwd=root, capture_output=True, text=True)
    if res.returncode != 0:
        message = " ".join((res.stderr or res.stdout).split())[:600]
        raise DataError(f"`dvc {' '.join(args)}` failed in {root}: {message}")
    return res.stdout


def readers(root: Path, data: Path, params_dir: str = "params") -> dict[str, Path]:
    """{model: params file} for the params/*.yaml whose calibration or evaluation data lies
    under `data` (a file or folder). Files that do not parse are skipped."""
    from trtflow.params import load_params

    found: dict[str, Path] = {}
    for file in sorted((root / params_dir).glob("*.yaml")):
        try:
            params = load_params(file)
        except TrtflowError:
            continue
        for source in (params.data.calibration, params.data.evaluation):
            path = source.path if source is not None else None
            if path and (root / path).resolve().is_relative_to(data):
                found.setdefault(params.model.name, file)
    return found


@data_app.command()
def push(
    path: Annotated[Path, typer.Argument(help="data file or folder, e.g. data/digits")],
    model: Annotated[list[str] | None, typer.Option(
        "--model", "-m", help="model to recompile (repeatable); default: every model whose "
        "params/*.yaml reads data under PATH")] = None,
    emit: Annotated[bool, typer.Option(help="emit trtflow.dataset.updated (needs the Prefect "
                                       "server of `trtflow serve`)")] = True,
    wait: Annotated[bool, WAIT_OPTION] = False,
    timeout: Annotated[float, TIMEOUT_OPTION] = 900.0,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """`dvc add` + `dvc push` PATH, then trigger a compile of each model that reads it."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        data = (path if path.is_absolute() else root / path).resolve()
        if not data.exists():
            raise DataError(f"{path}: no such file or folder under {root}")
        if not data.is_relative_to(root):
            raise DataError(f"{path} is outside the project {root}: DVC tracks data inside it")
        rel = data.relative_to(root)
        if not _dvc(root, "remote", "list").strip():
            raise DataError("no DVC remote is configured, so nothing can be pushed: add one "
                            "(`dvc remote add -d NAME URL`, docs/dvc.md), or use `dvc add` "
                            "alone to record the version locally")
        models = {m: root / "params" / f"{m}.yaml" for m in model} if model else \
            readers(root, data)
        for name, params_file in models.items():
            if not params_file.is_file():
                raise ParamsError(f"--model {name}: {params_file} does not exist")
        server = None
        if emit and models:
            from flows.cli.ops import _connect

            server = _connect(start=False, port=0)  # before any change: fail with nothing done

        _dvc(root, "add", str(rel))
        dvc_file = rel.with_name(rel.name + ".dvc")
        from trtflow.track.mlflow_log import dvc_digest

        md5 = dvc_digest(root, str(rel)) or "?"
        _dvc(root, "push", str(dvc_file))
        out.print(f"recorded {rel} as DVC version {md5} ({dvc_file}) and pushed it; commit "
                  f"{dvc_file} to share the version")
        if not models:
            out.print(f"no params/*.yaml reads data under {rel}: nothing to recompile")
            return
        if server is None:
            out.print(f"not emitting (--no-emit): recompile with `trtflow trigger MODEL "
                      f"--dataset {rel}`")
            return
        _request_compiles(models, root, str(rel), md5, server.api_url, wait, timeout)
    except TrtflowError as exc:
        fail(exc)


def _request_compiles(models: dict[str, Path], root: Path, dataset: str, md5: str,
                      api_url: str, wait: bool, timeout: float) -> None:
    """trtflow.dataset.updated for each model, then (with `wait`) follow each compile."""
    from flows.cli.ops import _emit_event, _wait_for_compile
    from flows.events import DATASET_UPDATED

    started = time.time()
    for name, params_file in models.items():
        rel_params = params_file.relative_to(root) if params_file.is_relative_to(root) \
            else params_file
        _emit_event(DATASET_UPDATED, name, api_url, params_path=str(rel_params),
                    dataset=dataset, extra={"dvc_md5": md5})
    if wait:
        for name in models:
            console.print(f"waiting for the compile of {name}…")
            _wait_for_compile(name, started, timeout)
