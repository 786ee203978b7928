"""A stored result a step declares not reusable (a `best` race that decided nothing) is set
aside and redone, in the stage runner and in Prefect's cache policy alike."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trtflow.stage import Step, cached_result
from trtflow.stages.build import reusable
from trtflow.stages.build_report import BuildReport
from trtflow.store import ArtifactStore


def _report(winner: str | None, decided: bool = True) -> dict[str, Any]:
    """A build report as a backend writes it; with `winner`, a precision best selection."""
    report: dict[str, Any] = {"backend": "onnxruntime", "engine_bytes": 1}
    if winner is not None:
        report["selection"] = {"winner": winner, "why": "", "metric": "cosine",
                               "min_agreement": 0.99, "candidates": [], "decided": decided}
    return report


def _store_report(store: ArtifactStore, key: str, report: dict[str, Any]) -> None:
    with store.writer("build", key, {"version": "v", "report": report, "seconds": 1.0}) as tmp:
        (tmp / "engine.onnx").write_bytes(b"x")


def test_an_undecided_selection_is_not_reused_and_its_key_is_free_again(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ctx: Any = SimpleNamespace(store=store)
    step = Step("build", "v", lambda *a: {}, reusable=reusable)
    _store_report(store, "k", _report("ort-int8", decided=False))
    assert cached_result(step, ctx, "k") is None
    assert store.get("build", "k") is None  # set aside: a re-run can store its result
    _store_report(store, "k", _report("ov-int8"))
    found = cached_result(step, ctx, "k")
    assert found is not None and BuildReport.of(found).engine == "ov-int8"


def test_reports_without_a_selection_or_from_before_the_race_are_reused() -> None:
    assert reusable(_report(None))
    before_the_race = _report("a")  # build-5 reports: no `decided`, a decision implied
    del before_the_race["selection"]["decided"]
    assert reusable(before_the_race)
    assert not reusable(_report("a", decided=False))
