from __future__ import annotations

from pathlib import Path

import yaml

from trtflow.track.mlflow_log import dvc_digest

from ..conftest import REPO


def test_dvc_digest_reads_the_covering_dvc_file() -> None:
    recorded = yaml.safe_load((REPO / "data" / "digits.dvc").read_text())["outs"][0]["md5"]
    assert dvc_digest(REPO, "data/digits/evaluation.npz") == recorded
    assert dvc_digest(REPO, "data/nowhere/x.npz") is None


def test_untracked_path_outside_root(tmp_path: Path) -> None:
    assert dvc_digest(tmp_path, "data/x.npz") is None
