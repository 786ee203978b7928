from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ..conftest import REPO
from .s3_server import MotoServer, isolate_aws_env


def copy_tracked(dest: Path) -> None:
    """The project's tracked files as they are in the working tree: a fresh clone's
    contents, including uncommitted edits (what `make test` should exercise)."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                             check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def write_params(root: Path, name: str = "digits", **overrides: dict) -> Path:
    """A copy of params/NAME.yaml with sections overridden (fast validate settings)."""
    params = yaml.safe_load((REPO / "params" / f"{name}.yaml").read_text())
    params.setdefault("validate", {}).update({"warmup": 2, "iterations": 20, "max_seconds": 2})
    for section, values in overrides.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:
            params[section] = values
    tag = hashlib.sha256(repr(sorted(overrides.items())).encode()).hexdigest()[:8]
    path = root / f"{name}-{tag}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def digits_root(demo_root: Path) -> Path:
    return demo_root


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server for this module, with the AWS environment pointing at it."""
    tmp = tmp_path_factory.mktemp("moto")
    server = MotoServer(tmp / "moto.log").start()
    try:
        with pytest.MonkeyPatch.context() as env:
            isolate_aws_env(env, tmp)
            env.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
            yield server.endpoint
    finally:
        server.stop()
