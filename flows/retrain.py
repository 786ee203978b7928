"""`retrain`: train the digits model on the DVC-tracked training data, register it, compile it.

1. training data: `data/digits/train.npz` must match the version recorded in
   its `.dvc` file (`dvc status` clean), so the DVC md5 tagged on the model
   version names exactly the bytes it was trained on;
2. train (deterministic: same data, code and epochs give the same weights) and
   log it with `mlflow.pytorch` as a `torch.export` archive (no pickle),
   registered as `digits-model`. A version trained from the same inputs is
   reused, not registered again, so a nightly run with no new data adds nothing;
3. emit `trtflow.model.registered` for a new version (label
   `trtflow.compile: inline`: this flow compiles it itself);
4. compile that version for each target, under the model's concurrency slot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.states import Failed, State

from flows.limits import failure_message, is_bad_input, resolve
from flows.new_version import compile_locked, params_for_version, trained_name
from tasks.stages import transient_failure
from trtflow.errors import DataError, ParamsError
from trtflow.project import project_lock

RETRAIN_VERSION = "retrain-1"
TRAINING_DATA = {"digits": "data/digits/train.npz"}
EVALUATION_DATA = {"digits": "data/digits/evaluation.npz"}


def dvc_file_for(root: Path, data: Path) -> Path | None:
    """The `.dvc` file tracking `data` (the file itself or a folder above it)."""
    for candidate in (data, *data.parents):
        dvc = candidate.with_name(candidate.name + ".dvc")
        if dvc.is_file():
            return dvc
        if candidate == root:
            break
    return None


def dvc_changes(root: Path, data_dir: Path) -> dict[str, list[str]]:
    """Workspace changes DVC sees against the hashes its .dvc file records ({} when the
    workspace is that version). `dvc data status`, not `dvc status`: the latter reports only
    "not in cache" on a fresh clone and never compares the workspace."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            status = repo.data_status(targets=[str(data_dir.relative_to(root))])
    except DvcException as exc:
        raise DataError(f"{data_dir}: DVC cannot check the training data in {root}: "
                        f"{exc}") from None
    return {kind: paths for kind, paths in status.get("uncommitted", {}).items() if paths}


@task(name="check training data", retries=2, retry_delay_seconds=5,
      retry_condition_fn=transient_failure)
def tracked_training_data(model: str, root: Path) -> dict[str, str]:
    """Path, DVC md5 and sha256 of the model's training data, checked against DVC."""
    from trtflow.store import file_digest
    from trtflow.track.mlflow_log import dvc_digest

    if model not in TRAINING_DATA:
        raise ParamsError(f"retrain knows how to train {sorted(TRAINING_DATA)}, not '{model}'")
    rel = TRAINING_DATA[model]
    path = root / rel
    dvc_file = dvc_file_for(root, path)
    if not path.is_file():
        raise DataError(f"training data {path} does not exist: run `dvc pull"
                        f"{' ' + str(dvc_file.relative_to(root)) if dvc_file else ''}` "
                        "(or `trtflow prepare` for the demo data)")
    if dvc_file is None:
        raise DataError(f"training data {rel} is not DVC-tracked (no .dvc file covers it): "
                        f"run `dvc add {Path(rel).parent}`")
    changes = dvc_changes(root, dvc_file.with_suffix(""))
    if changes:
        tracked = dvc_file.relative_to(root)
        raise DataError(f"{rel} differs from the version recorded in {tracked} "
                        f"(dvc data status: {changes}): run `dvc add {tracked.with_suffix('')}` "
                        f"to record it as a new version, or `dvc checkout {tracked}`")
    return {"path": rel, "dvc_file": str(dvc_file.relative_to(root)),
            "dvc_md5": dvc_digest(root, rel) or "", "sha256": file_digest(path)}


def _existing_version(registered: str, train_key: str) -> str | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{registered}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.tags.get("trtflow.train_key") == train_key]
    return str(max(int(v.version) for v in same)) if same else None


@task(name="train and register", retries=2, retry_delay_seconds=10,
      retry_condition_fn=transient_failure)
def train_and_register(model: str, root: Path, data: dict[str, str], epochs: int
                       ) -> dict[str, Any]:
    """Train on the tracked data and register the result (or find the identical version)."""
    import mlflow
    import numpy as np
    import torch

    from trtflow.sources.builtin import DIGITS_TRAIN_VERSION, train_digits
    from trtflow.store import make_key
    from trtflow.track.mlflow_log import experiment_id

    logger = get_run_logger()
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    registered = trained_name(model)
    train_key = make_key("retrain", RETRAIN_VERSION, trainer=DIGITS_TRAIN_VERSION,
                         data=data["sha256"], epochs=epochs, seed=0, torch=torch.__version__)
    with project_lock(root, f"retrain-{model}"):
        existing = _existing_version(registered, train_key)
        if existing:
            logger.info("%s v%s was trained from these inputs (key %s): reused", registered,
                        existing, train_key[:12])
            return {"registered": registered, "version": existing, "new": False}
        with np.load(root / data["path"]) as npz:
            images, labels = npz["image"], npz["label"]
        net = train_digits(images, labels, epochs=epochs)
        with np.load(root / EVALUATION_DATA[model]) as npz:
            with torch.no_grad():
                predicted = net(torch.from_numpy(npz["image"])).argmax(1).numpy()
            accuracy = float((predicted == npz["label"]).mean())
        tags = {"trtflow.train_key": train_key, "trtflow.data.train.dvc_md5": data["dvc_md5"],
                "trtflow.data.train.sha256": data["sha256"],
                "trtflow.data.train.path": data["path"],
                "trtflow.data.train.dvc_file": data["dvc_file"]}
        with mlflow.start_run(experiment_id=experiment_id(f"{model}-training"),
                              run_name=f"retrain {model}", tags=tags) as run:
            mlflow.log_params({"epochs": epochs, "seed": 0, "trainer": DIGITS_TRAIN_VERSION,
                               "train_samples": len(labels)})
            mlflow.log_metric("eval_accuracy", accuracy)
            info = mlflow.pytorch.log_model(net, name="model", input_example=images[:2],
                                            serialization_format="pt2")
        version = mlflow.register_model(info.model_uri, registered, tags=tags)
        logger.info("registered %s v%s (eval accuracy %.4f, data dvc md5 %s)", registered,
                    version.version, accuracy, data["dvc_md5"])
        return {"registered": registered, "version": str(version.version), "new": True,
                "run_id": run.info.run_id, "eval_accuracy": accuracy}


@flow(name="retrain")
def retrain(model: str = "digits", params_path: str = "", root: str = ".", epochs: int = 30,
            targets: str = "") -> dict[str, Any] | State:
    """Retrain `model` on its DVC-tracked training data, register it, compile each target."""
    from flows.events import MODEL_REGISTERED, emit_compile_request

    project = Path(root).resolve()
    params_file = resolve(project, params_path.strip() or f"params/{model}.yaml")
    logger = get_run_logger()
    try:
        data = tracked_training_data(model, project)
        trained = train_and_register(model, project, data, epochs)
        uri = f"models:/{trained['registered']}/{trained['version']}"
        version_params = params_for_version(project, params_file, model, uri)
    except Exception as exc:
        if not is_bad_input(exc):
            raise
        message = failure_message(model, exc, "training data / training / registry",
                                  action="retrain")
        logger.error(message)
        return Failed(message=message)
    if trained["new"]:
        emit_compile_request(MODEL_REGISTERED, model, version=trained["version"],
                             params_path=str(params_file.relative_to(project)
                                             if params_file.is_relative_to(project)
                                             else params_file),
                             compile_mode="inline",
                             extra={"registered_model": trained["registered"],
                                    "model_uri": uri, "train_data_dvc_md5": data["dvc_md5"]})
    names = [t.strip() for t in targets.split(",") if t.strip()]
    result = compile_locked(model, version_params, project, names,
                            f"retrain ({'new' if trained['new'] else 'same'} version "
                            f"{trained['version']})")
    if isinstance(result, dict):
        result["trained"] = trained
        result["training_data"] = data
    return result
