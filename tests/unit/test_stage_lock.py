"""Two runs of the same stage key: the second waits for the first, and says so."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tasks.stages import computing


def test_a_second_run_of_the_same_stage_waits_and_says_for_whom(tmp_path: Path) -> None:
    messages: list[str] = []
    ctx: Any = SimpleNamespace(store=SimpleNamespace(root=tmp_path / "store"),
                               progress=messages.append)
    holding, release, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with computing(ctx, "validate", "int8", "k" * 64):
            holding.set()
            release.wait(30)
            order.append("first done")

    worker = threading.Thread(target=first)
    worker.start()
    assert holding.wait(30)
    threading.Timer(0.5, release.set).start()
    with computing(ctx, "validate", "int8", "k" * 64):
        order.append("second runs")
    worker.join(30)
    assert order == ["first done", "second runs"]
    assert len(messages) == 1 and messages[0].startswith("validate [int8]: waiting for process ")
    assert "computing the same stage; its result will be used" in messages[0]


def test_different_keys_do_not_wait(tmp_path: Path) -> None:
    messages: list[str] = []
    ctx: Any = SimpleNamespace(store=SimpleNamespace(root=tmp_path / "store"),
                               progress=messages.append)
    with computing(ctx, "build", "int8", "a" * 64), computing(ctx, "build", "int8", "b" * 64):
        pass
    assert messages == []
