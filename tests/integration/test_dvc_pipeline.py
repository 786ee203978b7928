"""dvc.yaml on digits with real git and dvc in a temporary copy of the project.

`dvc repro` builds every stage in a fresh artifact store; the Prefect flow, run
in a second fresh store on the same inputs, must arrive at the same keys and the
same bytes. Then an experiment (`dvc exp run -S ...calibration.method=percentile`)
and new calibration samples must re-run only the int8 stages that read them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.compile import compile_flow
from trtflow.sources.builtin import digits_splits
from trtflow.stages.validation_report import ValidationReport
from trtflow.store import ArtifactStore, tree_digest

from .conftest import copy_tracked

pytestmark = pytest.mark.integration
DVC = [sys.executable, "-m", "dvc"]
BUILD = Path("build") / "digits"
PERCENTILE = "params/digits.yaml:calibration.method=percentile"
INT8_CHAIN = {"calibrate", "build@int8", "validate@int8"}


VENV_BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path, stdout_only: bool = False) -> str:
    """Run a command in the repo and return its output. The venv is NOT on PATH, as for a
    user who runs `.venv/bin/dvc repro`: dvc.yaml's commands must find trtflow without it."""
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != VENV_BIN.resolve()]
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(cwd / ".trtflow" / "dvc-site"),
           "DVC_NO_ANALYTICS": "1", "PATH": os.pathsep.join(path)}
    env.pop("VIRTUAL_ENV", None)
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600, env=env,
                         check=False)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout if stdout_only else res.stdout + res.stderr


def dvc_json(args: list[str], cwd: Path) -> dict:
    return json.loads(run([*DVC, *args, "--json"], cwd, stdout_only=True))


def stages_run(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


def copy_project(dest: Path) -> None:
    """The project's tracked files (as in the working tree) and the digits demo data."""
    copy_tracked(dest)
    (dest / "data" / "digits").mkdir(parents=True)
    for split, (images, labels) in digits_splits().items():  # what `trtflow prepare` writes
        np.savez(dest / "data" / "digits" / f"{split}.npz", image=images, label=labels)
    params_file = dest / "params" / "digits.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["validate"].update({"warmup": 2, "iterations": 20, "max_seconds": 2})  # fast
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def restore(repo: Path) -> None:
    """Back to the committed pipeline state (workspace files and DVC outs)."""
    run(["git", "reset", "-q", "--hard"], repo)
    run([*DVC, "checkout", "--force", "dvc.yaml", "data/digits.dvc"], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo with the project, after `dvc repro` in an empty store, lock committed."""
    root = tmp_path_factory.mktemp("dvc-pipeline") / "project"
    copy_project(root)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@trtflow"], root)
    run(["git", "config", "user.name", "trtflow test"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    (root / ".venv").symlink_to(VENV_BIN.parent)  # the project's venv, as `make` creates it
    log = run([*DVC, "repro"], root)
    assert stages_run(log) == {"export", "cleanup", "calibrate", "build@fp32", "build@int8",
                               "validate@fp32", "validate@int8"}
    run(["git", "add", "dvc.lock", "data/digits.dvc"], root)
    run(["git", "commit", "-qm", "dvc repro"], root)
    return root


def test_dvc_repro_builds_the_same_artifacts_as_the_prefect_flow(repo: Path,
                                                                 tmp_path: Path) -> None:
    flow_root = tmp_path / "flow"
    shutil.copytree(repo / "data" / "digits", flow_root / "data" / "digits")
    # the digits weights are the model source, trained once; the five stages run anew
    store = Path(".trtflow") / "store"
    shutil.copytree(repo / store / "train", flow_root / store / "train")
    summary = compile_flow(str(repo / "params" / "digits.yaml"), str(flow_root))
    stages = summary["stages"]
    flow = {"export": stages["model"][0], "cleanup": stages["model"][1],
            "calibrate": stages["int8"][0], "build-fp32": stages["fp32"][0],
            "build-int8": stages["int8"][1], "validate-fp32": stages["fp32"][1],
            "validate-int8": stages["int8"][2]}
    dvc_store = ArtifactStore(repo / ".trtflow" / "store")
    for out, result in flow.items():
        assert not result.cached, f"{out}: the flow must build it in its own store"
        dvc_artifact = dvc_store.get(result.stage, result.key)
        assert dvc_artifact is not None, f"{out}: dvc repro computed another key"
        assert tree_digest(repo / BUILD / out) == dvc_artifact.digest, out  # DVC's copy
        if out.startswith("validate"):  # a measurement: same key and quality, new latencies
            dvc_report = ValidationReport.read(repo / BUILD / out)
            assert dvc_report.quality == ValidationReport.of(result).quality
        else:
            assert dvc_artifact.digest == result.digest, f"{out}: different bytes"


@pytest.mark.slow  # CI budget: `make test-all` runs it
def test_exp_run_sets_the_calibration_method_and_metrics_diff_shows_it(repo: Path) -> None:
    try:
        log = run([*DVC, "exp", "run", "-S", PERCENTILE], repo)
        assert stages_run(log) == INT8_CHAIN
        assert "percentile" in run([*DVC, "params", "diff"], repo)
        diff = dvc_json(["metrics", "diff"], repo)
        assert set(diff) == {"build/digits/validate-int8.metrics.json"}  # fp32 untouched
        changed = diff["build/digits/validate-int8.metrics.json"]
        assert changed["mean_abs_error"]["new"] != changed["mean_abs_error"]["old"]
        table = run([*DVC, "metrics", "diff"], repo)
        assert "validate-int8.metrics.json" in table and "mean_abs_error" in table
    finally:
        restore(repo)


@pytest.mark.slow  # CI budget: `make test-all` runs it
def test_new_calibration_samples_rerun_only_the_int8_stages(repo: Path) -> None:
    calibration = repo / "data" / "digits" / "calibration.npz"
    before = {out: tree_digest(repo / BUILD / out) for out in ("export", "cleanup", "calibrate")}
    try:
        with np.load(calibration) as npz:
            arrays = dict(npz)
        extra = {"image": arrays["image"][:16, :, :, ::-1], "label": arrays["label"][:16]}
        np.savez(calibration, **{k: np.concatenate([arrays[k], extra[k]]) for k in arrays})

        status = dvc_json(["status", "dvc.yaml"], repo)
        assert set(status) == {"calibrate"}
        assert stages_run(run([*DVC, "repro"], repo)) == INT8_CHAIN
        assert dvc_json(["status", "dvc.yaml"], repo) == {}
        after = {out: tree_digest(repo / BUILD / out) for out in before}
        assert after["export"] == before["export"] and after["cleanup"] == before["cleanup"]
        assert after["calibrate"] != before["calibrate"]
    finally:
        restore(repo)
