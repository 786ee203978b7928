"""The model registry through real compiles: MLflow on sqlite, Prefect ephemeral, moto S3.

Each compile here uses its own model name, so versions and aliases start empty
whatever else the session registered.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest

from flows.compile import compile_flow
from trtflow.errors import StoreError
from trtflow.track.publish import fetch, s3_client

from .conftest import write_params
from .s3_server import TEST_ENV, free_port

pytestmark = pytest.mark.integration
TRTFLOW = [sys.executable, "-m", "trtflow.cli"]
LOOSE = {"max_accuracy_drop": 1.0, "min_agreement": 0.0,  # validation lets it through
         "min_accuracy": 0.0}  # (0: no absolute floor)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trtflow.sources.builtin import write_demo_data

    root = tmp_path_factory.mktemp("registry")
    write_demo_data(root)
    return root


def compile_model(root: Path, name: str, target: str = "int8", **overrides: Any) -> dict:
    """Compile one target; a target named other than int8 is a copy of int8 (same engine,
    cached stages) under a registered name of its own."""
    targets = overrides.pop("targets", {})
    targets.setdefault(target, {"precision": "int8"})
    params = write_params(root, model={"name": name}, targets=targets, **overrides)
    return compile_flow(str(params), str(root), [target])


@pytest.fixture(scope="module")
def model(root: Path) -> str:
    return f"reg{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def first(root: Path, model: str) -> dict:
    return compile_model(root, model)


def aliases(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def test_validated_engine_is_registered_and_first_one_promoted(first: dict, model: str) -> None:
    rel = first["released"]["int8"]
    assert (rel["registered"], rel["version"], rel["created"]) == (f"{model}-int8", "1", True)
    assert rel["decision"]["promoted"] and "no production version yet" in rel["decision"]["reason"]
    assert aliases(f"{model}-int8") == {"candidate": "1", "production": "1"}
    mv = mlflow.MlflowClient().get_model_version(f"{model}-int8", "1")
    assert mv.tags["trtflow.promotion"] == "promoted"
    assert mv.tags["trtflow.stage.calibrate.key"] == first["stages"]["int8"][0].key
    assert mv.tags["trtflow.data.calibration.sha256"]
    note = mlflow.MlflowClient().get_run(first["run_ids"]["int8"]).data.tags[
        "mlflow.note.content"]
    assert f"[{model}-int8 v1](#/models/{model}-int8/versions/1)" in note
    assert "data.calibration.sha256" in note and "stage calibrate" in note


def test_identical_inputs_do_not_make_a_second_version(first: dict, root: Path,
                                                       model: str) -> None:
    again = compile_model(root, model)
    assert (again["released"]["int8"]["version"], again["released"]["int8"]["created"]) == (
        "1", False)
    versions = mlflow.MlflowClient().search_model_versions(f"name='{model}-int8'")
    assert len(versions) == 1


def test_a_byte_identical_engine_from_other_params_is_the_same_version(
        first: dict, root: Path, model: str) -> None:
    """The thread count is in the build key, not in the engine's bytes."""
    same = compile_model(root, model, targets={"int8": {"precision": "int8", "threads": 1}})
    assert same["stages"]["int8"][-2].key != first["stages"]["int8"][-2].key  # a new build
    rel = same["released"]["int8"]
    assert (rel["version"], rel["created"]) == ("1", False)
    mv = mlflow.MlflowClient().get_model_version(f"{model}-int8", "1")
    assert len(mv.tags["trtflow.engine_sha256"]) == 64
    assert mv.tags["trtflow.precision"] == "int8"


def test_mlflow_models_predict_runs_the_production_engine(first: dict, root: Path,
                                                          model: str, tmp_path: Path) -> None:
    batch = np.load(root / "data/digits/evaluation.npz")
    pixels = batch["image"][:4]
    (tmp_path / "in.json").write_text(json.dumps({"inputs": {"image": pixels.tolist()}}))
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "predict", "-m",
         f"models:/{model}-int8@production", "-i", str(tmp_path / "in.json"), "-t", "json",
         "-o", str(tmp_path / "out.json"), "--env-manager", "local"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    predictions = np.asarray(json.loads((tmp_path / "out.json").read_text())["predictions"])
    assert predictions.shape == (4, 10)
    labels = batch["label"][:4]
    assert (predictions.argmax(1) == labels).mean() >= 0.75


def test_a_worse_engine_is_registered_as_candidate_but_refused_production(
        first: dict, root: Path, model: str) -> None:
    worse = compile_model(root, model, calibration={"method": "percentile", "percentile": 20.0},
                          targets={"int8": {"precision": "int8", "gates": LOOSE}})
    rel = worse["released"]["int8"]
    assert (rel["version"], rel["created"], rel["decision"]["promoted"]) == ("2", True, False)
    assert aliases(f"{model}-int8") == {"candidate": "2", "production": "1"}
    mv = mlflow.MlflowClient().get_model_version(f"{model}-int8", "2")
    assert mv.tags["trtflow.promotion"] == "refused"
    assert "drop vs FP32" in mv.tags["trtflow.promotion.reason"]

    env_root = ["--root", str(root)]
    refused = subprocess.run([*TRTFLOW, "promote", model, "-t", "int8", *env_root],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 3 and "not promoted" in refused.stdout
    assert aliases(f"{model}-int8")["production"] == "1"
    hist = subprocess.run([*TRTFLOW, "history", model, "--json", *env_root],
                          capture_output=True, text=True, timeout=120)
    rows = json.loads(hist.stdout)
    assert [(r["version"], r["aliases"], r["promotion"]) for r in rows] == [
        ("1", ["production"], "promoted"), ("2", ["candidate"], "refused")]
    forced = subprocess.run([*TRTFLOW, "promote", model, "-t", "int8", "--force", *env_root],
                            capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert aliases(f"{model}-int8")["production"] == "2"
    assert "forced" in mlflow.MlflowClient().get_model_version(
        f"{model}-int8", "2").tags["trtflow.promotion.reason"]
    hist = subprocess.run([*TRTFLOW, "history", model, "--json", *env_root],
                          capture_output=True, text=True, timeout=120)
    assert [(r["version"], r["status"]) for r in json.loads(hist.stdout)] == [
        ("1", "superseded by v2"), ("2", "promoted")]  # v1 is no longer production


def test_history_of_an_unknown_model_names_it(root: Path) -> None:
    done = subprocess.run([*TRTFLOW, "history", "no_such_model", "--root", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no registered engines for model 'no_such_model'" in (
        done.stderr)


def test_engine_is_published_before_it_is_registered(root: Path, model: str,
                                                     moto_endpoint: str) -> None:
    bucket = f"engines-{uuid.uuid4().hex[:8]}"
    s3_client().create_bucket(Bucket=bucket)
    result = compile_model(root, model, "pub", publish={"bucket": bucket})
    rel = result["released"]["pub"]
    assert rel["published"].startswith(f"s3://{bucket}/trtflow/{model}/pub-")
    mv = mlflow.MlflowClient().get_model_version(f"{model}-pub", rel["version"])
    assert mv.tags["trtflow.published_uri"] == rel["published"]
    version = rel["published"].rstrip("/").rsplit("/", 1)[1]
    fetched = fetch(bucket, "trtflow", model, version, root / "fetched")
    assert fetched.manifest["metadata"]["stages"]["build"]["key"] == (
        result["stages"]["pub"][1].key)


def test_unreachable_s3_fails_the_compile_and_registers_nothing(root: Path, model: str,
                                                                monkeypatch: Any) -> None:
    for key, value in {**TEST_ENV, "AWS_MAX_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(key, value)
    closed = f"http://127.0.0.1:{free_port()}"
    client = mlflow.MlflowClient()
    runs_before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    store_before = sorted(p.name for p in (root / ".trtflow" / "store").rglob("*"))
    with pytest.raises(StoreError, match="is unreachable .*2 attempts"):
        compile_model(root, model, "down", publish={"bucket": "engines", "endpoint_url": closed})
    assert client.search_registered_models(f"name='{model}-down'") == []
    # checked before the first stage: nothing built, nothing logged
    assert sorted(p.name for p in (root / ".trtflow" / "store").rglob("*")) == store_before
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) \
        == runs_before
