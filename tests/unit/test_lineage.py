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


def _run(run_id: str, status: str, **tags: str) -> object:
    from types import SimpleNamespace

    return SimpleNamespace(info=SimpleNamespace(run_id=run_id, status=status),
                           data=SimpleNamespace(tags=tags))


def test_a_cached_rerun_links_only_to_a_compile_logged_to_its_end() -> None:
    """A compile whose process died mid-logging (RUNNING) or raised (FAILED, no gate
    failure) is not reused: the re-run logs complete runs instead."""
    from trtflow.track.mlflow_log import _complete

    def compile_runs(parent: str, child: str, **child_tags: str) -> list:
        return [_run("p", parent), _run("c", child, **{"mlflow.parentRunId": "p"}, **child_tags)]

    done = compile_runs("FINISHED", "FINISHED")
    assert _complete(done[0], done)
    gated = compile_runs("FAILED", "FAILED", **{"trtflow.gate_failure": "min_speedup"})
    assert _complete(gated[0], gated)
    for runs in (compile_runs("RUNNING", "FINISHED"), compile_runs("FAILED", "FAILED"),
                 compile_runs("FINISHED", "RUNNING"), [_run("p", "FINISHED")]):
        assert not _complete(runs[0], runs)
