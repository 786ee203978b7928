"""Reliability tests: `trtflow` run as a user runs it, in subprocesses on temp projects.

Each project gets its own `.trtflow/` (store, MLflow sqlite, Prefect home): the
session-wide settings of tests/conftest.py are removed from the child's
environment so the CLI's own project defaults apply.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..conftest import REPO

TRTFLOW = str(Path(sys.executable).with_name("trtflow"))
_SESSION_VARS = ("PREFECT_", "MLFLOW_", "TRTFLOW_", "AWS_")


def project_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give the CLI: no test-session overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SESSION_VARS)}
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"  # busy 2-core CI
    env.update(extra)
    return env


def trtflow(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRTFLOW, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env or project_env())


def fast_params(root: Path, name: str = "p.yaml", targets: tuple[str, ...] = ("fp32", "int8"),
                **sections: Any) -> Path:
    """params/digits.yaml with short latency series (and `sections` merged in)."""
    params = yaml.safe_load((REPO / "params" / "digits.yaml").read_text())
    params["targets"] = {t: params["targets"][t] for t in targets}
    params["validate"].update(warmup=1, iterations=5, max_seconds=1, batch_sizes=[1])
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values} if isinstance(values, dict) \
            else values
    path = root / name
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/digits/*.npz written once per session (the demo data, deterministic)."""
    from trtflow.sources.builtin import _save_npz, digits_splits

    root = tmp_path_factory.mktemp("digits-data")
    for split, (images, labels) in digits_splits().items():
        _save_npz(root / "data" / "digits" / f"{split}.npz", image=images, label=labels)
    return root / "data"


def new_project(parent: Path, data: Path, name: str) -> Path:
    root = parent / name
    root.mkdir(parents=True)
    shutil.copytree(data, root / "data")
    return root


def leftovers(root: Path) -> list[Path]:
    """Half-written files anywhere in a project: temp files/dirs of atomic writers."""
    found = []
    for p in root.rglob("*"):
        name = p.name
        if name.startswith((".tmp-", ".stale-")) or (name.startswith(".") and (
                name.endswith(".tmp") or ".fetch-" in name)):
            found.append(p)
    return found
