"""Operations on a real Prefect server: served deployments, the retrain schedule, event
triggers, the per-model concurrency limit, a failed state naming its stage, and a compile
matrix on a 2-worker local Dask cluster.

One Prefect server (127.0.0.1, free port, PREFECT_HOME in tmp) and one `trtflow serve`
process for the module, both stopped by PID. The project is a fresh git + DVC folder
holding the digits data and `data/digits.dvc`, so retrain reads DVC-tracked data.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from flows.server import PrefectServer, free_port, start_server
from trtflow.sources.builtin import digits_splits

from ..conftest import REPO
from .conftest import write_params

pytestmark = pytest.mark.integration
TRTFLOW = str(Path(sys.executable).with_name("trtflow"))
RETRAIN_INTERVAL = 15  # seconds; paused as soon as its first run starts


def wait_for(what: str, check: Callable[[], Any], timeout: float = 420, every: float = 2
             ) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    home = tmp_path_factory.mktemp("prefect-server")
    server = start_server(home, free_port())
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:  # the environment for subprocesses; the settings context for this process, whose
        # Prefect settings were loaded (ephemeral) by earlier test modules
        with pytest.MonkeyPatch.context() as env, temporary_settings(
                updates={PREFECT_API_URL: server.api_url}):
            env.setenv("PREFECT_API_URL", server.api_url)
            yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """git + DVC project with the digits data at the version data/digits.dvc records."""
    root = tmp_path_factory.mktemp("ops-project")
    shutil.copytree(REPO / ".dvc", root / ".dvc",
                    ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    (root / "data" / "digits").mkdir(parents=True)
    for name in [".dvcignore", "data/digits.dvc", "data/.gitignore"]:
        shutil.copy(REPO / name, root / name)
    for split, (images, labels) in digits_splits().items():
        np.savez(root / "data" / "digits" / f"{split}.npz", image=images, label=labels)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    (root / "params").mkdir()
    # few epochs train a weaker model: relax the int8 gate so the demo compile passes
    fast = write_params(root, validate={"gates": {"max_accuracy_drop": 0.05},
                                        "batch_sizes": [1, 8]})
    fast.rename(root / "params" / "digits.yaml")
    return root


@pytest.fixture(scope="module")
def served(prefect_server: PrefectServer, project: Path) -> Iterator[Path]:
    """`trtflow serve` against the module's server, retrain every RETRAIN_INTERVAL s."""
    log = project / "serve.log"
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url,
           "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_LOGGING_LEVEL": "INFO"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TRTFLOW, "serve", "--root", str(project), "--params", "params/digits.yaml",
             "--retrain-interval", str(RETRAIN_INTERVAL), "--epochs", "5", "--no-mlflow-ui"],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        with client() as c:
            wait_for("the served deployments", lambda: _deployments_exist(c), timeout=180)
        yield project
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def client() -> Any:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _deployments_exist(c: Any) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        c.read_deployment_by_name("retrain/retrain")
        c.read_deployment_by_name("compile-on-new-version/compile-on-new-version")
    except ObjectNotFound:
        return False
    return True


def runs_of(c: Any, deployment: str) -> list[Any]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    return list(c.read_flow_runs(deployment_filter=DeploymentFilter(
        name=DeploymentFilterName(any_=[deployment]))))


def subflows_of(c: Any, parent: Any) -> list[Any]:
    """The compile subflow runs a deployment's flow run started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
    return [r for r in runs if r.id != parent.id]


def logs_of(c: Any, run: Any) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    return "\n".join(entry.message for entry in logs)


def artifacts_of(c: Any, run: Any) -> dict[str, str]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    return {a.key: str(a.data) for a in found if a.key}


def mlflow_runs_of(flow_run_id: Any) -> Any:
    import mlflow

    return mlflow.search_runs(experiment_names=["digits"], output_format="list",
                              filter_string=f"tags.`trtflow.prefect.flow_run_id` = "
                                            f"'{flow_run_id}'")


def trigger(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([TRTFLOW, "trigger", "digits", "--root", str(project), *args],
                         cwd=project, capture_output=True, text=True, timeout=900)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res


def finished(c: Any, run_id: Any) -> Any:
    run = c.read_flow_run(run_id)
    return run if run.state is not None and run.state.is_final() else None


def test_schedule_retrains_registers_and_compiles(served: Path) -> None:
    import mlflow

    with client() as c:
        first = wait_for("a scheduled retrain run to start", lambda: next(
            (r for r in runs_of(c, "retrain") if r.state and not r.state.is_scheduled()),
            None), timeout=300)
        deployment = c.read_deployment_by_name("retrain/retrain")
        c.pause_deployment(deployment.id)  # one scheduled run is all this test needs
        for r in runs_of(c, "retrain"):
            if r.state and r.state.is_scheduled():
                c.delete_flow_run(r.id)
        run = wait_for("the scheduled retrain to finish", lambda: finished(c, first.id))
        assert run.state.is_completed(), run.state.message
        assert run.auto_scheduled  # made by the schedule, not by hand
    tracked = yaml.safe_load((served / "data" / "digits.dvc").read_text())["outs"][0]["md5"]
    version = mlflow.MlflowClient().get_model_version("digits-model", "1")
    assert version.tags["trtflow.data.train.dvc_md5"] == tracked
    compiled = mlflow_runs_of(run.id)
    assert {r.data.tags.get("trtflow.target") for r in compiled} >= {"fp32", "int8"}
    with client() as c:  # the run's engines table, shown in the Prefect UI's Artifacts tab
        table = artifacts_of(c, run)["digits-engines"]
    for r in compiled:
        if r.data.tags.get("trtflow.registered_version"):
            name, version = r.data.tags["trtflow.registered_version"].split("/")
            assert f"{name} v{version}" in table and r.info.run_id[:12] in table
    assert all(r.data.tags["trtflow.source.mlflow"] == "models:/digits-model/1"
               for r in compiled)


def test_events_trigger_compiles_that_wait_for_the_model_slot(served: Path) -> None:
    """Two `trtflow trigger`s while a compile of digits holds the slot: both flow runs
    start and wait; released, they compile one after the other, each logged to MLflow."""
    from prefect.concurrency.sync import concurrency

    from flows.limits import ensure_limit, limit_name

    name = limit_name("digits")
    ensure_limit(name, 1)
    with client() as c:
        before = {r.id for r in runs_of(c, "compile-on-new-version")}

        def waiting_runs() -> list[Any] | None:
            new = [r for r in runs_of(c, "compile-on-new-version") if r.id not in before]
            waiting = [r for r in new if "waiting for concurrency limit" in logs_of(c, r)]
            return waiting if len(waiting) == 2 else None

        with concurrency(name, occupy=1, strict=True):  # as if a compile of digits ran
            for _ in range(2):
                res = trigger(served, "--version", "1", "--target", "fp32")
                assert "emitted trtflow.model.registered" in res.stdout
            waiting = wait_for("both runs waiting for the slot", waiting_runs)
            assert all(c.read_flow_run(r.id).state.is_running() for r in waiting)
            assert not any(subflows_of(c, r) for r in waiting)  # no compile started
        done = [wait_for("the waiting run to finish", lambda r=r: finished(c, r.id))
                for r in waiting]
        assert all(r.state.is_completed() for r in done), [r.state for r in done]
        assert all(r.parameters["version"] == "1" for r in done)
        first, second = sorted((subflows_of(c, r)[0] for r in done),
                               key=lambda r: r.start_time)
        assert first.end_time <= second.start_time  # never two compiles of digits at once
    import mlflow

    # the first compile logged its engine to MLflow; the second, every stage cached, links
    # to that run (trtflow.cached_reruns) instead of logging the same engine again
    engines = [r for run in done for r in mlflow_runs_of(run.id)
               if r.data.tags.get("trtflow.target")]
    assert [r.data.tags["trtflow.target"] for r in engines] == ["fp32"]
    assert engines[0].data.tags["trtflow.source.mlflow"] == "models:/digits-model/1"
    parent = mlflow.get_run(engines[0].data.tags["mlflow.parentRunId"])
    # at least the second compile is a cached re-run (the first is one too where an earlier
    # test of this module compiled the same engine, with the same stage keys)
    assert int(parent.data.tags.get("trtflow.cached_reruns", "0")) >= 1
    # one model version compiled twice is one engine: one registry version (other test
    # modules of the session may have registered digits-fp32 versions before)
    assert engines[0].data.tags["trtflow.registered_version"].startswith("digits-fp32/")


def test_data_push_records_pushes_and_triggers_a_compile(served: Path) -> None:
    """16 more calibration images, then `trtflow data push data/digits --wait`: a new DVC
    version on the project's DVC remote, and one compile of digits triggered by
    trtflow.dataset.updated whose int8 engine was calibrated on that version."""
    digits = served / "data" / "digits"
    with np.load(digits / "calibration.npz") as cal, np.load(digits / "train.npz") as train:
        images = np.concatenate([cal["image"], train["image"][:16]])
        labels = np.concatenate([cal["label"], train["label"][:16]])
    np.savez(digits / "calibration.npz", image=images, label=labels)
    dvc_file = served / "data" / "digits.dvc"
    old_md5 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    with client() as c:
        before = {r.id for r in runs_of(c, "compile-on-new-version")}
    res = subprocess.run([TRTFLOW, "data", "push", "data/digits", "--root", str(served),
                          "--wait"], cwd=served, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    md5 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    assert md5 != old_md5 and md5 in res.stdout
    assert "emitted trtflow.dataset.updated for trtflow.model.digits" in res.stdout
    status = subprocess.run([str(Path(TRTFLOW).with_name("dvc")), "status", "--cloud",
                             "data/digits.dvc"], cwd=served, capture_output=True, text=True)
    assert "in sync" in status.stdout, status.stdout + status.stderr  # on the remote
    with client() as c:
        new = [r for r in runs_of(c, "compile-on-new-version") if r.id not in before]
        assert len(new) == 1 and new[0].state.is_completed(), [r.state for r in new]
        assert new[0].parameters["reason"] == "trtflow.dataset.updated data/digits"
    int8 = [r for r in mlflow_runs_of(new[0].id) if r.data.tags.get("trtflow.target") == "int8"]
    assert [r.data.tags["trtflow.data.calibration.dvc_md5"] for r in int8] == [md5]


@pytest.mark.slow  # CI budget: `make test-all` runs it
def test_failed_compile_names_the_stage_and_is_not_retried(served: Path) -> None:
    broken = yaml.safe_load((served / "params" / "digits.yaml").read_text())
    broken["data"]["calibration"]["npz"] = "data/digits/missing.npz"
    (served / "params" / "broken.yaml").write_text(yaml.safe_dump(broken))
    res = trigger(served, "--version", "1", "--params", "params/broken.yaml", "--target",
                  "int8", "--dataset", "data/digits/missing.npz", "--wait", check=False)
    assert res.returncode != 0
    with client() as c:
        run = max(runs_of(c, "compile-on-new-version"), key=lambda r: r.created)
        assert run.state.is_failed()
        assert run.run_count == 1  # a bad input is not retried
        assert run.parameters["reason"].startswith("trtflow.dataset.updated")
    assert "digits: compile failed at stage calibrate int8: DataError" in run.state.message
    assert "missing.npz" in run.state.message


@pytest.mark.slow  # CI budget: `make test-all` runs it
def test_dask_matrix_compiles_every_cell(prefect_server: PrefectServer,
                                         tmp_path: Path, demo_root: Path) -> None:
    import mlflow

    from flows.matrix import run_matrix

    root = tmp_path / "matrix"
    shutil.copytree(demo_root / "data" / "digits", root / "data" / "digits")
    params = write_params(root, targets={
        "int8": {"backend": "onnxruntime", "device": "cpu", "precision": "int8"},
        "int8_1t": {"backend": "onnxruntime", "device": "cpu", "precision": "int8",
                    "threads": 1}}, validate={"gates": {"max_accuracy_drop": 0.05},
                                              "batch_sizes": [1]})
    results = run_matrix([str(params)], root, targets=["int8", "int8_1t"],
                         methods=["max", "percentile"], runner="dask",
                         workers=2)
    assert sorted(results) == ["digits/int8/max", "digits/int8/percentile",
                               "digits/int8_1t/max", "digits/int8_1t/percentile"]
    assert len({r["pid"] for r in results.values()}) == 2  # both Dask workers compiled
    client_ = mlflow.MlflowClient()
    for name, cell in results.items():
        target = name.split("/")[1]
        assert (Path(cell["engine"]) / "artifact.json").is_file()
        assert client_.get_run(cell["run_ids"][target]).info.status == "FINISHED"
        parent = client_.get_run(cell["run_ids"]["parent"])
        assert parent.data.params["calibration.method"] == name.split("/")[2]
    store = root / ".trtflow" / "store"
    for stage in ("export", "cleanup", "calibrate", "build"):
        entries = [p for p in (store / stage).iterdir() if not p.name.startswith(".")]
        expected = {"export": 1, "cleanup": 1, "calibrate": 2, "build": 4}[stage]
        assert len(entries) == expected, (stage, entries)  # one artifact per key
    for name, cell in results.items():  # one registry version per engine, never two
        versions = client_.search_model_versions(f"name = 'digits-{name.split('/')[1]}'")
        same = [v for v in versions if v.tags.get("trtflow.engine_key") == cell["engine_key"]]
        assert len(same) == 1, (name, [v.version for v in same])
        assert cell["released"]["version"] == str(same[0].version)


@pytest.mark.slow  # CI budget: `make test-all` runs it
def test_matrix_on_an_external_dask_scheduler(prefect_server: PrefectServer, tmp_path: Path,
                                             demo_root: Path) -> None:
    """The multi-machine path, on one machine: a `dask scheduler` and two `dask worker`
    processes (no nanny) started as a cluster's operator starts them, with the project's
    environment; the matrix is pointed at the scheduler's address, and every cell must run
    in one of those worker processes."""
    from distributed import Client

    from flows.matrix import run_matrix

    dask = str(Path(TRTFLOW).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_API_URL": prefect_server.api_url}
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                                "--no-dashboard", "--local-directory", str(tmp_path / f"w{i}")],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL) for i in range(2)]
    try:
        with Client(address, timeout=60) as dask_client:
            dask_client.wait_for_workers(2, timeout=180)
        root = tmp_path / "cluster"
        shutil.copytree(demo_root / "data" / "digits", root / "data" / "digits")
        params = write_params(root, model={"name": "digits-cluster"},
                              validate={"gates": {"max_accuracy_drop": 0.05},
                                        "batch_sizes": [1]})
        results = run_matrix([str(params)], root, targets=["int8"],
                             methods=["max", "percentile"], runner="dask", address=address)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert sorted(results) == ["digits-cluster/int8/max", "digits-cluster/int8/percentile"]
    workers = {p.pid for p in procs[1:]}
    assert {cell["pid"] for cell in results.values()} <= workers, (results, workers)
    assert all(cell["released"].get("version") for cell in results.values())


@pytest.mark.slow
def test_matrix_cli_on_the_process_pool(prefect_server: PrefectServer, tmp_path: Path,
                                        demo_root: Path) -> None:
    """`trtflow matrix` with Prefect's process pool (the default): fp32 + int8 × 2 methods."""
    root = tmp_path / "pool"
    shutil.copytree(demo_root / "data" / "digits", root / "data" / "digits")
    params = write_params(root, validate={"gates": {"max_accuracy_drop": 0.05},
                                          "batch_sizes": [1]})
    res = subprocess.run([TRTFLOW, "matrix", str(params), "-t", "fp32", "-t", "int8", "-m",
                          "max", "-m", "entropy", "--root", str(root)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    for cell in ("digits/fp32/-", "digits/int8/max", "digits/int8/entropy"):
        assert cell in res.stdout
    store = root / ".trtflow" / "store"
    assert len([p for p in (store / "export").iterdir() if not p.name.startswith(".")]) == 1
    assert len([p for p in (store / "build").iterdir() if not p.name.startswith(".")]) == 3
