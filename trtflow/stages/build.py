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

VERSION = "build-5"  # 3: the Q/DQ graph TensorRT gets kept beside the engine; 4: targets
# key their backend options under `options`; 5: SmoothQuant candidates re-calibrate through
# the calibrate stage's own function


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
        c.name: backend_fingerprint(c.target) for c in candidates(spec, None, True)}}
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
                         ctx.params.calibration)
