"""build: an engine for one target through its registered backend (trtflow.backends), or,
for `precision: best` on the CPU, the fastest candidate engine that passes the accuracy
gate (trtflow.stages.select)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtflow.stages.cleanup import CLEAN_FILE

if TYPE_CHECKING:
    from trtflow.context import Context
    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration
    from trtflow.stage import StageResult

VERSION = "build-7"  # 3: the Q/DQ graph TensorRT gets kept beside the engine; 4: targets
# key their backend options under `options`; 5: SmoothQuant candidates re-calibrate through
# the calibrate stage's own function; 6: best races at the validated batch sizes until
# decided, and an undecided selection is never reused; 7: best searches per-layer precision
# after the class-level pick (quant/layer_precision.py)


def reusable(report: dict[str, Any]) -> bool:
    """A `best` build whose race decided nothing (too noisy) is redone by the next run."""
    from trtflow.stages.build_report import BuildReport

    selection = BuildReport.from_dict(report).selection
    return selection is None or selection.decided


def selects(target: Target) -> bool:
    """`precision: best` on the CPU: candidates are built and timed (trtflow.stages.select)."""
    return target.precision == "best" and target.device == "cpu"


def facts(ctx: Context, target: str | None) -> dict[str, Any]:
    """What the engine depends on besides the graph and the target's params."""
    from trtflow.backends import backend_fingerprint

    spec = ctx.target(str(target))
    if not selects(spec):
        return backend_fingerprint(spec)
    from trtflow.latency import host_fingerprint
    from trtflow.stages.select import candidates

    # the choice is a measurement on this host, of every candidate backend; SmoothQuant
    # candidates re-calibrate with the calibration settings
    found = {"host": host_fingerprint(), "metric": ctx.metric(), "candidates": {
        c.name: backend_fingerprint(c.target) for c in candidates(spec, None, True)},
        # the race times the validated batch sizes unless select.batch_sizes names them
        "race_batch_sizes": spec.select.batch_sizes or ctx.params.validate_.batch_sizes}
    if spec.select.smoothquant_alpha:
        found["calibration"] = ctx.params.section_digest("calibration")
    return found


def run(ctx: Context, target: str | None, out: Path, cleaned: StageResult,
        *calibrated: StageResult) -> dict[str, Any]:
    """The plan's build step for `target`."""
    from trtflow.backends import Calibration, build_engine

    calibration = Calibration(Path(calibrated[0].path)) if calibrated else None
    spec = ctx.target(str(target))
    if selects(spec):
        return _select(ctx, spec, cleaned.file(CLEAN_FILE), out, calibration)
    return build_engine(cleaned.file(CLEAN_FILE), spec, out, calibration)


def _select(ctx: Context, spec: Target, model: Path, out: Path,
            calibration: Calibration | None) -> dict[str, Any]:
    from trtflow.datasets import open_data
    from trtflow.stages.select import select_engine

    cal = ctx.params.data.calibration
    if cal is not None:  # the selection split: calibration data, never the evaluation data
        selection = next(iter(open_data(cal, ctx.input_specs(), ctx.root,
                                        ctx.params.data.batch_size))).inputs
    else:
        selection = ctx.sample_inputs(ctx.params.data.batch_size)
    gates = spec.gates or ctx.params.validate_.gates
    if ctx.progress:
        ctx.progress("build: timing the candidate engines (precision best)")
    return select_engine(model, spec, out, calibration, selection, ctx.metric(),
                         spec.select.min_agreement or gates.min_agreement, spec.threads,
                         ctx.params.calibration, previous=previous_choice(ctx, spec),
                         validated_batch_sizes=ctx.params.validate_.batch_sizes,
                         progress=ctx.progress)


def previous_choice(ctx: Context, spec: Target) -> str | None:
    """The candidate that won the selection of this target's production engine, read from
    the build artifact its MLflow run names (None without a registry, a production version
    or that artifact in this store): an undecided race keeps it."""
    from trtflow.names import registered_name
    from trtflow.stages.build_report import BuildReport

    name = next((n for n, t in ctx.params.targets.items() if t is spec), None)
    if name is None:
        return None
    try:
        import mlflow

        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias(
            registered_name(ctx.params.model.name, name), "production")
        key = client.get_run(str(version.run_id)).data.tags.get("trtflow.stage.build.key")
    except Exception:  # no registry, no such model or alias: no previous choice
        return None
    art = ctx.store.get("build", key) if key else None
    if art is None:
        return None
    selection = BuildReport.from_dict(art.meta().get("report", {}), str(art.path)).selection
    return selection.winner if selection is not None else None
