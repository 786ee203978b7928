"""What a TensorRT build needs, decided before TensorRT is touched (tested everywhere).

The build itself is NVIDIA Polygraphy's loaders (tensorrt_backend.py); this module
only decides what to hand them, from the target and the graph:
- `plan_build`: which graph (clean / typed FP16 or BF16 / INT8 Q/DQ / FP8 Q/DQ), whether the
  network is strongly typed, and which precision flags TensorRT 10 gets (11 has none).
- `profile_shapes` (tensorrt_network, shared with TensorRT-RTX): an optimization profile
  covering EVERY dynamic axis of every input (batch and sequence alike).
- `create_config`: Polygraphy's `CreateConfig` for that plan (TF32 off for fp32,
  precision flags, the profile, the timing cache, the cache-only calibrator).
- `check_cache_complete`: a `tensorrt` int8 target refuses a calibration cache that
  lacks a float activation tensor of its graph, naming the tensors (TensorRT <= 10
  and ONNX Runtime's TensorRT provider keep any tensor without a scale out of INT8).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import onnx
from pydantic import Field

from trtflow.backends import BackendOptions
from trtflow.backends.tensorrt_network import ProfileShape
from trtflow.errors import BuildError, CalibrationError

if TYPE_CHECKING:
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig

    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration


class TensorRTOptions(BackendOptions):
    """`targets.NAME.options` of backend tensorrt."""

    int8_source: Literal["qdq", "calibration_cache"] = Field(
        default="qdq", description="int8: build from the calibration's Q/DQ graph, or "
        "(TensorRT <= 10 only) from the clean graph plus the calibration cache")


@dataclass(frozen=True)
class BuildPlan:
    """graph: 'clean', 'clean_fp16' / 'clean_bf16' (converted to a typed graph by
    tensorrt_network.typed_graph), 'qdq' (INT8) or 'fp8_qdq'; flags: CreateConfig's
    precision switches (TensorRT 10 only); calibrator: serve calibration.cache."""

    graph: str
    strongly_typed: bool
    flags: tuple[str, ...] = ()
    calibrator: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"graph": self.graph, "strongly_typed": self.strongly_typed,
                "flags": list(self.flags), "calibrator": self.calibrator}


def _plan_fp32(target: Target, weak: bool, major: int) -> BuildPlan:
    return BuildPlan("clean", strongly_typed=not weak)


def _plan_fp16(target: Target, weak: bool, major: int) -> BuildPlan:
    # TensorRT 11 removed precision flags: a strongly typed network of the FP16 graph.
    return BuildPlan("clean", False, ("fp16",)) if weak else BuildPlan("clean_fp16", True)


def _plan_bf16(target: Target, weak: bool, major: int) -> BuildPlan:
    return BuildPlan("clean", False, ("bf16",)) if weak else BuildPlan("clean_bf16", True)


def _plan_int8(target: Target, weak: bool, major: int) -> BuildPlan:
    options = target.options
    if isinstance(options, TensorRTOptions) and options.int8_source == "calibration_cache":
        if not weak:
            raise BuildError(f"TensorRT {major} has no calibrator interface (implicit INT8 was "
                             "removed in 11): use int8_source 'qdq'")
        return BuildPlan("clean", False, ("int8",), calibrator=True)
    return BuildPlan("qdq", False, ("int8",)) if weak else BuildPlan("qdq", True)


def _plan_best(target: Target, weak: bool, major: int) -> BuildPlan:
    return BuildPlan("qdq", False, ("int8", "fp16")) if weak else BuildPlan("qdq", True)


def _plan_fp8(target: Target, weak: bool, major: int) -> BuildPlan:
    # FP8 Q/DQ builds strongly typed on 10 and 11 (NVIDIA's ModelOpt/trtexec route).
    return BuildPlan("fp8_qdq", True)


PLANS = {"fp32": _plan_fp32, "fp16": _plan_fp16, "bf16": _plan_bf16, "int8": _plan_int8,
         "best": _plan_best, "fp8": _plan_fp8}


def plan_build(target: Target, major: int) -> BuildPlan:
    """Which graph, typing and flags `target` needs on TensorRT `major` (10: weak typing
    with precision flags; 11: strongly typed only)."""
    planner = PLANS.get(str(target.precision))
    if planner is None:
        raise BuildError(f"backend 'tensorrt' builds precision {sorted(PLANS)}, not "
                         f"'{target.precision}'")
    return planner(target, major <= 10, major)


def graph_for(plan: BuildPlan, model_path: Path, calibration: Calibration | None) -> Path:
    """The ONNX file the plan builds from ('clean_fp16'/'clean_bf16': the clean graph,
    converted later, in out_dir)."""
    if plan.graph in ("clean", "clean_fp16", "clean_bf16"):
        return model_path
    precision = "int8" if plan.graph == "qdq" else "fp8"
    if calibration is None:
        raise BuildError(f"a tensorrt {plan.graph} build reads the calibration's {precision} "
                         "Q/DQ graph, and no calibration was given")
    return calibration.qdq_model(precision)


@dataclass
class ConfigOptions:
    """What CreateConfig gets besides the plan. The TensorRT objects come from the caller
    (they exist only where TensorRT does), so the rest is built and tested without it."""

    timing_cache: Path | None = None
    calibrator: trt.IInt8Calibrator | None = None
    profiling_verbosity: trt.ProfilingVerbosity | None = None
    memory_pool_limits: Mapping[trt.MemoryPoolType, int] | None = None


def create_config(plan: BuildPlan, shapes: dict[str, ProfileShape],
                  options: ConfigOptions) -> CreateConfig:
    """Polygraphy's CreateConfig for `plan`. TF32 stays off (Polygraphy clears the flag),
    so an fp32 engine computes in FP32; the one profile is also the calibration profile
    (Polygraphy calibrates with the last profile)."""
    from polygraphy.backend.trt import CreateConfig, Profile
    from polygraphy.logger import G_LOGGER

    profile = Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.add(name, min=lo, opt=opt, max=hi)
    timing = str(options.timing_cache) if options.timing_cache else None
    with G_LOGGER.verbosity(G_LOGGER.WARNING):  # not its "TF32 is disabled" note
        return CreateConfig(tf32=False, fp16="fp16" in plan.flags, int8="int8" in plan.flags,
                            fp8="fp8" in plan.flags, bf16="bf16" in plan.flags,
                            calibrator=options.calibrator,
                            profiles=[profile], load_timing_cache=timing,
                            profiling_verbosity=options.profiling_verbosity,
                            memory_pool_limits=options.memory_pool_limits)


def check_cache_complete(cache_path: Path, graph_path: Path) -> dict[str, float]:
    """The cache's scales, if it names every float activation tensor of the graph (and
    nothing else); else a CalibrationError naming the missing or unknown tensors."""
    from trtflow.quant.cache import check_cache_matches
    from trtflow.quant.placement import float_activations

    if not cache_path.is_file():
        raise CalibrationError(f"a tensorrt int8 target needs the calibrate stage's "
                               f"calibration cache; {cache_path} is missing")
    model = onnx.load(str(graph_path), load_external_data=False)
    wanted = float_activations(model)
    names = {v.name for v in model.graph.input} | {o for n in model.graph.node for o in n.output}
    scales = check_cache_matches(cache_path, names, graph_path)
    missing = [name for name in wanted if name not in scales]
    if missing:
        shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8
                                          else "")
        raise CalibrationError(
            f"calibration cache {cache_path} has no scale for {len(missing)} of the "
            f"{len(wanted)} float activation tensor(s) of {graph_path}: {shown}; TensorRT "
            "keeps a tensor without a scale out of INT8 (re-run the calibrate stage on this "
            "graph)")
    return scales
