"""ONNX Runtime engines: an offline-optimized graph plus the session config to run it.

fp8 on the CPU is a numerical stand-in, not an FP8 engine: the calibration's FP8
Q/DQ graph (what TensorRT builds FP8 engines from) run by ORT,
which simulates E4M3 rounding in float. It runs at ORT's *basic* level: ORT 1.32's
extended QDQ fusions treat FP8 Q/DQ as integer ones (digits: top-1 agreement 0.98 at
basic, 0.13 at extended), so they are kept off.

The saved graph is optimized at most to ORT's *extended* level, which is
portable across CPUs; layout-specific (`all`) transformations are applied when
the session is created on the machine that runs it, so a cached engine never
carries another CPU's kernel layout.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from trtflow.backends import BackendOptions
from trtflow.errors import BuildError, CalibrationError
from trtflow.ort_session import default_threads, ort_session

if TYPE_CHECKING:
    import onnxruntime as ort

    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration

__all__ = ["BACKEND", "OrtCpuOptions", "OrtEngine", "default_threads"]

ENGINE_FILE = "engine.onnx"
CONFIG_FILE = "session.json"
_OFFLINE_CAP = {"all": "extended"}
QDQ_FILE = "model.qdq.cpu.onnx"
# The Q/DQ graph TensorRT is handed for this target (the calibration's int8 or fp8 Q/DQ
# graph), kept beside the engine so validate can report it.
TENSORRT_QDQ_FILE = "tensorrt.qdq.onnx"


class OrtCpuOptions(BackendOptions):
    """`targets.NAME.options` of backend onnxruntime on the cpu."""

    optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="ORT graph optimization level (the saved graph stops at "
        "extended; layout transformations are applied on the machine that runs it)")
    int8_activations: Literal["auto", "int8", "uint8"] = Field(
        default="auto", description="activation encoding of an int8 engine; auto: uint8 "
        "(zero point 128), the form ORT's x86 kernels fuse and run fastest")
    reduce_range: bool | None = Field(
        default=None, description="7-bit weights; None: on where ORT's u8s8 kernels can "
        "saturate (AVX2/AVX-512 without VNNI)")

    def ignored(self, precision: str) -> list[tuple[str, str]]:
        if precision in ("int8", "best"):
            return []
        return [(f, "only onnxruntime int8 engines read it")
                for f in ("int8_activations", "reduce_range") if self.given(f)]


def _options(target: Target) -> OrtCpuOptions:
    options = target.options
    if not isinstance(options, OrtCpuOptions):  # a Target validated against this backend
        options = OrtCpuOptions.model_validate(options.model_dump())
    return options


def int8_encoding(target: Target, cpu_flags: list[str]) -> tuple[str, bool]:
    """(activation dtype, reduce_range) for an ORT CPU int8 engine on this CPU.

    Measured (bench/results/qdq_placement.json, AVX2, no VNNI): uint8 activations fuse
    fully and run 1.9x FP32; int8 either stays half-float or runs s8s8 kernels at 0.2x.
    """
    from trtflow.quant.qdq import u8s8_may_saturate

    options = _options(target)
    act = "uint8" if options.int8_activations == "auto" else options.int8_activations
    reduce = options.reduce_range
    if reduce is None:
        reduce = act == "uint8" and u8s8_may_saturate(cpu_flags)
    return act, reduce


def prepare_int8(model_path: Path, amax: dict[str, float], target: Target,
                 cpu_flags: list[str], out_dir: Path, float_layers: list[str]
                 ) -> tuple[Path, dict[str, Any]]:
    """Insert Q/DQ in the form ORT's CPU provider fuses; returns its path and the report."""
    import onnx

    from trtflow.quant.qdq import insert_qdq

    act, reduce = int8_encoding(target, cpu_flags)
    qdq_model, report = insert_qdq(onnx.load(str(model_path)), amax, "ort_cpu", act,  # type: ignore[arg-type]
                                   skip=frozenset(float_layers), reduce_range=reduce)
    onnx.save_model(qdq_model, str(out_dir / QDQ_FILE))
    report["reduce_range"] = reduce
    return out_dir / QDQ_FILE, report


def _optimize(model_path: Path, target: Target, out_dir: Path,
              config_entries: dict[str, str]) -> dict[str, Any]:
    """Write ORT's offline-optimized `engine.onnx` and the session config to run it."""
    import onnx
    import onnxruntime as ort

    optimization: str = _options(target).optimization
    if target.precision == "fp8" and optimization in ("extended", "all"):
        optimization = "basic"  # see the module docstring: ORT's QDQ fusions break FP8
    offline = _OFFLINE_CAP.get(optimization, optimization)
    try:
        ort_session(model_path, offline, config_entries=config_entries,
                    optimized_model_path=out_dir / ENGINE_FILE)
    except Exception as exc:
        raise BuildError(f"onnxruntime could not build an engine from {model_path}: "
                         f"{str(exc).splitlines()[0][:400]}") from None
    config = {
        "providers": ["CPUExecutionProvider"],
        "optimization": optimization,
        "offline_optimization": offline,
        "intra_op_threads": target.threads,
        "config_entries": config_entries,
        "onnxruntime": ort.__version__,
    }
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    engine = onnx.load(str(out_dir / ENGINE_FILE))
    ops = Counter(n.op_type for n in engine.graph.node)
    return {"engine_file": ENGINE_FILE, "session": config, "engine_ops": dict(sorted(ops.items())),
            "engine_bytes": (out_dir / ENGINE_FILE).stat().st_size}


def prepare_fp8(calibration: Calibration) -> tuple[Path, dict[str, Any]]:
    """The calibration's FP8 Q/DQ model, refused if a quantized tensor overflows E4M3."""
    path = calibration.qdq_model("fp8")
    scales = calibration.scales()
    if not all("fp8" in row for row in scales.values()):
        raise BuildError(f"{calibration.path}: no FP8 Q/DQ model or FP8 scales (a calibration "
                         "from before fp8 support?); recalibrate")
    overflow = {t: row["fp8"] for t, row in scales.items()
                if row.get("in_qdq_model") and row["fp8"]["overflow"] > 0}
    if overflow:
        worst = max(overflow, key=lambda t: overflow[t]["overflow"])
        row = overflow[worst]
        raise CalibrationError(
            f"fp8 target: {len(overflow)} quantized tensor(s) overflow E4M3 after scaling, "
            f"worst {worst!r}: {row['overflow']:.2%} of its calibration values exceed "
            f"448 x scale (scale {row['scale']:.6g} = amax {row['amax']:.6g} / 448 from "
            f"method {row['method']!r}; max |x| {row['max']:.6g}) and would saturate. E4M3 "
            "gains nothing from clipping: use calibration.fp8_method: max")
    return path, {"fp8_qdq_model": path.name, "numerical_stand_in": True,
                  "note": "ONNX Runtime runs TensorRT's FP8 Q/DQ graph on the CPU, simulating "
                          "E4M3 in float32: accuracy here, not FP8 speed"}


def keep_tensorrt_qdq(calibration: Calibration, target: Target, out_dir: Path) -> str:
    """Copy the Q/DQ graph TensorRT gets for this precision next to the engine."""
    precision = "fp8" if target.precision == "fp8" else "int8"
    shutil.copyfile(calibration.qdq_model(precision), out_dir / TENSORRT_QDQ_FILE)
    return calibration.qdq_model_name(precision)


class OrtEngine:
    """An ONNX Runtime session over a built engine directory."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_dtypes = {i.name: _NUMPY.get(i.type, np.float32) for i in session.get_inputs()}

    @classmethod
    def load(cls, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> OrtEngine:
        import onnxruntime as ort

        config = json.loads((engine_dir / CONFIG_FILE).read_text())
        available = set(ort.get_available_providers())
        providers = [p for p in config["providers"] if p in available] or ["CPUExecutionProvider"]
        return cls(ort_session(engine_dir / ENGINE_FILE, config["optimization"],
                               threads or config["intra_op_threads"] or default_threads(),
                               spinning, config.get("config_entries", {}),
                               providers=providers))

    @classmethod
    def from_model(cls, model_path: Path, threads: int | None = None, spinning: bool = True
                   ) -> OrtEngine:
        """A plain FP32 session with all optimizations: the CPU baseline and reference."""
        return cls(ort_session(model_path, "all", threads or default_threads(), spinning))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {n: inputs[n] for n in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed),
                        strict=True))


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


class OrtCpuBackend:
    """ONNX Runtime's CPU provider: FP32, or INT8 in the Q/DQ form its x86 kernels fuse."""

    name = "onnxruntime-cpu"
    precisions = ("fp32", "int8", "fp8")
    libraries = ("onnxruntime", "onnx", "onnx-ir")
    options = OrtCpuOptions
    selectable = True

    def fingerprint(self, target: Target) -> dict[str, str]:
        if target.precision != "int8":
            return {}
        from trtflow.latency import host_fingerprint

        return {"simd": host_fingerprint()["simd"]}  # the int8 encoding follows the CPU

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        entries: dict[str, str] = {}
        qdq_report = None
        if target.precision == "int8":
            from trtflow.latency import host_fingerprint

            assert calibration is not None
            model_path, qdq_report = prepare_int8(
                model_path, calibration.amax(), target, host_fingerprint()["simd"].split(),
                out_dir, calibration.float_layers())
            entries = qdq_report["ort_session_config"]
        fp8_report = None
        if target.precision == "fp8":
            assert calibration is not None
            model_path, fp8_report = prepare_fp8(calibration)
        report = _optimize(model_path, target, out_dir, entries)
        if calibration is not None:
            report["tensorrt_qdq_model"] = keep_tensorrt_qdq(calibration, target, out_dir)
        if fp8_report is not None:
            report["fp8"] = fp8_report
        if qdq_report is not None:
            report["qdq"] = {k: qdq_report[k] for k in (
                "activation_dtype", "reduce_range", "weight_qmax", "quantizable_ops",
                "float_ops", "float_fraction", "float_nodes")}
        return report

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> OrtEngine:
        return OrtEngine.load(engine_dir, threads=threads, spinning=spinning)


BACKEND = OrtCpuBackend()
