"""`trtflow stage NAME`: one stage outside Prefect, for `dvc repro`.

Upstream stages are resolved through the same store and keys (run if missing),
then the requested artifact is copied to a fixed path (`build/<model>/<stage>`)
that DVC hashes. Same inputs, same key, same bytes as the Prefect flow.

`validate` also writes two small files next to its copy, for DVC's `metrics`
and `plots`: `<out>.metrics.json` (accuracy, agreement, p50 per batch size) and
`<out>.latency.json` (one row per batch size, engine vs baseline). They are
derived from the validation report, so they add nothing to the artifact itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trtflow.atomic import atomic_file
from trtflow.errors import ParamsError
from trtflow.params import load_params
from trtflow.pipeline import (
    CALIBRATE,
    CLEANUP,
    EXPORT,
    Context,
    StageResult,
    build_step,
    data_digest,
    run_step,
    validate_step,
)
from trtflow.store import META_FILE

STAGES = ("export", "cleanup", "calibrate", "build", "validate")


def resolve_stages(name: str, params_path: Path, target: str | None, root: Path
                   ) -> list[StageResult]:
    """Every stage up to `name` (cached ones are looked up, missing ones run), in order.

    `calibrate` needs no target (one calibration serves every int8 target); given
    one, it must be an int8 target.
    """
    if name not in STAGES:
        raise ParamsError(f"unknown stage '{name}'; expected one of {', '.join(STAGES)}")
    params = load_params(params_path)
    ctx = Context.create(params, root)
    if name in ("build", "validate") and not target:
        raise ParamsError(f"stage '{name}' needs --target (one of {sorted(params.targets)})")
    if name == "calibrate" and target and ctx.target(target).precision != "int8":
        raise ParamsError(f"stage 'calibrate' serves int8 targets; target '{target}' in "
                          f"{params_path} has precision '{ctx.target(target).precision}'")
    check_data(ctx, name, target)
    done = [run_step(EXPORT, ctx)]
    if name == "export":
        return done
    cleaned = run_step(CLEANUP, ctx, done[0])
    done.append(cleaned)
    if name == "cleanup":
        return done
    upstream = [cleaned]
    if name == "calibrate" or ctx.target(str(target)).precision == "int8":
        upstream.append(run_step(CALIBRATE, ctx, cleaned))
        done.append(upstream[-1])
    if name == "calibrate":
        return done
    assert target is not None
    built = run_step(build_step(target), ctx, *upstream)
    done.append(built)
    if name == "validate":
        done.append(run_step(validate_step(target), ctx, built, cleaned))
    return done


def check_data(ctx: Context, name: str, target: str | None) -> None:
    """Fail before any work if a data file this stage's key reads is missing.

    The error names the file and says to run `dvc pull` (a fresh clone has only
    the `.dvc` pointers), instead of failing after export and cleanup ran.
    """
    data = ctx.params.data
    int8 = name == "calibrate" or (
        name in ("build", "validate") and ctx.target(str(target)).precision == "int8")
    needed = [data.calibration if int8 else None, data.evaluation if name == "validate" else None]
    for source in needed:
        if source is not None:
            data_digest(ctx.root, source)


def default_output(root: Path, model: str, name: str, target: str | None) -> Path:
    """`build/<model>/<stage>[-target]`; calibration is per model, so never suffixed."""
    suffix = f"-{target}" if target and name != "calibrate" else ""
    return root / "build" / model / f"{name}{suffix}"


def run_single_stage(name: str, params_path: Path, target: str | None, output: Path | None,
                     root: Path) -> StageResult:
    result = resolve_stages(name, params_path, target, root)[-1]
    params = load_params(params_path)
    dest = output or default_output(root, params.model.name, name, target)
    _copy_artifact(Path(result.path), dest)
    if name == "validate":
        write_validation_summaries(result.report, dest)
    return result


def metrics_path(validate_out: Path) -> Path:
    return validate_out.with_name(f"{validate_out.name}.metrics.json")


def latency_plot_path(validate_out: Path) -> Path:
    return validate_out.with_name(f"{validate_out.name}.latency.json")


def validation_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a validation report, flat enough for `dvc metrics diff`."""
    quality = report["quality"]
    metrics: dict[str, Any] = {key: quality[key] for key in (
        "accuracy", "reference_accuracy", "agreement", "max_abs_error", "mean_abs_error")
        if key in quality}
    if "accuracy" in quality and "reference_accuracy" in quality:
        metrics["accuracy_drop"] = quality["reference_accuracy"] - quality["accuracy"]
    for label in ("engine", "baseline"):
        metrics[f"{label}_p50_ms"] = {f"bs{row['batch_size']}": row["p50_ms"]
                                      for row in report["latency"][label]}
    metrics["speedup_p50"] = {f"bs{int(bs)}": value
                              for bs, value in report["speedup_p50"].items()}
    metrics["gates_passed"] = bool(report["gates"]["passed"])
    return metrics


def latency_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per batch size: engine and baseline (PyTorch eager or ORT FP32) latency."""
    rows = []
    for engine, baseline in zip(report["latency"]["engine"], report["latency"]["baseline"],
                                strict=True):
        rows.append({"batch_size": engine["batch_size"],
                     "engine_p50_ms": engine["p50_ms"], "engine_p99_ms": engine["p99_ms"],
                     "baseline_p50_ms": baseline["p50_ms"],
                     "baseline_p99_ms": baseline["p99_ms"]})
    return rows


def write_validation_summaries(report: dict[str, Any], validate_out: Path) -> None:
    for path, body in ((metrics_path(validate_out), validation_metrics(report)),
                       (latency_plot_path(validate_out), latency_rows(report))):
        with atomic_file(path, "w") as f:
            f.write(json.dumps(body, indent=2) + "\n")


def _copy_artifact(src: Path, dest: Path) -> None:
    """Replace `dest` with the artifact's files: copy to a sibling, then swap by renames."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(META_FILE))
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
