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


def resolve_stages(name: str, params_path: Path, target: str | None, root: Path
                   ) -> list[StageResult]:
    """Every stage up to `name` (cached ones are looked up, missing ones run), in order."""
    if name not in STAGES:
        raise ParamsError(f"unknown stage '{name}'; expected one of {', '.join(STAGES)}")
    params = load_params(params_path)
    ctx = Context.create(params, root)
    if name in ("calibrate", "build", "validate") and not target:
        raise ParamsError(f"stage '{name}' needs --target (one of {sorted(params.targets)})")
    done = [run_step(EXPORT, ctx)]
    if name == "export":
        return done
    cleaned = run_step(CLEANUP, ctx, done[0])
    done.append(cleaned)
    if name == "cleanup":
        return done
    assert target is not None
    upstream = [cleaned]
    if ctx.target(target).precision == "int8":
        upstream.append(run_step(CALIBRATE, ctx, cleaned))
        done.append(upstream[-1])
    if name == "calibrate":
        return done
    built = run_step(build_step(target), ctx, *upstream)
    done.append(built)
    if name == "validate":
        done.append(run_step(validate_step(target), ctx, built, cleaned))
    return done


def run_single_stage(name: str, params_path: Path, target: str | None, output: Path | None,
                     root: Path) -> StageResult:
    result = resolve_stages(name, params_path, target, root)[-1]
    params = load_params(params_path)
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
