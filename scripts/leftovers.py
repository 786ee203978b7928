"""What `make test` must not leave behind: processes, temp folders, files outside the project's
ignored build output. `snapshot` before the tests, `check` after (exit 1 naming each leftover).

Allowed to remain: `.venv/`, `.trtflow/`, git-ignored build output (`build/`, caches).
Checked: processes that were not running before and whose parent is gone (re-parented to
init: a server a test started and never stopped); new `trtflow-tests-*`/`pytest-of-*`
entries in the temp dir; new untracked or ignored files in the repository other than
the allowed ones (an `mlruns/` written by MLflow's defaults, say).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ALLOWED_ROOTS = (".venv/", ".trtflow/", "build/", ".pytest_cache/", ".mypy_cache/",
                 ".ruff_cache/", ".gpu/", ".whl/", "examples/out/")
ALLOWED_ANYWHERE = ("__pycache__/", ".egg-info/")
TEMP_PREFIXES = ("trtflow-tests-", "pytest-of-")
# what the tests start: servers (Prefect, MLflow, moto, Dask), trtflow itself, the browser
OURS = ("python", "prefect", "uvicorn", "gunicorn", "mlflow", "moto", "dask", "trtflow",
        "chrom")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can read."""
    out: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (OSError, IndexError, ValueError):
            continue
        out[int(stat.parent.name)] = (ppid, cmd)
    return out


def _repo_extras(repo: Path) -> list[str]:
    text = subprocess.run(["git", "status", "--porcelain", "--ignored"],
                          cwd=repo, capture_output=True, text=True, check=True).stdout
    return sorted(line[3:] for line in text.splitlines() if line[:2] in ("??", "!!"))


def _temp_entries() -> list[str]:
    tmp = Path(tempfile.gettempdir())
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(TEMP_PREFIXES))


def snapshot(repo: Path) -> dict[str, object]:
    return {"pids": sorted(_processes()), "repo": _repo_extras(repo), "temp": _temp_entries()}


def leftovers(before: dict, repo: Path) -> list[str]:
    found = []
    old = set(before["pids"])
    for pid, (ppid, cmd) in _processes().items():
        if pid not in old and ppid == 1 and any(word in cmd for word in OURS):
            found.append(f"process {pid} still running, orphaned: {cmd[:160]}")
    for name in sorted(set(_temp_entries()) - set(before["temp"])):
        found.append(f"temp folder left: {Path(tempfile.gettempdir()) / name}")
    for path in sorted(set(_repo_extras(repo)) - set(before["repo"])):
        if not (path.startswith(ALLOWED_ROOTS)
                or any(f"/{d}" in f"/{path}" for d in ALLOWED_ANYWHERE)):
            found.append(f"file left in the repository: {path}")
    return found


def main(argv: list[str]) -> int:
    repo = Path(__file__).resolve().parent.parent
    if len(argv) == 3 and argv[1] == "snapshot":
        Path(argv[2]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[2]).write_text(json.dumps(snapshot(repo)))
        return 0
    if len(argv) == 3 and argv[1] == "check":
        found = leftovers(json.loads(Path(argv[2]).read_text()), repo)
        for line in found:
            print(f"make test left behind: {line}", file=sys.stderr)
        if not found:
            print("make test left no process, temp folder or stray file behind")
        return 1 if found else 0
    print("usage: leftovers.py snapshot|check FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
