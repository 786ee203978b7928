"""NVIDIA TensorRT for RTX: real engine plans built here, for GPUs this host lacks.

TensorRT-RTX (PyPI `tensorrt-rtx-cu13-libs` + `-bindings`, module
`tensorrt_rtx_bindings`; trtflow's `tensorrt-rtx` extra) builds without a GPU: its
builder takes the target compute capabilities (`gpu_archs`) and writes a plan that
runs on Ampere, Ada and Blackwell GPUs (8.0/8.6/8.9/12.x; not Hopper). Networks are
strongly typed only, so each precision is a graph (tensorrt_network.typed_graph): the
clean graph (fp32), a float16/bfloat16 graph from ModelOpt's AutoCast, or the
calibration's INT8/FP8 Q/DQ graph.

The engine directory holds the plan (`model.engine`), the graph handed to the builder
(`handed.onnx`), `tensorrt_rtx.json` (version, archs, profile, parse/build seconds),
`precision_report.json` (per layer of the parsed network: input/output types and what
it computes in), `fusion_report.json` (the engine's kernels and the ONNX nodes each
runs, from the builder's verbose log) and `build.log`.

A plan runs only on a GPU it was built for; on any other host `load` returns
`HandedGraphEngine`: ONNX Runtime running `handed.onnx`, labelled as such, which
reports no latency (validate records "not measured") -- never another engine's numbers.
TensorRT-RTX's timing cache is a no-op since 1.2 (its bindings say so) and its runtime
cache fills on the GPU at run time: there is no build-time cache to keep.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from pydantic import Field, field_validator

from trtflow.backends import BackendOptions
from trtflow.backends.tensorrt_network import (
    BuildLog,
    add_profile,
    engine_layers,
    kernel_precisions,
    make_logger,
    network_layers,
    parse_onnx,
    precision_report,
    profile_shapes,
    typed_graph,
)
from trtflow.errors import BuildError, DataError

if TYPE_CHECKING:
    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration

ENGINE_FILE = "model.engine"
HANDED_FILE = "handed.onnx"
CONFIG_FILE = "tensorrt_rtx.json"
PRECISION_FILE = "precision_report.json"
FUSION_FILE = "fusion_report.json"
LOG_FILE = "build.log"
EXTRA = "pip install 'trtflow[tensorrt-rtx]'"
# params name -> tensorrt_rtx_bindings.ComputeCapability member (TensorRT-RTX 1.7)
ARCHS = {"sm75": "SM75", "sm80": "SM80", "sm86": "SM86", "sm89": "SM89", "sm120": "SM120",
         "sm121": "SM121"}
NOT_MEASURED = "not measured: no supported GPU on this host"
# the oldest arch whose kernels take each type (the builder refuses FP8 for sm86:
# "Cannot compile for target(s) sm86, because the model contains HW-specific datatypes")
MIN_ARCH = {"fp8": "sm89", "bf16": "sm80"}


class TensorRTRtxOptions(BackendOptions):
    """`targets.NAME.options` of backend tensorrt-rtx."""

    gpu_archs: list[str] = Field(
        default_factory=lambda: ["sm86", "sm89", "sm120"],
        description=f"compute capabilities the plan is built for: {', '.join(ARCHS)} "
        "(Ampere sm80/86, Ada sm89, Blackwell sm120/121; Hopper sm90 is not supported)")
    max_batch: int = Field(default=32, gt=0, description="the profile's batch range: 1..this")

    @field_validator("gpu_archs")
    @classmethod
    def _known_archs(cls, value: list[str]) -> list[str]:
        return check_archs(value)


def check_archs(names: list[str]) -> list[str]:
    """`names` if each is a TensorRT-RTX target architecture, else a ValueError naming
    the unknown ones and the valid ones."""
    unknown = [n for n in names if n not in ARCHS]
    if unknown or not names:
        raise ValueError(f"unknown gpu_archs {unknown or '(empty)'}; TensorRT-RTX builds for "
                         f"{list(ARCHS)}")
    return list(dict.fromkeys(names))


def archs_for(precision: str, options: TensorRTRtxOptions) -> tuple[list[str], str | None]:
    """The archs a `precision` plan is built for, and a note when defaults were dropped.
    Archs named in the params that cannot run the precision are an error."""
    oldest = MIN_ARCH.get(precision)
    if oldest is None:
        return options.gpu_archs, None
    order = list(ARCHS)
    able = [a for a in options.gpu_archs if order.index(a) >= order.index(oldest)]
    too_old = [a for a in options.gpu_archs if a not in able]
    if not too_old:
        return able, None
    if options.given("gpu_archs") or not able:
        raise BuildError(f"a tensorrt-rtx {precision} plan needs {oldest} or later; gpu_archs "
                         f"{too_old} cannot run {precision} (drop them from the target's "
                         "options.gpu_archs)")
    return able, f"default gpu_archs {too_old} left out: {precision} needs {oldest} or later"


def rtx() -> Any:
    """The `tensorrt_rtx_bindings` module, or a BuildError naming the extra."""
    try:
        import tensorrt_rtx_bindings
    except ImportError:
        raise BuildError(f"backend 'tensorrt-rtx' needs NVIDIA TensorRT for RTX: {EXTRA} "
                         "(wheels tensorrt-rtx-cu13-libs and tensorrt-rtx-cu13-bindings)"
                         ) from None
    return tensorrt_rtx_bindings


def installed_version() -> str | None:
    try:
        return str(rtx().__version__)
    except BuildError:
        return None


def build_plan(graph: Path, archs: list[str], out_dir: Path, max_batch: int = 32
               ) -> dict[str, Any]:
    """Parse `graph` strongly typed, build a plan for `archs` into `out_dir`, and write
    the precision and fusion reports; nothing is written if the parser refuses it."""
    trt = rtx()
    check_archs(archs)
    log = BuildLog()
    logger = make_logger(trt, log)
    parsed = parse_onnx(trt, logger, graph)
    layers = network_layers(parsed.network)
    config = parsed.builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the log lists the layers
    config.num_compute_capabilities = len(archs)
    for i, arch in enumerate(archs):
        config.set_compute_capability(getattr(trt.ComputeCapability, ARCHS[arch]), i)
    shapes = profile_shapes(graph, max_batch)
    add_profile(trt, parsed.builder, config, shapes)
    start = time.perf_counter()
    plan = parsed.builder.build_serialized_network(parsed.network, config)
    build_seconds = time.perf_counter() - start
    if plan is None:
        errors = " | ".join(" ".join(e.split()) for e in log.errors()) or "no error logged"
        raise BuildError(f"TensorRT-RTX {trt.__version__} could not build a plan from {graph}: "
                         f"{errors[:600]}")
    (out_dir / ENGINE_FILE).write_bytes(bytes(memoryview(plan)))
    precision = precision_report(layers)
    (out_dir / PRECISION_FILE).write_text(json.dumps(precision, indent=2))
    kernels = engine_layers(log)
    fusion = _fusion(kernels, graph)
    (out_dir / FUSION_FILE).write_text(json.dumps(fusion, indent=2))
    (out_dir / LOG_FILE).write_text(log.text())
    meta = {"backend": "tensorrt-rtx", "tensorrt_rtx": trt.__version__,
            "onnx_parser": trt.get_nv_onnx_parser_version(), "gpu_archs": archs,
            "profile": {n: {"min": list(lo), "opt": list(opt), "max": list(hi)}
                        for n, (lo, opt, hi) in shapes.items()},
            "strongly_typed": True, "graph": graph.name,
            "parse_seconds": round(parsed.seconds, 4), "build_seconds": round(build_seconds, 4),
            "host": {"machine": platform.machine(), "processor": platform.processor()},
            "timing_cache": "none: timing cache operations are no-ops in TensorRT-RTX >= 1.2",
            "runs_on": "GPUs of the archs above with an NVIDIA driver; validated here on the "
                       "handed graph in ONNX Runtime"}
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    _keep_handed(graph, out_dir)
    return {"engine_file": ENGINE_FILE, "engine_bytes": (out_dir / ENGINE_FILE).stat().st_size,
            "tensorrt_rtx": meta,
            "precision": {k: v for k, v in precision.items() if k != "rows"},
            "fusion": {k: v for k, v in fusion.items() if k not in ("rows", "io_tensors")}}


def _keep_handed(graph: Path, out_dir: Path) -> None:
    """The graph the builder parsed, as `handed.onnx` (moved when it was converted into
    `out_dir`, copied when it is the clean graph or the calibration's Q/DQ graph)."""
    handed = out_dir / HANDED_FILE
    if graph.parent.resolve() == out_dir.resolve():
        graph.replace(handed)
    else:
        shutil.copyfile(graph, handed)


def _fusion(kernels: list[dict[str, Any]], graph: Path) -> dict[str, Any]:
    from trtflow.backends.tensorrt_report import fusion_report, onnx_nodes

    report = fusion_report({"Layers": kernels}, onnx_nodes(graph))
    for row, kernel in zip(report["rows"], kernels, strict=True):  # what each kernel reads
        row["input_types"] = sorted({t["DataType"] for t in kernel["Inputs"]})
    report["kernel_input_types"] = kernel_precisions(kernels)
    report["source"] = "TensorRT-RTX builder verbose log (engine layers; no GPU needed)"
    return report


def emulated_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A bfloat16 graph ONNX Runtime's CPU provider can run (it has no bfloat16 Conv or
    MatMul): every bfloat16 tensor becomes float32 rounded to bfloat16 (a Cast there and
    back after each op that produced one), so storage is bfloat16 and each op computes in
    float32, as a GPU accumulates."""
    from onnx import TensorProto, numpy_helper, shape_inference

    bf16, f32 = TensorProto.BFLOAT16, TensorProto.FLOAT
    model = shape_inference.infer_shapes(model)
    graph = model.graph
    typed = {v.name: v.type.tensor_type.elem_type
             for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    for init in graph.initializer:
        if init.data_type == bf16:  # exact in float32
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    nodes = []
    for node in graph.node:
        rounded = [o for o in node.output if typed.get(o) == bf16]
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == bf16:
                attr.i = f32
            if attr.name == "value" and attr.t.data_type == bf16:
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
        for i, out in enumerate(node.output):
            if out in rounded:
                node.output[i] = f"{out}__f32"
        nodes.append(node)
        for out in rounded:
            nodes.append(onnx.helper.make_node("Cast", [f"{out}__f32"], [f"{out}__bf16"],
                                               to=bf16, name=f"{out}__to_bf16"))
            nodes.append(onnx.helper.make_node("Cast", [f"{out}__bf16"], [out], to=f32,
                                               name=f"{out}__from_bf16"))
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del graph.node[:]
    graph.node.extend(copies)
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == bf16:
            value.type.tensor_type.elem_type = f32
    return model


class HandedGraphEngine:
    """ONNX Runtime (CPU) running the graph TensorRT-RTX was handed, for a plan this host
    cannot run. Its outputs are that graph's, not the plan's; it measures no latency."""

    ran = "ONNX Runtime (CPU) on the graph handed to TensorRT-RTX (handed.onnx)"
    latency_note = NOT_MEASURED

    def __init__(self, engine_dir: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = engine_dir / HANDED_FILE
        if not path.is_file():
            raise BuildError(f"{engine_dir} has no {HANDED_FILE}: not a tensorrt-rtx engine "
                             "directory (rebuild it)")
        options = ort.SessionOptions()
        # basic: no Q/DQ fusion, so it computes what the Q/DQ graph says (as validate's
        # qdq_model does)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        model = onnx.load(str(path))
        if _has_bf16(model):
            model = emulated_bf16(model)
            self.ran = (f"{self.ran}, its bfloat16 tensors emulated (rounded to bfloat16 after "
                        "each op, computed in float32: ONNX Runtime has no bfloat16 CPU kernels)")
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # an op without a CPU kernel in ONNX Runtime
            raise BuildError(f"ONNX Runtime cannot run {path}, the graph handed to TensorRT-RTX, "
                             f"on this CPU: {' '.join(str(exc).split())[:300]}; the plan needs "
                             "a GPU of its gpu_archs to be validated") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise DataError(f"engine input(s) {missing} missing (got {sorted(inputs)})")
        outputs = self.session.run(self.output_names, {n: inputs[n] for n in self.input_names})
        return {n: np.asarray(o, dtype=np.float32)
                for n, o in zip(self.output_names, outputs, strict=True)}


def _has_bf16(model: onnx.ModelProto) -> bool:
    bf16 = onnx.TensorProto.BFLOAT16
    return any(i.data_type == bf16 for i in model.graph.initializer) or any(
        a.name == "to" and a.i == bf16 for n in model.graph.node for a in n.attribute)


class TensorRTRtxBackend:
    """NVIDIA TensorRT for RTX: plans built here for the named archs, validated on the
    handed graph where no supported GPU exists."""

    name = "tensorrt-rtx"
    precisions = ("fp32", "fp16", "bf16", "int8", "fp8")
    libraries = ("onnx", "tensorrt-rtx-cu13-libs", "tensorrt-rtx-cu13-bindings",
                 "nvidia-modelopt")
    options = TensorRTRtxOptions
    selectable = False

    def fingerprint(self, target: Target) -> dict[str, str]:
        # the plan depends on the archs named in the options (part of the params), not on
        # this host's GPU
        return {"tensorrt_rtx": installed_version() or "none"}

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        rtx()  # the extra's message before any conversion work
        options = target.options
        if not isinstance(options, TensorRTRtxOptions):
            options = TensorRTRtxOptions.model_validate(options.model_dump())
        archs, note = archs_for(target.precision, options)
        graph, made = typed_graph(target.precision, model_path, calibration, out_dir)
        report = build_plan(graph, archs, out_dir, options.max_batch)
        report["graph"] = made
        if note:
            report["gpu_archs_note"] = note
        return report

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> HandedGraphEngine:
        return HandedGraphEngine(engine_dir, threads)


BACKEND = TensorRTRtxBackend()
