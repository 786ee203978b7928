"""`trtflow serve`, `trtflow trigger` and `trtflow matrix`: trtflow run unattended.

`serve` starts a local Prefect server (unless PREFECT_API_URL names one) and
the MLflow UI, then serves the `retrain` and `compile-on-new-version`
deployments until interrupted. `trigger` emits the event that makes the served
deployment compile a model. `matrix` fans a models × targets × methods compile
out over Prefect's local process pool or a Dask cluster.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from trtflow.cli.app import ROOT_OPTION, TIMEOUT_OPTION, WAIT_OPTION, app, console, fail, out
from trtflow.errors import ParamsError, TrtflowError


def _prefect_home() -> Path:
    return Path(os.environ["PREFECT_HOME"])


def _connect(start: bool, port: int) -> Any:
    """PREFECT_API_URL's server, else the one `trtflow serve` recorded, else (if `start`)
    a new local one. Sets PREFECT_API_URL for this process and its children."""
    from flows.server import PrefectServer, ServerError, healthy, record, recorded, start_server

    api = os.environ.get("PREFECT_API_URL")
    if api:
        if not healthy(api, timeout=10):
            raise ServerError(f"the Prefect server at PREFECT_API_URL={api} does not answer "
                              "/health; start it, or unset PREFECT_API_URL to let "
                              "`trtflow serve` start a local one")
        return PrefectServer(api.removesuffix("/").removesuffix("/api"), None)
    server = recorded(_prefect_home())
    if server is None and start:
        console.print(f"starting a Prefect server on 127.0.0.1:{port} "
                      f"(data in {escape(str(_prefect_home()))})…")
        server = start_server(_prefect_home(), port)
        record(_prefect_home(), server)
    if server is None:
        raise ServerError("no Prefect server for this project: run `trtflow serve` (or "
                          "`make serve`) first, or set PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url
    return server


def _start_mlflow_ui(root: Path, port: int) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The MLflow UI over the project's tracking store: mlflow/serve.sh's command, with this
    project's sqlite file and artifact dir (a tracking server URI is shown as it is)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri.startswith(("http://", "https://")):
        return uri, None
    from flows.server import healthy

    if healthy(f"http://127.0.0.1:{port}", timeout=1.0):  # e.g. `make ui` already runs
        return f"http://127.0.0.1:{port}", None
    log = root / ".trtflow" / "mlflow-ui.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", uri, "--default-artifact-root",
             os.environ["TRTFLOW_MLFLOW_ARTIFACTS"], "--host", "127.0.0.1", "--port",
             str(port), "--workers", "1"],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    return f"http://127.0.0.1:{port}", proc


@app.command()
def serve(
    params: Annotated[Path, typer.Option(help="params YAML the deployments compile with")] =
        Path("params/digits.yaml"),
    port: Annotated[int, typer.Option(help="port of the local Prefect server (UI and API)")] =
        4200,
    retrain_cron: Annotated[str | None, typer.Option(
        help="cron schedule of `retrain`; default $TRTFLOW_RETRAIN_CRON or '0 3 * * *'")] = None,
    retrain_interval: Annotated[float | None, typer.Option(
        help="run `retrain` every N seconds instead of on the cron schedule (demos, tests)")]
        = None,
    epochs: Annotated[int, typer.Option(help="training epochs of `retrain`")] = 30,
    mlflow_ui: Annotated[bool, typer.Option(help="also start the MLflow UI")] = True,
    mlflow_port: Annotated[int, typer.Option(help="port of the MLflow UI")] = 5000,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Serve the retrain (scheduled) and compile-on-new-version (event) deployments."""
    from trtflow.project import configure_environment

    root = root.resolve()
    if os.environ.get("PREFECT_LOGGING_LEVEL", "CRITICAL") == "CRITICAL":
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"  # flow run logs belong in the UI
    configure_environment(root)
    server = ui = None
    try:
        from trtflow.params import load_params

        model = load_params(root / params if not params.is_absolute() else params).model.name
        server = _connect(start=True, port=port)
        from flows import deployments

        mlflow_url, ui = _start_mlflow_ui(root, mlflow_port) if mlflow_ui else ("", None)
        if mlflow_url:  # the served flow runs link their engines to it
            os.environ.setdefault("TRTFLOW_MLFLOW_UI", mlflow_url)
        schedule = (f"every {retrain_interval:g} s" if retrain_interval
                    else f"cron '{retrain_cron or deployments.retrain_cron()}'")
        served = deployments.build_deployments(root, str(params), model, retrain_cron,
                                               retrain_interval, epochs)
        out.print(f"Prefect UI: {server.url}   (API {server.api_url})")
        if mlflow_url:
            out.print(f"MLflow UI:  {mlflow_url}" + ("   (starting; log .trtflow/mlflow-ui.log)"
                                                     if ui else ""))
        out.print(f"serving: retrain ({model}, {schedule}), compile-on-new-version "
                  f"(on trtflow.model.registered / trtflow.dataset.updated)")
        out.print(f"compile {model} now: trtflow trigger {model}    stop: Ctrl-C")
        deployments.serve(served)
    except TrtflowError as exc:
        fail(exc)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(ui)
        if server is not None and server.pid is not None:
            from flows.server import forget

            server.stop()
            forget(_prefect_home())


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@app.command()
def trigger(
    model: Annotated[str, typer.Argument(help="model name, e.g. digits")],
    version: Annotated[str | None, typer.Option(
        help="registered version of <model>-model (or a models:/ URI); default: the newest, "
        "or the params' own source when none is registered")] = None,
    params: Annotated[Path | None, typer.Option(
        help="params YAML to compile with; default params/<model>.yaml")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="emit trtflow.dataset.updated for this data path instead of "
        "trtflow.model.registered")] = None,
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="target to compile (repeatable); default: every CPU target")]
        = None,
    wait: Annotated[bool, WAIT_OPTION] = False,
    timeout: Annotated[float, TIMEOUT_OPTION] = 900.0,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Emit the event that makes the served compile-on-new-version deployment compile MODEL."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    try:
        from trtflow.params import load_params

        params_path = params or Path("params") / f"{model}.yaml"
        loaded = load_params(params_path if params_path.is_absolute() else root / params_path)
        if loaded.model.name != model:
            raise ParamsError(f"{params_path}: model.name is '{loaded.model.name}', not "
                              f"'{model}'")
        unknown = sorted(set(target or []) - set(loaded.targets))
        if unknown:
            raise ParamsError(f"target '{unknown[0]}' is not defined in params.targets of "
                              f"{params_path} (defined: {sorted(loaded.targets)})")
        if version and not (version.isdigit() or version.startswith("models:/")):
            raise ParamsError(f"--version '{version}' must be a registry version number or a "
                              "models:/NAME/VERSION URI")
        server = _connect(start=False, port=0)
        from flows.events import DATASET_UPDATED, MODEL_REGISTERED

        started = time.time()
        _emit_event(DATASET_UPDATED if dataset else MODEL_REGISTERED, model, server.api_url,
                    version=version or "", params_path=str(params_path),
                    dataset=dataset or "", targets=",".join(target or []))
        if wait:
            _wait_for_compile(model, started, timeout)
    except TrtflowError as exc:
        fail(exc)


def _emit_event(event_name: str, model: str, api_url: str, **fields: Any) -> None:
    """Emit one trtflow event (flows.events.emit_compile_request's fields) and wait until
    Prefect's events worker has sent it to the server."""
    from prefect.events.worker import EventsWorker

    from flows.events import emit_compile_request

    event = emit_compile_request(event_name, model, **fields)
    logging.getLogger("EventsWorker").setLevel(logging.ERROR)  # "Still processing items"
    EventsWorker.drain_all(timeout=30)
    if event is None:
        raise ParamsError("Prefect did not emit the event (no API configured)")
    out.print(f"emitted {event_name} for trtflow.model.{model} (event {event.id}) to "
              f"{api_url}")


def _wait_for_compile(model: str, since: float, timeout: float) -> None:
    """Follow the compile-on-new-version run the event started until it ends."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.deployments import COMPILE_ON_NEW_VERSION
    from flows.server import ServerError

    deadline = time.monotonic() + timeout
    run: Any = None
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[COMPILE_ON_NEW_VERSION])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
            mine = [r for r in runs if r.parameters.get("model") == model
                    and r.created is not None and r.created.timestamp() >= since - 5]
            run = mine[-1] if mine else None  # the oldest since the event: ours
            if run is not None and run.state is not None and run.state.is_final():
                break
            time.sleep(2)
        if run is None or run.state is None or not run.state.is_final():
            raise ServerError(f"no finished compile-on-new-version run for {model} within "
                              f"{timeout:.0f} s (is `trtflow serve` running?)")
        if not run.state.is_completed():
            raise ServerError(f"flow run {run.name} ({run.id}) ended {run.state.name}: "
                              f"{run.state.message}")
        out.print(f"[green]✓[/] flow run {run.name} ({run.id}) completed")
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from rich.markdown import Markdown

        for artifact in client.read_artifacts(  # the engines table the run attached
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))):
            if artifact.type == "markdown" and str(artifact.key).endswith("-engines"):
                out.print(Markdown(str(artifact.data)))


@app.command()
def matrix(
    params: Annotated[list[Path], typer.Argument(help="params YAML files (the models)")],
    target: Annotated[list[str] | None, typer.Option(
        "--target", "-t", help="target (repeatable); default: each model's CPU targets")] =
        None,
    method: Annotated[list[str] | None, typer.Option(
        "--method", "-m", help="calibration method for int8 targets (repeatable); default: "
        "each params' own")] = None,
    dask: Annotated[bool, typer.Option(help="run cells on Dask (LocalCluster, or "
                                       "--address / $TRTFLOW_DASK_ADDRESS); default: "
                                       "Prefect's local process pool")] = False,
    address: Annotated[str | None, typer.Option(help="Dask scheduler address")] = None,
    workers: Annotated[int, typer.Option(help="concurrent cells (worker processes)")] = 2,
    promote: Annotated[bool, typer.Option(
        help="let each cell's engine through the promotion gate (move `production`); "
        "default: register only, as an exploration")] = False,
    root: Annotated[Path, ROOT_OPTION] = Path("."),
) -> None:
    """Compile models × targets × calibration methods, cells side by side (registers
    engines; moves `production` only with --promote)."""
    from trtflow.project import configure_environment

    root = root.resolve()
    configure_environment(root)
    server = None
    try:
        if not os.environ.get("PREFECT_API_URL"):
            from flows.server import free_port, recorded, start_server

            server = recorded(_prefect_home())  # worker processes need a real Prefect server
            if server is None:
                console.print("starting a Prefect server for the worker processes…")
                server = start_server(_prefect_home(), free_port())
            os.environ["PREFECT_API_URL"] = server.api_url
        from flows.matrix import run_matrix

        results = run_matrix([str(p) for p in params], root, target, method,
                             "dask" if dask else "processes", workers, address, promote)
    except TrtflowError as exc:
        fail(exc)
        return
    finally:
        if server is not None and server.pid is not None:
            server.stop()
    table = Table(title="compile matrix")
    for col in ("cell", "engine key", "registered", "MLflow run", "worker"):
        table.add_column(col)
    for name, r in results.items():
        reg = r["released"].get("registered")
        table.add_row(name, r["engine_key"][:12],
                      f"{reg} v{r['released']['version']}" if reg else "",
                      r["run_ids"][name.split("/")[1]], f"{r['host']}:{r['pid']}")
    out.print(table)
