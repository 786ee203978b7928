"""kill -9 a compile at seeded random points; the store must hold no partial artifact and
a re-run must resume and finish with the digests of an uninterrupted run.

20 trials: most kill `trtflow stage validate -t int8` (no Prefect: export, cleanup,
calibrate, build, validate of the digits demo), every fourth kills `trtflow run -t
int8` (Prefect, its server and MLflow included: the whole process group). A kill
point is a time in the reference run's span, or "just after the k-th artifact
appeared" plus a random delay, so late stages and the moment of a rename are hit
too. The default run does three stage trials; `make reliability` all 20.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import TRTFLOW, fast_params, new_project, project_env, trtflow

TRIALS = 20
DEFAULT_TRIALS = sorted(random.Random(8).sample([i for i in range(TRIALS) if i % 4 != 3], 1))
STAGE_CMD = ["stage", "validate", "--params", "p.yaml", "-t", "int8"]
RUN_CMD = ["run", "p.yaml", "-t", "int8"]


def artifacts(root: Path) -> dict[tuple[str, str], dict]:
    """(stage, key) -> artifact.json of every complete artifact in the project's store.
    Writers' temp dirs (`.tmp-*`: pathlib's glob matches dot names) are not artifacts:
    their files may be half-written while a writer runs."""
    store = root / ".trtflow" / "store"
    return {(p.parent.parent.name, p.parent.name): json.loads(p.read_text())
            for p in store.glob("*/*/artifact.json")
            if not p.parent.name.startswith(".") and not p.parent.parent.name.startswith(".")}


def digests(root: Path) -> dict[tuple[str, str], str]:
    """Digests that must be reproducible: every stage but validate (latency is measured)."""
    return {k: m["digest"] for k, m in artifacts(root).items() if k[0] != "validate"}


@dataclass
class Reference:
    digests: dict[tuple[str, str], str]
    seconds: float
    count: int  # artifacts a complete run leaves


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, digits_data: Path) -> Reference:
    root = new_project(tmp_path_factory.mktemp("crash"), digits_data, "reference")
    fast_params(root)
    start = time.perf_counter()
    res = trtflow(*STAGE_CMD, cwd=root)
    assert res.returncode == 0, res.stderr
    found = artifacts(root)
    return Reference(digests(root), time.perf_counter() - start, len(found))


def kill_at(cmd: list[str], root: Path, rng: random.Random, span: float, count: int
            ) -> str:
    """Start `cmd`, kill -9 its process group at a seeded point; say where it was killed."""
    proc = subprocess.Popen([TRTFLOW, *cmd], cwd=root, env=project_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    if rng.random() < 0.5:
        at, after = rng.uniform(0.5, span), None
        where = f"at {at:.1f} s"
    else:
        at, after = rng.uniform(0.0, 0.4), rng.randrange(count)
        where = f"{at:.2f} s after artifact {after + 1} of {count}"
    start = time.monotonic()
    while proc.poll() is None:
        if after is not None and len(artifacts(root)) > after:
            time.sleep(at)
            break
        if after is None and time.monotonic() - start >= at:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        return f"finished before the kill point ({where})"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"killed {where} ({len(artifacts(root))} artifacts complete)"


def trial_ids(slow: bool) -> list:
    marks = [pytest.mark.slow] if slow else []
    return [pytest.param(i, id=f"trial{i}-{'run' if i % 4 == 3 else 'stage'}", marks=marks)
            for i in range(TRIALS) if (i in DEFAULT_TRIALS) != slow]


@pytest.mark.parametrize("trial", trial_ids(False) + trial_ids(True))
def test_kill_9_then_resume(trial: int, reference: Reference, digits_data: Path,
                            tmp_path: Path) -> None:
    rng = random.Random(1000 + trial)
    root = new_project(tmp_path, digits_data, "project")
    fast_params(root)
    cmd = RUN_CMD if trial % 4 == 3 else STAGE_CMD
    span = reference.seconds * (2.5 if cmd is RUN_CMD else 1.0)  # Prefect and MLflow start
    where = kill_at(cmd, root, rng, span, reference.count)

    # 1. no partial artifact: whatever is in the store verifies
    verify = trtflow("store", "verify", cwd=root)
    assert verify.returncode == 0, f"{where}: {verify.stdout}{verify.stderr}"
    before = {k: (root / ".trtflow" / "store" / k[0] / k[1] / "artifact.json").stat().st_ino
              for k in artifacts(root)}
    for key, digest in digests(root).items():
        assert reference.digests.get(key) == digest, f"{where}: {key} differs from the reference"

    # 2. the re-run resumes (complete artifacts are reused untouched) and finishes
    res = trtflow(*cmd, cwd=root)
    assert res.returncode == 0, f"{where}: {res.stderr}"
    for key, inode in before.items():
        meta = root / ".trtflow" / "store" / key[0] / key[1] / "artifact.json"
        assert meta.stat().st_ino == inode, f"{where}: {key} was rebuilt, not reused"

    # 3. same digests as the uninterrupted run, a clean store, no leftovers after gc
    assert digests(root) == reference.digests, where
    assert trtflow("store", "verify", cwd=root).returncode == 0
    gc = trtflow("store", "gc", "--no-mlflow", "--keep", "p.yaml", cwd=root)
    assert gc.returncode == 0, gc.stderr
    store = root / ".trtflow" / "store"
    assert [p for p in store.glob("*/.*")] == [], where
    assert digests(root) == reference.digests, f"{where}: gc removed a referenced artifact"
