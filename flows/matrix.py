"""`compile-matrix`: models × targets × calibration methods, one concurrent task per cell.

Each cell runs the whole compile flow for one target of one model with one
calibration method (a nested flow run inside the cell's task), so every cell
gets the same stage caching, MLflow runs, gates and registry entry as
`trtflow run`. A target that is not int8 reads no calibration, so it is one cell
whatever the methods.

Task runners (both run cells in separate processes, which must reach a real
Prefect server, PREFECT_API_URL: without one each starts its own ephemeral
server and times out):
- default: Prefect's ProcessPoolTaskRunner, `workers` processes on this machine.
  Not the ThreadPoolTaskRunner: two cells in one process break each other
  (torch.export and matplotlib's mathtext parser are not thread-safe; tried:
  "always_classified is unsupported", pyparsing "ParseException");
- `dask`: prefect-dask's DaskTaskRunner, on a LocalCluster of `workers` processes
  (127.0.0.1, no dashboard, scratch space under `.trtflow/dask/`), or on the
  scheduler at `address` (`TRTFLOW_DASK_ADDRESS`) for a real cluster.

Latency is measured in every cell while the other cells run: cells that share
a machine share its cores, so compare latencies from one cell at a time
(`workers=1`) or from workers on separate machines.

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

from prefect import flow, get_run_logger, task
from prefect.states import Failed, State

from flows.limits import resolve
from tasks.stages import transient_failure
from trtflow.atomic import atomic_file
from trtflow.errors import ParamsError, TrtflowError
from trtflow.yamlfile import dump_yaml, load_yaml

DASK_ADDRESS_ENV = "TRTFLOW_DASK_ADDRESS"


@dataclass(frozen=True)
class Cell:
    model: str
    target: str
    method: str  # calibration method; "-" for a target that does not calibrate
    params: str  # params file for this cell (the method applied)
    origin: str  # the model's own params file (export and cleanup read only this part)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.target}/{self.method}"


def plan(params_files: list[str], targets: list[str], methods: list[str], root: Path,
         promote: bool = False) -> list[Cell]:
    """The cells, model-major then method then target, so cells that share a calibration
    are neighbours (and, on two workers, run at the same time). A matrix explores: its
    cells register engines but never move `production` unless `promote`."""
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
        float_params = with_method(path, None, root, promote)
        cells += [Cell(params.model.name, n, "-", str(float_params), str(path))
                  for n in float_targets]
        for method in methods or [params.calibration.method]:
            method_params = with_method(path, method, root, promote)
            cells += [Cell(params.model.name, n, method, str(method_params), str(path))
                      for n in int8_targets]
    if not cells:
        raise ParamsError("the compile matrix has no cells: give at least one params file "
                          "with a target")
    return cells


def with_method(params_file: Path, method: str | None, root: Path, promote: bool = True
                ) -> Path:
    """A copy of the params with `calibration.method` set (None: kept) and, unless
    `promote`, `registry.promote: manual` (validated by the schema)."""
    from trtflow.params import parse_params

    doc = load_yaml(params_file)
    same_method = method is None or (doc.get("calibration") or {}).get("method") == method
    manual = (doc.get("registry") or {}).get("promote") == "manual"
    if same_method and (promote or manual):
        return params_file
    if method is not None:
        doc.setdefault("calibration", {})["method"] = method
    if not promote:
        doc.setdefault("registry", {})["promote"] = "manual"
    parse_params(doc, f"{params_file} with calibration.method={method}")
    suffix = (f"-{method}" if method else "") + ("" if promote else "-explore")
    out = root / ".trtflow" / "params" / f"{params_file.stem}{suffix}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as f:
        f.write(dump_yaml(doc))
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


@task(task_run_name="prepare {model}", retries=1, retry_delay_seconds=10,
      retry_condition_fn=transient_failure)
def prepare_model(params_path: str, root: str, model: str) -> str:
    """Export and clean up one model before its cells fan out. Its cells share these two
    artifacts, and torch.export is not thread-safe: two exports at once in one process
    fail ('always_classified is unsupported'), as cells on the thread runner would."""
    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import run_up_to

    ctx = Context.create(load_params(params_path), Path(root))
    return run_up_to(ctx, "cleanup")[-1].key


def _outcome(future: Any) -> tuple[Any, str | None]:
    """(result, None) for a completed future, (None, 'Error: reason') otherwise."""
    future.wait()
    state = future.state
    if state.is_completed():
        return future.result(), None
    exc = state.result(raise_on_failure=False)
    return None, f"{type(exc).__name__}: {exc}"


@flow(name="compile-matrix", validate_parameters=False)
def compile_matrix(cells: list[dict[str, str]], root: str) -> dict[str, Any] | State:
    """Prepare each model once, then submit every cell of the models that prepared; the
    task runner decides how many cells run together."""
    logger = get_run_logger()
    grid = [Cell(**c) for c in cells]
    models = {c.origin: c.model for c in grid}
    prepared = {origin: prepare_model.submit(origin, root, model)
                for origin, model in models.items()}
    broken = {origin: error for origin, (_, error) in
              ((o, _outcome(f)) for o, f in prepared.items()) if error}
    futures = {c.name: compile_cell.submit(c.params, root, c.target, c.name)
               for c in grid if c.origin not in broken}
    results: dict[str, Any] = {}
    failures: list[str] = []
    for cell in grid:
        result: Any = None
        error: str | None = f"export/cleanup failed: {broken.get(cell.origin)}"
        if cell.origin not in broken:
            result, error = _outcome(futures[cell.name])
        if error:
            failures.append(f"{cell.name}: {error}")
            results[cell.name] = {"failed": failures[-1]}
        else:
            results[cell.name] = result
            logger.info("cell %s: engine %s", cell.name, result["engine_key"][:12])
    if failures:
        return Failed(message=f"{len(failures)} of {len(grid)} matrix cells failed: "
                      + "; ".join(failures))
    return results


def task_runner(kind: str, root: Path, workers: int = 2, address: str | None = None) -> Any:
    """'processes' (Prefect's local process pool) or 'dask' (a LocalCluster of `workers`
    processes, or the scheduler at `address` / TRTFLOW_DASK_ADDRESS)."""
    if kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=workers)
    if kind != "dask":
        raise ParamsError(f"task runner '{kind}' is not one of: processes, dask")
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
               methods: list[str] | None = None, runner: str = "processes", workers: int = 2,
               address: str | None = None, promote: bool = False) -> dict[str, Any]:
    """Plan the cells and run the matrix flow on the chosen task runner; {cell: result}."""
    cells = plan(params_files, targets or [], methods or [], root, promote)
    _init_tracking_store()
    matrix = compile_matrix.with_options(task_runner=task_runner(runner, root, workers, address))
    state = matrix([asdict(c) for c in cells], str(root), return_state=True)
    if not state.is_completed():
        raise MatrixError(state.message or f"compile matrix ended {state.name}")
    result = state.result()
    assert isinstance(result, dict)
    return result
