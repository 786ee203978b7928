"""A stored result a step declares not reusable (a `best` race that decided nothing) is set
aside and redone, in the stage runner and in Prefect's cache policy alike."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from trtflow.stage import Step, cached_result
from trtflow.stages.build import reusable
from trtflow.store import ArtifactStore


def _store_report(store: ArtifactStore, key: str, report: dict[str, Any]) -> None:
    with store.writer("build", key, {"version": "v", "report": report, "seconds": 1.0}) as tmp:
        (tmp / "engine.onnx").write_bytes(b"x")


def test_an_undecided_selection_is_not_reused_and_its_key_is_free_again(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    ctx: Any = SimpleNamespace(store=store)
    step = Step("build", "v", lambda *a: {}, reusable=reusable)
    undecided = {"selection": {"winner": "ort-int8", "decided": False}}
    _store_report(store, "k", undecided)
    assert cached_result(step, ctx, "k") is None
    assert store.get("build", "k") is None  # set aside: a re-run can store its result
    _store_report(store, "k", {"selection": {"winner": "ov-int8", "decided": True}})
    found = cached_result(step, ctx, "k")
    assert found is not None and found.report["selection"]["winner"] == "ov-int8"


def test_reports_without_a_selection_or_from_before_the_race_are_reused() -> None:
    assert reusable({"backend": "onnxruntime"})
    assert reusable({"selection": {"winner": "a"}})  # build-5 reports: decided implied
    assert not reusable({"selection": {"winner": "a", "decided": False}})
