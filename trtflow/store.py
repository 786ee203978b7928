"""Content-addressed artifact store.

An artifact is a directory addressed by the sha256 of everything that shapes it:
stage name and version, the digests of its inputs, the params it reads and the
versions of the libraries that write it. A stage writes into a fresh temporary
directory inside the store and renames it into place only when complete, so a
crash never leaves a half artifact and two writers of one key never mix files
(the first rename wins; the loser's copy is discarded).

`artifact.json` (written last, inside the temp dir) records the tree digest and
the sha256 of every file, so `verify` can re-hash an artifact long after it was
written. Temp dirs carry the writer's PID in their name: one left by a killed
writer is recognised (its PID is gone) and swept by the next writer of that stage
or by `gc`. Every process that uses a store holds a shared lock on `<store>/.lock`
for as long as it lives; `gc` deletes only under the exclusive lock, so it never
removes an artifact that a running compile may still read.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trtflow.errors import DamagedArtifactWarning, StoreError

META_FILE = "artifact.json"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
STALE_PREFIX = ".stale-"
# Errors that mean "the store's disk cannot take this write", not a bug in a stage.
# store path -> (fd holding its shared lock, owning pid): one per process and store
_PROCESS_LOCKS: dict[str, tuple[int, int]] = {}
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
# artifact path -> stat signature of its files when this process last found it intact:
# a cache hit re-hashes an artifact once per process, and again only if a file changed.
_VERIFIED: dict[str, tuple[tuple[str, int, int], ...]] = {}


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path) -> tuple[str, dict[str, str]]:
    """Tree digest of a directory and the sha256 of each file (relative posix path)."""
    h = hashlib.sha256()
    files: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != META_FILE:
            rel = p.relative_to(root).as_posix()
            files[rel] = file_digest(p)
            h.update(rel.encode() + b"\0")
            h.update(files[rel].encode() + b"\n")
    return h.hexdigest(), files


def tree_digest(root: Path) -> str:
    """Digest of a file or directory: its relative paths and file digests, sorted."""
    if root.is_file():
        return file_digest(root)
    return hash_tree(root)[0]


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


def writer_pid(tmp_name: str) -> int | None:
    """The PID encoded in a temp dir name `.tmp-<key12>-<pid>-<random>`, if any."""
    parts = tmp_name.split("-")
    return int(parts[2]) if len(parts) >= 4 and parts[2].isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_abandoned(tmp: Path) -> bool:
    """A temp dir whose writer is gone (killed, crashed): never to be completed."""
    pid = writer_pid(tmp.name)
    return pid is None or not pid_alive(pid)


def disk_error(exc: BaseException) -> OSError | None:
    """The OSError (in `exc` or its causes) that says the disk refused a write."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class ArtifactStore:
    """`root/<stage>/<key>/` directories, each with an `artifact.json` written last."""

    def __init__(self, root: str | Path, hold_lock: bool = True) -> None:
        self.root = Path(root)
        self.hold_lock = hold_lock

    def _shared_lock(self) -> None:
        """Hold a shared lock on the store for this process's life (gc waits for it).

        One lock per process and store, however many `ArtifactStore`s point at it,
        so a long-lived process (a Prefect worker) does not collect descriptors.
        """
        if not self.hold_lock or not self.root.is_dir():
            return
        name = str(self.root.resolve())
        if _PROCESS_LOCKS.get(name, (None, -1))[1] == os.getpid():
            return
        fd = _open_lock(self.root)
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)  # blocks only while a gc is deleting
            _PROCESS_LOCKS[name] = (fd, os.getpid())

    def path_for(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def check_inside(self, stage: str, key: str | None = None) -> None:
        """Refuse a stage folder or artifact that is a symlink: the store must hold its own
        files, or a write would land (and a read come from) wherever the link points.
        The store root itself may be a link (a store on another disk): see the docs."""
        for path in (self.root / stage, *((self.path_for(stage, key),) if key else ())):
            if path.is_symlink():
                raise StoreError(f"the artifact store {self.root} holds {path}, a symlink to "
                                 f"{os.readlink(path)}; stage folders and artifacts must be "
                                 "real directories inside the store: remove the link (`trtflow "
                                 "store verify` lists every one)")

    def get(self, stage: str, key: str, verify: bool = True) -> Artifact | None:
        """The complete artifact for `key`, or None. With `verify` (the default) its files
        are re-hashed against `artifact.json` first (once per process while their size and
        mtime stay the same): a damaged artifact is moved aside, reported with a
        `DamagedArtifactWarning` and treated as missing, so the stage rebuilds it."""
        self._shared_lock()
        self.check_inside(stage, key)
        path = self.path_for(stage, key)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            digest = meta["digest"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise StoreError(f"store entry {path} has an unreadable {META_FILE} ({exc}); "
                             "run `trtflow store verify`, then `trtflow store gc` to "
                             "remove it") from None
        if verify and not self._intact(stage, path):
            return None
        return Artifact(stage, key, path, digest)

    def discard(self, stage: str, key: str) -> None:
        """Set a complete artifact aside (renamed, then removed), so a new one can be
        stored under its key; a reader that already holds it keeps a valid copy until
        the rename."""
        path = self.path_for(stage, key)
        aside = path.with_name(f"{STALE_PREFIX}{uuid.uuid4().hex}")
        try:
            path.rename(aside)
        except FileNotFoundError:
            return  # another process discarded it first
        _VERIFIED.pop(str(path), None)
        shutil.rmtree(aside, ignore_errors=True)

    def _intact(self, stage: str, path: Path) -> bool:
        signature = stat_signature(path)
        if _VERIFIED.get(str(path)) == signature:
            return True
        problem = verify_artifact(path)
        if problem is None:
            _VERIFIED[str(path)] = signature
            return True
        _VERIFIED.pop(str(path), None)
        aside = path.with_name(f"{STALE_PREFIX}{uuid.uuid4().hex}")
        try:
            path.rename(aside)  # the next writer of this key publishes a fresh copy
        except OSError as exc:
            raise StoreError(f"the {stage} artifact {path} is damaged ({problem}) and cannot "
                             f"be moved aside ({exc}); run `trtflow store gc` to remove "
                             "it") from None
        warnings.warn(f"the stored {stage} artifact {path.name[:12]} was damaged ({problem}); "
                      "it was set aside and is rebuilt", DamagedArtifactWarning, stacklevel=3)
        shutil.rmtree(aside, ignore_errors=True)
        return False

    @contextmanager
    def writer(self, stage: str, key: str, meta: dict[str, Any] | None = None
               ) -> Iterator[Path]:
        """Yield a temp dir to fill; on success it becomes the artifact for `key`.

        On any exception the temp dir is removed and nothing appears in the store;
        a full or read-only disk becomes a `StoreError` naming the store.
        """
        stage_dir = self.root / stage
        self.check_inside(stage, key)
        try:
            stage_dir.mkdir(parents=True, exist_ok=True)
            self._shared_lock()
            sweep_abandoned(stage_dir)
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{key[:12]}-{os.getpid()}-",
                                        dir=stage_dir))
        except OSError as exc:
            raise StoreError(f"cannot write to the artifact store {self.root} ({exc}); it must "
                             "be a writable directory: check its disk or mount, or point "
                             "--root at another project directory") from None
        try:
            yield tmp
            digest, files = hash_tree(tmp)
            body = {"stage": stage, "key": key, "digest": digest, **(meta or {}),
                    "files": files}
            (tmp / META_FILE).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
            final = self.path_for(stage, key)
            if self._publish(tmp, final):  # just hashed: no need to re-hash on the next get
                _VERIFIED[str(final)] = stat_signature(final)
        except Exception as exc:
            disk = disk_error(exc)
            if disk is None and not _nearly_full(stage_dir):
                raise
            why = str(disk) if disk else f"disk full: {exc}"
            raise StoreError(f"cannot write the {stage} artifact into the store {self.root} "
                             f"({why}); nothing was stored; free space or point --root at "
                             "a writable disk") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _publish(tmp: Path, final: Path) -> bool:
        """Rename `tmp` to `final`; False where another writer completed it first."""
        if (final / META_FILE).is_file():
            return False  # another writer completed the same key first; same inputs, same bytes
        try:
            os.rename(tmp, final)
            return True
        except OSError as exc:
            if (final / META_FILE).is_file():
                return False
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        # a damaged directory without metadata (never a complete write): move it aside
        aside = final.with_name(f"{STALE_PREFIX}{uuid.uuid4().hex}")
        try:
            final.rename(aside)
        except FileNotFoundError:
            pass
        os.rename(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)
        return True


def stat_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(relative path, size, mtime) of every file under an artifact: cheap to take, and it
    changes when a file is truncated, rewritten, added or removed."""
    out = []
    for p in sorted(path.rglob("*")):
        try:
            st = p.lstat()
        except OSError:
            continue
        out.append((p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _nearly_full(path: Path, margin: int = 64 * 1024) -> bool:
    """A write error on a disk this full is the disk's fault, whatever the library said."""
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def _open_lock(root: Path) -> int | None:
    """An fd on `<store>/.lock` to flock, or None where it cannot exist (read-only store)."""
    path = root / LOCK_FILE
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags, 0o644)
        except OSError:
            continue
    return None


def sweep_abandoned(stage_dir: Path) -> list[Path]:
    """Remove temp dirs of writers that no longer run (and leftovers moved aside)."""
    removed = []
    for entry in stage_dir.iterdir():
        if (entry.name.startswith(TMP_PREFIX) and is_abandoned(entry)) or \
                entry.name.startswith(STALE_PREFIX):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# --- verify and gc ---------------------------------------------------------------


@dataclass
class VerifyReport:
    """What `verify` found: complete artifacts checked, and every problem by path."""

    checked: int = 0
    corrupt: list[tuple[Path, str]] = field(default_factory=list)  # path, what is wrong
    in_progress: list[Path] = field(default_factory=list)  # temp dirs of live writers
    abandoned: list[Path] = field(default_factory=list)  # temp dirs of dead writers
    legacy: int = 0  # artifacts without per-file digests (checked by tree digest)

    @property
    def ok(self) -> bool:
        return not self.corrupt


def iter_entries(root: Path) -> Iterator[tuple[str, Path]]:
    """(stage, path) of every directory under `<store>/<stage>/`, sorted."""
    if not root.is_dir():
        return
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        for entry in sorted(stage_dir.iterdir()):
            yield stage_dir.name, entry


def _links(path: Path) -> list[Path]:
    """`path` itself if it is a symlink, else the symlinks anywhere under it."""
    if path.is_symlink():
        return [path]
    return [p for p in path.rglob("*") if p.is_symlink()] if path.is_dir() else []


def verify_artifact(path: Path) -> str | None:
    """Re-hash one artifact against its `artifact.json`; None if intact, else what is wrong."""
    meta_path = path / META_FILE
    links = _links(path)
    if links:
        return "; ".join(f"{p.relative_to(path.parent)} is a symlink to {os.readlink(p)}, not "
                         "a file the store holds" for p in links[:4])
    if not path.is_dir():
        return "not a directory"
    if not meta_path.is_file():
        return f"no {META_FILE} (not a complete artifact)"
    try:
        meta = json.loads(meta_path.read_text())
        recorded = meta["digest"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"unreadable {META_FILE}: {exc}"
    if meta.get("key") not in (None, path.name):
        return f"{META_FILE} says key {meta.get('key')}, but the directory is {path.name}"
    digest, files = hash_tree(path)
    expected = meta.get("files")
    if isinstance(expected, dict):
        problems = []
        for rel in sorted(set(expected) | set(files)):
            if rel not in files:
                problems.append(f"{rel} is missing")
            elif rel not in expected:
                problems.append(f"{rel} was not in the artifact when written")
            elif files[rel] != expected[rel]:
                problems.append(f"{rel} has sha256 {files[rel][:16]}…, recorded "
                                f"{expected[rel][:16]}…")
        if problems:
            return "; ".join(problems)
    if digest != recorded:
        return f"tree digest {digest[:16]}… differs from the recorded {recorded[:16]}…"
    return None


def verify_store(root: Path) -> VerifyReport:
    report = VerifyReport()
    if root.is_dir():
        for stage_dir in sorted(p for p in root.iterdir() if p.is_symlink()):
            report.checked += 1
            report.corrupt.append((stage_dir, f"stage folder is a symlink to "
                                   f"{os.readlink(stage_dir)}, outside the store's own files"))
    for _, entry in iter_entries(root):
        if entry.name.startswith(TMP_PREFIX):
            (report.abandoned if is_abandoned(entry) else report.in_progress).append(entry)
            continue
        if entry.name.startswith(STALE_PREFIX):
            report.abandoned.append(entry)
            continue
        problem = verify_artifact(entry)
        report.checked += 1
        if problem is not None:
            report.corrupt.append((entry, problem))
        elif "files" not in json.loads((entry / META_FILE).read_text()):
            report.legacy += 1
    return report


@contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """The store's exclusive lock, or StoreError when another process uses the store."""
    fd = _open_lock(root)
    if fd is None:
        raise StoreError(f"cannot lock the artifact store {root} (read-only or missing)")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"the artifact store {root} is in use by a running trtflow "
                             "process (a compile, a stage or a flow); nothing was removed: "
                             "run gc again when it has finished") from None
        yield
    finally:
        os.close(fd)


@dataclass
class GcReport:
    removed: list[Path] = field(default_factory=list)
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # removed: what was wrong
    kept: int = 0
    freed_bytes: int = 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def collect_garbage(root: Path, keep: set[tuple[str, str]], keep_stages: set[str],
                    dry_run: bool = False) -> GcReport:
    """Remove artifacts not in `keep` ((stage, key) pairs; whole `keep_stages` stay),
    damaged entries (a kept artifact is re-hashed first, as `verify` does), and temp dirs
    of dead writers. Runs under the exclusive lock, so
    no trtflow process is using the store meanwhile; `dry_run` only lists."""
    report = GcReport()
    with exclusive(root):
        for link in [p for p in root.iterdir() if p.is_symlink()] if root.is_dir() else []:
            report.removed.append(link)  # a linked stage folder: drop the link, not its target
            if not dry_run:
                link.unlink()
        for stage, entry in iter_entries(root):
            if entry.is_symlink():
                report.removed.append(entry)
                if not dry_run:
                    entry.unlink()
                continue
            if entry.name.startswith(TMP_PREFIX) and not is_abandoned(entry):
                report.kept += 1  # cannot happen under the lock; never touch a live writer
                continue
            temp = entry.name.startswith((TMP_PREFIX, STALE_PREFIX))
            wanted = stage in keep_stages or (stage, entry.name) in keep
            problem = None if temp or not wanted else verify_artifact(entry)
            if not temp and wanted and problem is None:
                report.kept += 1
                continue
            if problem is not None:
                report.damaged.append((entry, problem))
            report.removed.append(entry)
            report.freed_bytes += _size(entry)
            if not dry_run:
                # rename first: a reader never sees a half-deleted artifact under its key
                doomed = entry if temp else entry.rename(
                    entry.with_name(f"{STALE_PREFIX}{uuid.uuid4().hex}"))
                shutil.rmtree(doomed, ignore_errors=True)
    return report
