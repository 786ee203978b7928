"""Four `trtflow run` at once on one project: one store, one MLflow sqlite, one Prefect home.

A first run of another model creates the project's databases: four first starts at
once on a fresh project race to create Prefect's and MLflow's sqlite schemas, a fault
this suite reports rather than hides. Two of the params files are identical (same
keys: both processes race to write the same artifacts), two differ (a validate
setting; an int8 target with its own
calibration). Nothing may be lost or corrupt, every run must be logged, and the
AWS secret in the environment must appear nowhere in MLflow.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from ..unit.tiny import conv_bn_graph
from .conftest import TRTFLOW, project_env, trtflow

SECRET = "trtflow-test-secret-Zq8vK2pX7"
ACCESS_KEY = "AKIATRTFLOWTESTKEY01"


pytestmark = pytest.mark.slow  # four Prefect+MLflow runs at once: minutes on 2 cores


def _write_params(root: Path, name: str, targets: dict, model: str = "tiny",
                  **validate: object) -> None:
    body = {"model": {"name": model, "source": {"onnx": "m.onnx"}},
            "data": {"calibration": {"npz": "cal.npz"}},
            "targets": targets,
            "validate": {"warmup": 1, "iterations": 3, "batch_sizes": [1], **validate},
            "calibration": {"min_samples": 8}}
    (root / name).write_text(yaml.safe_dump(body))


@pytest.fixture(scope="module")
def four_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("concurrent")
    onnx.save(conv_bn_graph(), root / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(root / "cal.npz", x=rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
    fp32 = {"fp32": {"precision": "fp32"}}
    _write_params(root, "a.yaml", fp32)
    _write_params(root, "a-again.yaml", fp32)  # identical content
    _write_params(root, "b.yaml", fp32, batch_sizes=[1, 2])
    _write_params(root, "c.yaml", {"int8": {"precision": "int8"}})
    env = project_env(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    # One run first, of another model: concurrent first starts on a fresh project race to
    # create Prefect's and MLflow's sqlite schemas and fail (a known fault, reported).
    _write_params(root, "warm.yaml", fp32, model="warm")
    warm = trtflow("run", "warm.yaml", cwd=root, env=env)
    assert warm.returncode == 0, warm.stderr
    procs = [subprocess.Popen([TRTFLOW, "run", name], cwd=root, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in ("a.yaml", "a-again.yaml", "b.yaml", "c.yaml")]
    outputs = [(p.wait(timeout=900), *p.communicate()) for p in procs]
    return root, outputs


def _client(root: Path):  # noqa: ANN202
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / '.trtflow' / 'mlflow.db'}")


def test_four_concurrent_compiles_all_succeed(four_runs: tuple[Path, list]) -> None:
    _, outputs = four_runs
    for code, _out, err in outputs:
        assert code == 0, err
        assert "Traceback" not in err


def test_store_is_intact_after_concurrent_writes(four_runs: tuple[Path, list]) -> None:
    root, _ = four_runs
    res = trtflow("store", "verify", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    store = root / ".trtflow" / "store"
    assert [p for p in store.glob("*/.*")] == []  # no temp dirs left by the losers
    # nothing lost: every artifact a logged run names is in the store (and verified above)
    client = _client(root)
    ids = [e.experiment_id for e in client.search_experiments() if e.name in ("tiny", "warm")]
    named = {(tag.split(".")[2], value) for run in client.search_runs(ids, max_results=100)
             for tag, value in run.data.tags.items()
             if tag.startswith("trtflow.stage.") and tag.endswith(".key")}
    in_store = {(p.parent.name, p.name) for p in store.glob("*/*") if p.is_dir()}
    assert named and named <= in_store, sorted(named - in_store)


def test_every_concurrent_run_is_logged(four_runs: tuple[Path, list]) -> None:
    root, _ = four_runs
    client = _client(root)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    # a run that found every stage cached after another finished links to that run
    # (trtflow.cached_reruns) instead of logging the same engine again: none is lost
    linked = sum(int(r.data.tags.get("trtflow.cached_reruns", "0")) for r in parents)
    assert len(parents) + linked == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert len(children) == len(parents)  # one target each
    keys = Counter(r.data.tags.get("trtflow.stage.build.key") for r in children)
    # the fp32 runs share one build; int8 its own
    assert sorted(keys.values()) == [1, len(parents) - 1]


def test_credentials_never_reach_mlflow(four_runs: tuple[Path, list]) -> None:
    root, _ = four_runs
    client = _client(root)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    for run in client.search_runs([exp.experiment_id], max_results=100):
        text = repr(run.data.params) + repr(run.data.tags) + repr(run.data.metrics)
        assert SECRET not in text and ACCESS_KEY not in text
    for path in [root / ".trtflow" / "mlflow.db",
                 *(p for p in (root / ".trtflow" / "mlartifacts").rglob("*") if p.is_file())]:
        data = path.read_bytes()
        assert SECRET.encode() not in data and ACCESS_KEY.encode() not in data, path


def test_identical_engines_are_one_registry_version(four_runs: tuple[Path, list]) -> None:
    """The three fp32 compiles build one engine (same build key): one version of tiny-fp32,
    and the two runs that lost the race say which version their engine already is."""
    root, outputs = four_runs
    client = _client(root)
    for name in ("tiny-fp32", "tiny-int8"):
        versions = client.search_model_versions(f"name = '{name}'")
        keys = [v.tags.get("trtflow.engine_key") for v in versions]
        assert len(versions) == 1 and keys[0], (name, keys)
    said = [out for _code, out, _err in outputs if "same engine as tiny-fp32 v1" in out]
    assert len(said) == 2, [out[-400:] for _code, out, _err in outputs]
