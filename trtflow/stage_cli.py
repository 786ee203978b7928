"""`trtflow stage NAME`: one stage outside Prefect, for `dvc repro`.

Upstream stages are resolved through the same store and keys (run if missing),
then the requested artifact is copied to a fixed path (`build/<model>/<stage>`)
that DVC hashes. Same inputs, same key, same bytes as the Prefect flow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trtflow.errors import ParamsError
from trtflow.params import load_params
from trtflow.pipeline import (
    CALIBRATE,
    CLEANUP,
    EXPORT,
    Context,
    StageResult,
    build_step,
    run_step,
    validate_step,
)
from trtflow.store import META_FILE

STAGES = ("export", "cleanup", "calibrate", "build", "validate")


def run_single_stage(name: str, params_path: Path, target: str | None, output: Path | None,
                     root: Path) -> StageResult:
    if name not in STAGES:
        raise ParamsError(f"unknown stage '{name}'; expected one of {', '.join(STAGES)}")
    params = load_params(params_path)
    ctx = Context.create(params, root)
    if name in ("calibrate", "build", "validate") and not target:
        raise ParamsError(f"stage '{name}' needs --target (one of {sorted(params.targets)})")
    exported = run_step(EXPORT, ctx)
    result = exported
    if name != "export":
        result = cleaned = run_step(CLEANUP, ctx, exported)
    if name in ("calibrate", "build", "validate"):
        assert target is not None
        upstream = [cleaned]
        if ctx.target(target).precision == "int8":
            upstream.append(run_step(CALIBRATE, ctx, cleaned))
        result = upstream[-1]
        if name in ("build", "validate"):
            result = built = run_step(build_step(target), ctx, *upstream)
        if name == "validate":
            result = run_step(validate_step(target), ctx, built, cleaned)
    dest = output or root / "build" / params.model.name / (f"{name}-{target}" if target else name)
    _copy_artifact(Path(result.path), dest)
    return result


def _copy_artifact(src: Path, dest: Path) -> None:
    """Replace `dest` with the artifact's files (atomically: copy to a sibling, rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(META_FILE))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
