from __future__ import annotations

import threading
from pathlib import Path

import pytest

from trtflow.store import ArtifactStore, make_key, tree_digest


def test_writer_publishes_complete_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    key = make_key("export", "v1", inputs=["a"])
    with store.writer("export", key, {"note": "x"}) as tmp:
        (tmp / "model.onnx").write_bytes(b"abc")
    art = store.get("export", key)
    assert art is not None and art.file("model.onnx").read_bytes() == b"abc"
    assert art.meta()["note"] == "x" and art.digest == tree_digest(art.path)


def test_crash_inside_writer_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError), store.writer("export", "k1") as tmp:
        (tmp / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")
    assert store.get("export", "k1") is None
    assert list((tmp_path / "export").iterdir()) == []


def test_key_changes_with_any_part() -> None:
    base = make_key("build", "v1", inputs=["d1"], target={"precision": "fp32"})
    assert base == make_key("build", "v1", inputs=["d1"], target={"precision": "fp32"})
    assert base != make_key("build", "v2", inputs=["d1"], target={"precision": "fp32"})
    assert base != make_key("build", "v1", inputs=["d2"], target={"precision": "fp32"})
    assert base != make_key("build", "v1", inputs=["d1"], target={"precision": "int8"})


def test_concurrent_writers_of_one_key_yield_one_artifact(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path)
    barrier = threading.Barrier(4)

    def write() -> None:
        with store.writer("build", "same") as tmp:
            (tmp / "engine.onnx").write_bytes(b"identical bytes")
            barrier.wait()

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = sorted(p.name for p in (tmp_path / "build").iterdir())
    assert entries == ["same"]
    art = store.get("build", "same")
    assert art is not None and art.file("engine.onnx").read_bytes() == b"identical bytes"
