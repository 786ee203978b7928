"""Every bad input of the catalogue, through the real CLI in a subprocess.

Each must give one clear message (the excerpt), a non-zero exit code, no
traceback, and leave nothing half-written in the project or its store.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trtflow.store import file_digest, verify_store

from ..conftest import REPO
from .catalogue import ALSO, CASES, CORRUPT_ON_PURPOSE, STATE_CHANGES, Call, Case, render_table
from .conftest import new_project, project_env, trtflow

# (project, the call, its result, the project's state before and after the call)
Result = tuple[Path, Call, subprocess.CompletedProcess[str] | None, dict, dict]

_TABLES = {"mlflow": ("mlflow.db", ("runs", "metrics", "registered_models", "model_versions")),
           "prefect": ("prefect/prefect.db", ("flow_run", "task_run"))}


def _row_counts(db: Path, tables: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(tables, 0)
    if not db.is_file():
        return counts
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table in tables:
            if table in present:
                counts[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return counts


def project_state(root: Path) -> dict:
    """What a rejected input must leave as it was: every file of the store (by sha256;
    links by target), MLflow's runs/metrics/registry rows, Prefect's flow and task runs
    and its persisted results."""
    state = root / ".trtflow"
    store: dict[str, str] = {}
    if (state / "store").is_dir():
        for p in sorted((state / "store").rglob("*")):
            rel = str(p.relative_to(state / "store"))
            if p.is_symlink():
                store[rel] = f"-> {os.readlink(p)}"
            elif p.is_file() and p.name != ".lock" and os.access(p, os.R_OK):
                store[rel] = file_digest(p)
    results = state / "prefect" / "results"
    return {"store": store,
            **{name: _row_counts(state / db, tables) for name, (db, tables) in _TABLES.items()},
            "prefect_results": sorted(str(p.relative_to(results)) for p in results.rglob("*"))
            if results.is_dir() else []}


@pytest.fixture(scope="module")
def results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
            digits_data: Path) -> Iterator[dict[str, Result]]:
    """Set the selected cases up (serially), run their CLI calls in parallel, undo mounts."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and "case" in item.callspec.params}
    parent = tmp_path_factory.mktemp("bad-inputs")
    calls: dict[str, tuple[Path, Call]] = {}
    for case in CASES:
        if case.id not in selected:
            continue
        root = new_project(parent, digits_data, case.id)
        calls[case.id] = (root, case.setup(root))

    def run(item: tuple[str, tuple[Path, Call]]) -> tuple[str, Result]:
        case_id, (root, call) = item
        if call.skip:
            return case_id, (root, call, None, {}, {})
        before = {**project_state(root), "outside": outside_entries(root)}
        start = time.perf_counter()
        res = trtflow(*call.args, cwd=root, env=project_env(**call.env), timeout=300)
        (root / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
        return case_id, (root, call, res, before,
                         {**project_state(root), "outside": outside_entries(root)})

    try:
        with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
            yield dict(pool.map(run, calls.items()))
    finally:
        for _, call in calls.values():
            if call.teardown:
                call.teardown()


def outside_entries(root: Path) -> list[str]:
    """What lies beside the project (its parent holds only the cases' projects and what
    their setups put there): a call that writes outside its project adds an entry here
    (another case's call writes inside its own project, so the listing is stable)."""
    return sorted(p.name for p in root.parent.iterdir())


def half_written(root: Path) -> list[str]:
    """Temp files of atomic writers, and store entries that are not complete artifacts."""
    problems = [str(p.relative_to(root)) for p in root.rglob("*")
                if p.name.startswith((".tmp-", ".stale-"))
                or (p.name.startswith(".") and p.name.endswith(".tmp"))
                or ".fetch-" in p.name]
    store = root / ".trtflow" / "store"
    if store.is_dir() and os.access(store, os.W_OK):
        report = verify_store(store)
        problems += [f"{p}: {why}" for p, why in report.corrupt]
    return problems


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow
                                                else []) for c in CASES])
def test_bad_input_fails_cleanly(case: Case, results: dict[str, Result]) -> None:
    root, call, res, before, after = results[case.id]
    if res is None:
        pytest.skip(call.skip or "not run")
    assert " ".join(call.args).startswith(case.command), "the table names another command"
    assert res.returncode == case.exit_code, res.stderr
    message = " ".join(res.stderr.split())  # rich wraps long lines
    assert case.expect in message, res.stderr
    if case.id in ALSO:
        assert ALSO[case.id] in message, res.stderr
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert res.stderr.count("error:") == 1, res.stderr
    if case.id not in CORRUPT_ON_PURPOSE:  # those stores are damaged by the setup
        assert half_written(root) == []
    may_change = STATE_CHANGES.get(case.id, set())  # stages that ran by design (see there)
    assert after["mlflow"]["model_versions"] == before["mlflow"]["model_versions"], \
        "a rejected engine was registered"
    assert {k: v for k, v in after.items() if k not in may_change} == \
        {k: v for k, v in before.items() if k not in may_change}, \
        "a rejected input changed the store, MLflow or Prefect, or wrote outside the project"


def test_bad_input_count() -> None:
    assert len(CASES) >= 90
    assert len({c.id for c in CASES}) == len(CASES)


def test_docs_table_is_the_catalogue() -> None:
    doc = REPO / "docs" / "bad_inputs.md"
    assert doc.read_text() == render_table(), \
        "regenerate: python -m tests.reliability.catalogue > docs/bad_inputs.md"


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("model: {name: x, source: {onnx: m.onnx}}\n")
    plain = trtflow("run", "p.yaml", cwd=tmp_path, env=project_env())
    debug = trtflow("--debug", "run", "p.yaml", cwd=tmp_path, env=project_env())
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert "model.source.onnx: file" in debug.stderr
