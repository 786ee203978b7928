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


def _stored(store: ArtifactStore, key: str) -> Path:
    with store.writer("build", key) as tmp:
        (tmp / "engine.onnx").write_bytes(b"engine bytes" * 100)
        (tmp / "scales.json").write_text('{"x": 1.0}')
    art = store.get("build", key)
    assert art is not None
    return art.path


@pytest.mark.parametrize("damage", ["delete", "truncate", "rewrite"])
def test_damaged_artifact_is_never_served_on_a_cache_hit(tmp_path: Path, damage: str) -> None:
    from trtflow.errors import DamagedArtifactWarning

    store = ArtifactStore(tmp_path)
    path = _stored(store, "k1")
    target = path / "engine.onnx"
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    else:  # same size, other bytes: only the digest can tell
        target.write_bytes(b"x" * target.stat().st_size)
    with pytest.warns(DamagedArtifactWarning, match="engine.onnx"):
        assert store.get("build", "k1") is None
    assert not path.exists()  # set aside, so the stage's rebuild can publish under its key
    rebuilt = _stored(store, "k1")
    assert (rebuilt / "engine.onnx").read_bytes() == b"engine bytes" * 100


def test_intact_artifact_is_hashed_once_per_process(tmp_path: Path) -> None:
    from trtflow import store as store_module

    store = ArtifactStore(tmp_path)
    path = _stored(store, "k1")
    assert str(path) in store_module._VERIFIED  # the writer's own hash counts
    store_module._VERIFIED.clear()
    assert store.get("build", "k1") is not None
    assert store_module._VERIFIED[str(path)] == store_module.stat_signature(path)


def test_gc_removes_a_damaged_artifact_even_when_referenced(tmp_path: Path) -> None:
    from trtflow.store import collect_garbage

    store = ArtifactStore(tmp_path, hold_lock=False)  # gc needs the store's exclusive lock
    good, bad = _stored(store, "good"), _stored(store, "bad")
    (bad / "scales.json").write_text("{}")
    report = collect_garbage(tmp_path, {("build", "good"), ("build", "bad")}, set())
    assert good.exists() and not bad.exists()
    assert [p.name for p, _ in report.damaged] == ["bad"]
    assert "scales.json has sha256" in report.damaged[0][1]
