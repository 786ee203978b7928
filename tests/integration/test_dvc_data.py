"""The demo data is DVC-tracked: `trtflow prepare` regenerates exactly the tracked bytes,
`dvc push` / `dvc pull` round-trip it through the default local remote and through an
S3 remote on a moto server (real git, dvc), and missing data says to run `dvc pull`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest

from trtflow.sources.builtin import digits_splits

from ..conftest import REPO

pytestmark = pytest.mark.integration
DVC = [sys.executable, "-m", "dvc"]
TRACKED = ["data/digits.dvc", "data/minilm.dvc", "data/resnet18.dvc"]


def run(cmd: list[str], cwd: Path, expect_rc: int = 0) -> str:
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(cwd / ".dvc-site"), "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert res.returncode == expect_rc, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout if expect_rc == 0 else res.stdout + res.stderr


def write_digits(root: Path) -> None:
    """The digits part of `trtflow prepare` (the same bytes), without the other demos."""
    (root / "data" / "digits").mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in digits_splits().items():
        np.savez(root / "data" / "digits" / f"{split}.npz", image=images, label=labels)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A new git repo holding the project's DVC config and .dvc files (nothing else)."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copytree(REPO / ".dvc", root / ".dvc",
                    ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    for name in [".dvcignore", *TRACKED, "data/.gitignore"]:
        shutil.copy(REPO / name, root / name)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], root)
    return root


def test_prepare_regenerates_the_tracked_bytes(repo: Path) -> None:
    run([sys.executable, "-m", "trtflow.cli", "prepare", "--root", str(repo)], repo)
    assert "modified" not in run([*DVC, "status", *TRACKED], repo)
    run([*DVC, "commit", "-f", *TRACKED], repo)  # re-hash the workspace into the .dvc files
    assert run(["git", "status", "--porcelain", *TRACKED], repo) == ""  # same digests


def test_push_and_pull_round_trip_through_the_local_remote(repo: Path) -> None:
    run([sys.executable, "-m", "trtflow.cli", "prepare", "--root", str(repo)], repo)
    run([*DVC, "commit", "-f", *TRACKED], repo)  # fill the DVC cache from the workspace
    run([*DVC, "push", *TRACKED], repo)
    assert any((repo / ".trtflow" / "dvc-remote").rglob("*"))
    shutil.rmtree(repo / "data" / "digits")
    shutil.rmtree(repo / ".dvc" / "cache")
    run([*DVC, "pull", "data/digits.dvc"], repo)
    assert (repo / "data" / "digits" / "evaluation.npz").is_file()
    assert "up to date" in run([*DVC, "status", "data/digits.dvc"], repo)


def test_push_and_pull_round_trip_through_an_s3_remote(repo: Path, moto_endpoint: str) -> None:
    """The documented S3 setup; credentials come from the standard AWS environment."""
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="trtflow-dvc")
    run([*DVC, "remote", "add", "-d", "s3", "s3://trtflow-dvc/dvc"], repo)
    run([*DVC, "remote", "modify", "s3", "endpointurl", moto_endpoint], repo)
    write_digits(repo)
    run([*DVC, "commit", "-f", "data/digits.dvc"], repo)
    assert run(["git", "status", "--porcelain", "data/digits.dvc"], repo) == ""  # same digests
    run([*DVC, "push", "data/digits.dvc"], repo)
    listed = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(
        Bucket="trtflow-dvc", Prefix="dvc/")
    keys = [obj["Key"] for obj in listed.get("Contents", [])]
    assert len(keys) == 4 and sum(k.endswith(".dir") for k in keys) == 1  # 3 files + manifest
    shutil.rmtree(repo / "data" / "digits")
    shutil.rmtree(repo / ".dvc" / "cache")
    run([*DVC, "pull", "data/digits.dvc"], repo)
    assert (repo / "data" / "digits" / "calibration.npz").is_file()
    assert "up to date" in run([*DVC, "status", "data/digits.dvc"], repo)
    assert "in sync" in run([*DVC, "status", "--cloud", "data/digits.dvc"], repo)


def test_missing_data_says_to_run_dvc_pull(repo: Path) -> None:
    """A fresh clone has only the .dvc pointers: the stage fails before any work."""
    shutil.copytree(REPO / "params", repo / "params")
    out = run([sys.executable, "-m", "trtflow.cli", "stage", "calibrate", "--params",
               "params/digits.yaml", "--root", str(repo)], repo, expect_rc=2)
    assert "data/digits/calibration.npz does not exist (it is tracked by DVC: run `dvc pull`" \
        in " ".join(out.split())
    assert not (repo / ".trtflow" / "store" / "export").exists()  # nothing ran
