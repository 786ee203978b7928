"""Content-addressed artifact store.

An artifact is a directory addressed by the sha256 of everything that shapes it:
stage name and version, the digests of its inputs, the params it reads and the
versions of the libraries that write it. A stage writes into a fresh temporary
directory inside the store and renames it into place only when complete, so a
crash never leaves a half artifact and two writers of one key never mix files
(the first rename wins; the loser's copy is discarded).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtflow.errors import StoreError

META_FILE = "artifact.json"


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of a file or directory: its relative paths and file digests, sorted."""
    if root.is_file():
        return file_digest(root)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != META_FILE:
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(file_digest(p).encode() + b"\n")
    return h.hexdigest()


def make_key(stage: str, version: str, **parts: Any) -> str:
    """The cache key of one stage run: sha256 over a canonical JSON of its parts."""
    payload = {"stage": stage, "version": version, **parts}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    """A completed artifact in the store."""

    stage: str
    key: str
    path: Path
    digest: str

    def file(self, name: str) -> Path:
        return self.path / name

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text())


class ArtifactStore:
    """`root/<stage>/<key>/` directories, each with an `artifact.json` written last."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Artifact | None:
        path = self.path_for(stage, key)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"store entry {path} has an unreadable {META_FILE}: {exc}") from None
        return Artifact(stage, key, path, meta["digest"])

    @contextmanager
    def writer(self, stage: str, key: str, meta: dict[str, Any] | None = None
               ) -> Iterator[Path]:
        """Yield a temp dir to fill; on success it becomes the artifact for `key`.

        On any exception the temp dir is removed and nothing appears in the store.
        """
        stage_dir = self.root / stage
        try:
            stage_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:12]}-", dir=stage_dir))
        except OSError as exc:
            raise StoreError(f"cannot write to the artifact store {self.root}: {exc}") from None
        try:
            yield tmp
            digest = tree_digest(tmp)
            body = {"stage": stage, "key": key, "digest": digest, **(meta or {})}
            (tmp / META_FILE).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
            self._publish(tmp, self.path_for(stage, key))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        if (final / META_FILE).is_file():
            return  # another writer completed the same key first; same inputs, same bytes
        if final.exists():  # a stale directory without metadata: move it aside, then replace
            shutil.rmtree(final.rename(final.with_name(f".stale-{uuid.uuid4().hex}")))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / META_FILE).is_file():
                raise
