"""The README's blocks, run as written in a fresh clone.

The commands are read from README.md itself (the ```bash blocks under each heading),
so the README and this test cannot drift: a command that stops working, or a new
one that does not work, fails here. The project is a git repository of the tracked
files (one commit, as a clone has) with the venv linked in as `make` creates it; the
environment is a user's (the venv's bin/ first on PATH, as `source .venv/bin/activate`
gives), not the test session's: Prefect, MLflow and the store live under the copy's
own `.trtflow/`. A block's `export`s carry to its next commands, as in one shell.

The one substitution: the Lineage section's local S3 (`moto_server -p 9000 &`) is this
test's moto server process on a free port (tests/integration/s3_server.py), so the
block's `127.0.0.1:9000` becomes that port; every other command runs as written.
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
from .s3_server import UNSET_ENV, MotoServer

pytestmark = pytest.mark.integration
VENV = Path(sys.executable).parent.parent
# what tests/conftest.py points at the session's temp dir: a user has none of it
SESSION_ENV = ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL",
               "MLFLOW_TRACKING_URI", "TRTFLOW_MLFLOW_ARTIFACTS", "TRTFLOW_TEST_DIR",
               "PREFECT_LOGGING_LEVEL", "VIRTUAL_ENV", "PYTHONPATH", "DVC_SITE_CACHE_DIR")


def readme_blocks(heading: str) -> list[list[str]]:
    """The commands of each ```bash block under `## heading`, comments removed."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, f"README.md: no ```bash block under '## {heading}'"
    found = []
    for block in blocks:
        commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
        found.append([c for c in commands if c and not c.startswith("#")])
    return found


def readme_block(heading: str) -> list[str]:
    """The commands of the first ```bash block under `## heading`."""
    return readme_blocks(heading)[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh clone: the tracked files as in the working tree, and the venv."""
    root = tmp_path_factory.mktemp("readme") / "trtflow"
    copy_tracked(root)
    for git in (["init", "-q"], ["config", "user.email", "user@example.com"],
                ["config", "user.name", "A User"], ["add", "-A"],
                ["commit", "-qm", "clone"]):
        subprocess.run(["git", *git], cwd=root, check=True, capture_output=True)
    (root / ".venv").symlink_to(VENV)
    return root


def user_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SESSION_ENV and k not in UNSET_ENV and not k.startswith("AWS_")}
    env["PATH"] = f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # no ~/.aws of whoever runs the tests; DVC's site cache (its repo index) in the project,
    # not /var/tmp/dvc, so the suite leaves nothing outside
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(root / ".no-aws")
    env["DVC_SITE_CACHE_DIR"] = str(root / ".trtflow" / "dvc-site")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run_block(root: Path, heading: str, commands: list[str] | None = None,
              env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """Each command of the block through bash in the project; (command, output). What a
    command exports is seen by the next ones, as in one shell (and left in `env`, when
    given, for the next block)."""
    done, shell = [], dict(env or user_env(root))
    exported = root / ".trtflow" / "readme-env"
    exported.parent.mkdir(parents=True, exist_ok=True)
    for command in commands if commands is not None else readme_block(heading):
        script = f"{command}\nstatus=$?; env -0 > {exported}; exit $status"
        res = subprocess.run(["bash", "-c", script], cwd=root, env=shell,
                             capture_output=True, text=True, timeout=900, check=False)
        output = res.stdout + res.stderr
        assert res.returncode == 0, f"README '{heading}': `{command}` exited " \
                                    f"{res.returncode}:\n{output[-3000:]}"
        shell = dict(item.split("=", 1) for item in exported.read_text().split("\0") if
                     "=" in item)
        done.append((command, output))
    exported.unlink()
    if env is not None:
        env.clear()
        env.update(shell)
    return done


@pytest.mark.slow  # ~4.5 min on 2 shared cores (four digits runs, each starting Prefect)
def test_readme_quickstart_runs_as_written(project: Path) -> None:
    done = run_block(project, "Quickstart")
    outputs = dict(done)
    runs = [out for cmd, out in done if cmd.startswith("trtflow run")]
    assert len(runs) >= 3 and "stages run: 0," in runs[1]  # the second run: all cached
    assert "nothing new to log" in runs[1]
    assert "nothing new to log" in runs[2]  # `-t int8`: its engine's earlier run, linked
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


LOCAL_S3 = ".venv/bin/moto_server -p 9000 &"
LINEAGE = "Lineage: registry, promotion, publishing, DVC"


@pytest.mark.slow  # a digits compile (cached after the quickstart), dvc repro and an experiment
def test_readme_lineage_publish_and_dvc_blocks_run_as_written_on_a_fresh_clone(
        project: Path, tmp_path: Path) -> None:
    """The registry block (`promote --version N --force` names a version a fresh clone
    has: only v1), publishing to the local S3 and fetching back by registry alias, and
    DVC: repro, commit, an experiment, then `git checkout` restores the params."""
    for command in ("trtflow prepare", "trtflow run params/digits.yaml -t int8"):
        res = subprocess.run(["bash", "-c", command], cwd=project, env=user_env(project),
                             capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    registry, publishing, dvc = readme_blocks(LINEAGE)
    done = dict(run_block(project, LINEAGE, registry))
    assert "digits-int8" in next(out for cmd, out in done.items() if "history" in cmd)
    assert "v1" in next(out for cmd, out in done.items() if "--force" in cmd)

    assert publishing[0] == LOCAL_S3 and os.access(project / LOCAL_S3.split()[0], os.X_OK)
    server = MotoServer(tmp_path / "moto.log").start()
    try:
        local = [c.replace("127.0.0.1:9000", f"127.0.0.1:{server.port}")
                 for c in publishing[1:]]
        shell = user_env(project)
        done = dict(run_block(project, LINEAGE, local, shell))
        published = next(out for cmd, out in done.items() if "trtflow publish" in cmd)
        uri = re.search(r"published: (s3://my-engines/trtflow/digits/int8-[0-9a-f]{12}/)",
                        published)
        assert uri, published
        assert "fetch it with: trtflow fetch digits int8-" in published
        history = next(out for cmd, out in done.items() if "history" in cmd)
        assert f"published {uri.group(1)}" in " ".join(history.split())
        fetched = project / "engines" / "digits-int8"
        manifest = json.loads((fetched / "manifest.json").read_text())
        assert manifest["metadata"]["target"] == "int8" and (fetched / "engine.onnx").is_file()

        params_before = (project / "params" / "digits.yaml").read_bytes()
        local = [c.replace("127.0.0.1:9000", f"127.0.0.1:{server.port}") for c in dvc]
        assert shell["AWS_ENDPOINT_URL_S3"] == server.endpoint  # the same shell goes on
        done = dict(run_block(project, LINEAGE, local, shell))
        experiment = next(out for cmd, out in done.items() if "exp run" in cmd)
        assert "calibrate" in experiment
        assert "validate-int8.metrics.json" in next(
            out for cmd, out in done.items() if "metrics diff" in cmd)
        # the experiment wrote percentile into the params; git checkout put them back
        assert (project / "params" / "digits.yaml").read_bytes() == params_before
        assert "percentile" not in (project / "params" / "digits.yaml").read_text()
        import boto3

        s3 = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
        pushed = s3.list_objects_v2(Bucket="my-engines", Prefix="dvc/").get("KeyCount", 0)
        assert pushed >= 2  # the demo data's objects (dvc push)
    finally:
        server.stop()
