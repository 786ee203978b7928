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


# --- the store stays inside itself (issue 18, class 7) ------------------------------

def test_symlinked_stage_folder_is_refused_and_reported(tmp_path: Path) -> None:
    from trtflow.errors import StoreError
    from trtflow.store import collect_garbage, verify_store

    store_dir, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store_dir.mkdir()
    elsewhere.mkdir()
    (store_dir / "export").symlink_to(elsewhere)
    store = ArtifactStore(store_dir, hold_lock=False)
    with pytest.raises(StoreError, match=r"export, a symlink to .*elsewhere"), \
            store.writer("export", "k1"):
        pass
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    report = verify_store(store_dir)
    assert [p.name for p, _ in report.corrupt] == ["export"]
    assert "stage folder is a symlink" in report.corrupt[0][1]
    collect_garbage(store_dir, set(), set())
    assert not (store_dir / "export").exists() and elsewhere.is_dir()  # the link, not its target


def test_symlinked_file_inside_an_artifact_fails_verification(tmp_path: Path) -> None:
    from trtflow.store import verify_store

    store = ArtifactStore(tmp_path / "store", hold_lock=False)
    with store.writer("export", "k1") as tmp:
        (tmp / "model.onnx").write_bytes(b"abc")
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"abc")
    model = tmp_path / "store" / "export" / "k1" / "model.onnx"
    model.unlink()
    model.symlink_to(secret)  # same bytes: the digests alone would call it intact
    report = verify_store(tmp_path / "store")
    assert len(report.corrupt) == 1 and "model.onnx is a symlink to" in report.corrupt[0][1]


def test_a_store_root_that_is_a_link_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "store").symlink_to(tmp_path / "disk")
    store = ArtifactStore(tmp_path / "store", hold_lock=False)
    with store.writer("export", "k1") as tmp:
        (tmp / "a").write_text("x")
    assert store.get("export", "k1") is not None
    assert (tmp_path / "disk" / "export" / "k1" / "a").is_file()
