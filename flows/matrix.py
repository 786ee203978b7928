"""`compile-matrix`: models × targets × calibration methods, one concurrent task per cell.

Each cell runs the whole compile flow for one target of one model with one
calibration method (a nested flow run inside the cell's task), so every cell
gets the same stage caching, MLflow runs, gates and registry entry as
`trtflow run`. A target that is not int8 reads no calibration, so it is one cell
whatever the methods.

Task runners:
- default: Prefect's ThreadPoolTaskRunner (cells run side by side in this process);
- `dask`: prefect-dask's DaskTaskRunner, on a LocalCluster of `workers` processes
  (127.0.0.1, no dashboard, scratch space under `.trtflow/dask/`), or on the
  scheduler at `address` (`TRTFLOW_DASK_ADDRESS`) for a real cluster. Dask
  workers must reach a real Prefect server (PREFECT_API_URL): without one each
  worker starts its own ephemeral server and times out.

Cells share work: every cell of a model needs the same export and cleanup, and
int8 cells with one method the same calibration. Concurrent cells may compute
the same artifact at once; the store keeps the first complete rename (one
artifact per key) and the registry returns the existing version for a known
build key under its file lock, so concurrency never duplicates an artifact or a
registered version.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.states import Failed, State

from flows.limits import resolve
from tasks.stages import transient_failure
from trtflow.atomic import atomic_file
from trtflow.errors import ParamsError, TrtflowError

DASK_ADDRESS_ENV = "TRTFLOW_DASK_ADDRESS"


@dataclass(frozen=True)
class Cell:
    model: str
    target: str
    method: str  # calibration method; "-" for a target that does not calibrate
    params: str  # params file for this cell (the method applied)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.target}/{self.method}"


def plan(params_files: list[str], targets: list[str], methods: list[str], root: Path
         ) -> list[Cell]:
    """The cells, model-major then method then target, so cells that share a calibration
    are neighbours (and, on two workers, run at the same time)."""
    from trtflow.params import load_params

    cells: list[Cell] = []
    for path_text in params_files:
        path = resolve(root, path_text)
        params = load_params(path)
        names = targets or [n for n, t in params.targets.items() if t.device == "cpu"]
        unknown = sorted(set(names) - set(params.targets))
        if unknown:
            raise ParamsError(f"{path}: target '{unknown[0]}' is not defined in "
                              f"params.targets (defined: {sorted(params.targets)})")
        float_targets = [n for n in names if params.targets[n].precision != "int8"]
        int8_targets = [n for n in names if params.targets[n].precision == "int8"]
        cells += [Cell(params.model.name, n, "-", str(path)) for n in float_targets]
        for method in methods or [params.calibration.method]:
            method_params = with_method(path, method, root)
            cells += [Cell(params.model.name, n, method, str(method_params))
                      for n in int8_targets]
    if not cells:
        raise ParamsError("the compile matrix has no cells: give at least one params file "
                          "with a target")
    return cells


def with_method(params_file: Path, method: str, root: Path) -> Path:
    """A copy of the params with `calibration.method` set (validated by the schema)."""
    from trtflow.params import parse_params

    doc = yaml.safe_load(params_file.read_text())
    if (doc.get("calibration") or {}).get("method") == method:
        return params_file
    doc.setdefault("calibration", {})["method"] = method
    parse_params(doc, f"{params_file} with calibration.method={method}")
    out = root / ".trtflow" / "params" / f"{params_file.stem}-{method}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return out


@task(task_run_name="cell {cell_name}", retries=1, retry_delay_seconds=10,
      retry_condition_fn=transient_failure)
def compile_cell(params_path: str, root: str, target: str, cell_name: str) -> dict[str, Any]:
    """One cell: the compile flow for one target (a nested flow run, wherever this runs)."""
    import socket

    from flows.compile import compile_flow

    summary = compile_flow(params_path, root, [target])
    build = next(s for s in summary["stages"][target] if s.stage == "build")
    return {"cell": cell_name, "run_ids": summary["run_ids"],
            "released": summary["released"].get(target, {}), "engine": build.path,
            "engine_key": build.key, "host": socket.gethostname(), "pid": os.getpid()}


@flow(name="compile-matrix", validate_parameters=False)
def compile_matrix(cells: list[dict[str, str]], root: str) -> dict[str, Any] | State:
    """Submit every cell at once; the task runner decides how many run together."""
    logger = get_run_logger()
    futures = [compile_cell.submit(c["params"], root, c["target"], Cell(**c).name)
               for c in cells]
    results: dict[str, Any] = {}
    failures: list[str] = []
    for cell, future in zip(cells, futures, strict=True):
        name = Cell(**cell).name
        future.wait()
        state = future.state
        if state.is_completed():
            results[name] = future.result()
            logger.info("cell %s: engine %s", name, results[name]["engine_key"][:12])
        else:
            exc = state.result(raise_on_failure=False)
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            results[name] = {"failed": failures[-1]}
    if failures:
        return Failed(message=f"{len(failures)} of {len(cells)} matrix cells failed: "
                      + "; ".join(failures))
    return results


def task_runner(kind: str, root: Path, workers: int = 2, address: str | None = None) -> Any:
    """'threads' (Prefect's local concurrency) or 'dask' (a LocalCluster of `workers`
    processes, or the scheduler at `address` / TRTFLOW_DASK_ADDRESS)."""
    if kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind != "dask":
        raise ParamsError(f"task runner '{kind}' is not one of: threads, dask")
    from prefect_dask import DaskTaskRunner

    address = address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    scratch = root / ".trtflow" / "dask"
    scratch.mkdir(parents=True, exist_ok=True)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": None, "local_directory": str(scratch)})


def _init_tracking_store() -> None:
    """Create/upgrade MLflow's sqlite schema here, once: workers that all open a fresh
    database at the same moment race its migrations ('duplicate column name')."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    mlflow.MlflowClient().search_experiments(max_results=1)


class MatrixError(TrtflowError):
    """One or more cells of a compile matrix failed (each named with its reason)."""


def run_matrix(params_files: list[str], root: Path, targets: list[str] | None = None,
               methods: list[str] | None = None, runner: str = "threads", workers: int = 2,
               address: str | None = None) -> dict[str, Any]:
    """Plan the cells and run the matrix flow on the chosen task runner; {cell: result}."""
    cells = plan(params_files, targets or [], methods or [], root)
    _init_tracking_store()
    matrix = compile_matrix.with_options(task_runner=task_runner(runner, root, workers, address))
    state = matrix([asdict(c) for c in cells], str(root), return_state=True)
    if not state.is_completed():
        raise MatrixError(state.message or f"compile matrix ended {state.name}")
    result = state.result()
    assert isinstance(result, dict)
    return result
