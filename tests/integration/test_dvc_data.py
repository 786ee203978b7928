"""The demo data is DVC-tracked: `trtflow prepare` regenerates exactly the tracked bytes,
and `dvc push` / `dvc pull` round-trip it through the default local remote (real git, dvc)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO

pytestmark = pytest.mark.integration
DVC = [sys.executable, "-m", "dvc"]
TRACKED = ["data/digits.dvc", "data/minilm.dvc", "data/resnet18.dvc"]


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_SITE_CACHE_DIR": str(cwd / ".dvc-site"), "DVC_NO_ANALYTICS": "1"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout


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
