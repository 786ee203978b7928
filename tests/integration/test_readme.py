"""The README's quickstart and own-model blocks, run as written in a fresh project.

The commands are read from README.md itself (the ```bash block under each heading),
so the README and this test cannot drift: a command that stops working, or a new
one that does not work, fails here. The project is a copy of the tracked files with
the venv linked in as `make` creates it; the environment is a user's (the venv's
bin/ first on PATH, as `source .venv/bin/activate` gives), not the test session's:
Prefect, MLflow and the store live under the copy's own `.trtflow/`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import REPO
from .conftest import copy_tracked

pytestmark = pytest.mark.integration
VENV = Path(sys.executable).parent.parent
# what tests/conftest.py points at the session's temp dir: a user has none of it
SESSION_ENV = ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL",
               "MLFLOW_TRACKING_URI", "TRTFLOW_MLFLOW_ARTIFACTS", "TRTFLOW_TEST_DIR",
               "PREFECT_LOGGING_LEVEL", "VIRTUAL_ENV", "PYTHONPATH", "DVC_SITE_CACHE_DIR")


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```bash block after `## heading`, comments removed."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, f"README.md: no ```bash block under '## {heading}'"
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone: the tracked files as in the working tree, and the venv."""
    root = tmp_path_factory.mktemp("readme") / "trtflow"
    copy_tracked(root)
    (root / ".venv").symlink_to(VENV)
    return root


def user_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ENV}
    env["PATH"] = f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_block(root: Path, heading: str) -> list[tuple[str, str]]:
    """Each command of the block through bash in the project; (command, output)."""
    done = []
    for command in readme_block(heading):
        res = subprocess.run(["bash", "-c", command], cwd=root, env=user_env(root),
                             capture_output=True, text=True, timeout=600, check=False)
        output = res.stdout + res.stderr
        assert res.returncode == 0, f"README '{heading}': `{command}` exited " \
                                    f"{res.returncode}:\n{output[-3000:]}"
        done.append((command, output))
    return done


@pytest.mark.slow  # ~4.5 min on 2 shared cores (four digits runs, each starting Prefect)
def test_readme_quickstart_runs_as_written(project: Path) -> None:
    done = run_block(project, "Quickstart")
    outputs = dict(done)
    runs = [out for cmd, out in done if cmd.startswith("trtflow run")]
    assert len(runs) >= 3 and "stages run: 0," in runs[1]  # the second run: all cached
    assert "nothing new to log" in runs[1]
    assert "#/experiments/" in runs[0]  # where the engines are in the MLflow UI
    assert any("calibrate" in out for cmd, out in outputs.items() if "stage" in cmd)
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()


def test_readme_own_model_block_runs_as_written(project: Path) -> None:
    done = run_block(project, "Compile your own model")
    outputs = {cmd.split()[1] if cmd.startswith("trtflow") else cmd.split()[0]: out
               for cmd, out in done}
    params = (project / "params" / "sensor.yaml").read_text()
    assert "name: sensor" in params and "labels: label" in params
    assert "registered sensor-int8 v1" in outputs["run"]
    history = outputs["history"]
    assert "sensor-fp32" in history and "sensor-int8" in history and "production" in history
    predicted = next(out for cmd, out in done if "models predict" in cmd)
    predictions, _ = json.JSONDecoder().raw_decode(predicted[predicted.index('{"predictions"'):])
    assert len(predictions["predictions"]) == 2  # the two windows of request.json
    assert not (project / "mlflow.db").exists()  # the project's store, no stray file


@pytest.mark.slow  # one digits compile (cached after the quickstart) and the registry commands
def test_readme_lineage_block_runs_as_written_on_a_fresh_clone(project: Path) -> None:
    """`promote --version N --force` names a version a fresh clone has (only v1)."""
    for command in ("trtflow prepare", "trtflow run params/digits.yaml -t int8"):
        res = subprocess.run(["bash", "-c", command], cwd=project, env=user_env(project),
                             capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    done = dict(run_block(project, "Lineage: registry, promotion, publishing, DVC"))
    assert "digits-int8" in next(out for cmd, out in done.items() if "history" in cmd)
    forced = next(out for cmd, out in done.items() if "--force" in cmd)
    assert "v1" in forced
