"""`trtflow stage NAME`: one stage outside Prefect, for `dvc repro`.

Upstream stages are resolved by walking the same plan (`trtflow.plan`) through the
same store and keys (run if missing),
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
from trtflow.context import Context
from trtflow.names import inside
from trtflow.params import load_params
from trtflow.plan import run_up_to, steps_for
from trtflow.stage import StageResult
from trtflow.stages.validation_report import ValidationReport
from trtflow.store import META_FILE


def resolve_stages(name: str, params_path: Path, target: str | None, root: Path
                   ) -> list[StageResult]:
    """Every stage up to `name` (cached ones are looked up, missing ones run), in order.

    `calibrate` needs no target (one calibration serves every quantized target); given
    one, it must be a quantized target.
    """
    return run_up_to(Context.create(load_params(params_path), root), name, target)


def default_output(root: Path, model: str, name: str, target: str | None,
                   per_target: bool) -> Path:
    """`build/<model>/<stage>[-target]`: suffixed where the model's plan runs the
    stage once per target (a decoder's weight-only calibrate is; a CNN's is not)."""
    suffix = f"-{target}" if target and per_target else ""
    return inside(root / "build", model, f"{name}{suffix}")


def run_single_stage(name: str, params_path: Path, target: str | None, output: Path | None,
                     root: Path) -> tuple[StageResult, Path]:
    """Run (or look up) stage `name` and copy its artifact to `output` (default
    build/<model>/<stage>[-target]); the result and where it was copied."""
    result = resolve_stages(name, params_path, target, root)[-1]
    params = load_params(params_path)
    per_target = steps_for(params)[name].per_target
    dest = output or default_output(root, params.model.name, name, target, per_target)
    _copy_artifact(Path(result.path), dest)
    if name == "validate":
        write_validation_summaries(ValidationReport.of(result), dest)
    return result, dest


def metrics_path(validate_out: Path) -> Path:
    return validate_out.with_name(f"{validate_out.name}.metrics.json")


def latency_plot_path(validate_out: Path) -> Path:
    return validate_out.with_name(f"{validate_out.name}.latency.json")


def validation_metrics(report: ValidationReport) -> dict[str, Any]:
    """The headline numbers of a validation report, flat enough for `dvc metrics diff`."""
    metrics: dict[str, Any] = dict(report.quality.figures())
    if report.quality.accuracy_drop is not None:
        metrics["accuracy_drop"] = report.quality.accuracy_drop
    for label, rows in (("engine", report.latency.engine),
                        ("baseline", report.latency.baseline)):
        metrics[f"{label}_p50_ms"] = {f"bs{row.batch_size}": row.p50_ms for row in rows}
    metrics["speedup_p50"] = {f"bs{bs}": value for bs, value in report.speedup_p50.items()}
    metrics["gates_passed"] = report.passed
    return metrics


def latency_rows(report: ValidationReport) -> list[dict[str, Any]]:
    """One row per batch size: engine and baseline (PyTorch eager or ORT FP32) latency."""
    return [{"batch_size": engine.batch_size,
             "engine_p50_ms": engine.p50_ms, "engine_p99_ms": engine.p99_ms,
             "baseline_p50_ms": baseline.p50_ms, "baseline_p99_ms": baseline.p99_ms}
            for engine, baseline in report.latency.pairs()]


def write_validation_summaries(report: ValidationReport, validate_out: Path) -> None:
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
