"""OpenVINO on x86 CPUs: FP32, BF16 (where the CPU has it) and INT8 from trtflow's scales.

INT8 is explicit quantization: the clean graph gets Q/DQ pairs from the calibrate
stage's amax (no recalibration; the scales are trtflow's) in the placement ORT's CPU
provider fuses (Q after each Conv/Add, so a layer hands int8 to the next), with Relu
outputs re-encoded as uint8 zero point 0 (`trtflow.quant.unsigned_qdq`): the form
NNCF emits and OpenVINO's CPU plugin fuses into u8 convolutions. Measured on
resnet18 (AMX host, bs1, one run): 3.42 ms against 3.80 ms for the TensorRT
placement and 3.37 ms for NNCF's own INT8 model. Left as int8 zero point -128, the
same placement ran 25x slower (an Eltwise shift per tensor) and, on the digits CNN,
computed wrongly.

Precision is named as it really ran: OpenVINO's CPU plugin defaults to bf16 on
hosts with AVX512_BF16, so an `fp32` target sets `INFERENCE_PRECISION_HINT=f32`
and the report reads the hint back from the compiled model, with a count of the
runtime layers per precision (OpenVINO's own execution graph).

OpenVINO's int8 kernels are checked against the Q/DQ graph they were compiled from
(ONNX Runtime running it unfused, on synthetic inputs): where the fast placement
computes something else (it did on the digits CNN: cosine 0.95 on random inputs,
top-1 agreement 0.5 on real ones), the build falls back to the TensorRT placement
and its report says why, as TensorRT's builder drops a tactic that fails.

An engine directory holds `model.xml`/`model.bin` (OpenVINO IR, portable) and
`compiled.blob` (the model compiled for this CPU, imported on load without
recompiling; valid because the build key includes the CPU flags and the
OpenVINO version), plus `openvino.json`.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from trtflow.backends import BackendOptions
from trtflow.errors import BuildError
from trtflow.latency import cpu_flags

if TYPE_CHECKING:
    from trtflow.params import Target
    from trtflow.quant.artifact import Calibration
    from trtflow.quant.qdq import Placement

IR_FILE = "model.xml"
BLOB_FILE = "compiled.blob"
CONFIG_FILE = "openvino.json"
QDQ_FILE = "model.qdq.openvino.onnx"
_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: float parts stay in f32
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# int8_scheme -> Q/DQ placement
PLACEMENTS: dict[str, Placement] = {"auto": "ort_cpu", "static-tensorrt": "tensorrt"}
DYNAMIC_GROUP = 32  # activation values per dynamic quantization scale (OpenVINO's default)
# OpenVINO's kernels vs ONNX Runtime on the same Q/DQ graph: integer rounding alone kept
# them at 0.9998 (resnet18, ort_cpu placement) and 1.0000 (digits, TensorRT placement);
# the miscompiled digits graph fell to 0.94
MIN_KERNEL_COSINE = 0.999
_NUMPY = {"f32": np.float32, "f16": np.float16, "i64": np.int64, "i32": np.int32,
          "boolean": np.bool_}


Int8Scheme = Literal["auto", "static-tensorrt", "dynamic"]


class OpenVinoOptions(BackendOptions):
    """`targets.NAME.options` of backend openvino."""

    int8_scheme: Int8Scheme = Field(
        default="auto", description="int8: auto = static Q/DQ after each conv, Relu outputs "
        "uint8 (the form OpenVINO fuses, measured fastest); static-tensorrt = Q/DQ on op "
        "inputs only; dynamic = int8 MatMul/Gemm weights, activations quantized per token "
        "at run time (OpenVINO dynamic quantization, groups of 32)")

    def ignored(self, precision: str) -> list[tuple[str, str]]:
        if precision == "int8" or not self.given("int8_scheme"):
            return []
        return [("int8_scheme", "only openvino int8 reads it")]


def _scheme(target: Target) -> Int8Scheme:
    options = target.options
    return options.int8_scheme if isinstance(options, OpenVinoOptions) else "auto"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BuildError("backend 'openvino' needs the `openvino` package (pip install "
                         "openvino)") from None
    return openvino


def _hint(precision: str, scheme: str) -> str:
    """The float precision of what does not run in int8. Dynamic int8 keeps its float
    parts in bf16 where the CPU has it: on minilm (AMX host) f32 left it slower than
    plain bf16, bf16 made it the faster of the two at batch 1."""
    if precision == "int8" and scheme == "dynamic" and set(cpu_flags()) & set(BF16_FLAGS):
        return "bf16"
    return _HINTS[precision]


def _properties(precision: str, scheme: str, threads: int | None) -> dict[str, Any]:
    props: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _hint(precision, scheme),
                             "PERFORMANCE_HINT": "LATENCY"}
    if precision == "int8":  # 0 turns the plugin's own activation quantization off
        props["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = DYNAMIC_GROUP if scheme == "dynamic" else 0
    if threads:
        props["INFERENCE_NUM_THREADS"] = int(threads)
    return props


def runtime_precisions(compiled: Any) -> dict[str, int]:
    """Compute layers of OpenVINO's execution graph, counted per runtime precision."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str))
        if kind in ("Input", "Output", "Const", "Reorder"):
            continue
        counts[f"{kind}:{info['runtimePrecision'].astype(str)}"] += 1
    return dict(sorted(counts.items()))


def _int8_model(model_path: Path, calibration: Calibration, scheme: str, out_dir: Path
                ) -> tuple[Path, dict[str, Any]]:
    import onnx

    from trtflow.quant.qdq import insert_qdq
    from trtflow.quant.unsigned_qdq import unsigned_nonnegative
    from trtflow.quant.weight_only import weight_only_int8

    model = onnx.load(str(model_path))
    skip = frozenset(calibration.float_layers())
    if scheme == "dynamic":
        qdq, nodes = weight_only_int8(model, skip)
        onnx.save_model(qdq, str(out_dir / QDQ_FILE))
        return out_dir / QDQ_FILE, {"scheme": scheme, "weight_only_nodes": len(nodes),
                                    "dynamic_group_size": DYNAMIC_GROUP}
    qdq, report = insert_qdq(model, calibration.amax(), PLACEMENTS[scheme], "int8", skip=skip)
    report["scheme"] = scheme
    qdq, report["unsigned_tensors"] = unsigned_nonnegative(qdq)
    onnx.save_model(qdq, str(out_dir / QDQ_FILE))
    keep = ("scheme", "placement", "activation_dtype", "unsigned_tensors", "quantizable_ops",
            "float_ops", "float_fraction", "float_nodes")
    return out_dir / QDQ_FILE, {k: report[k] for k in keep if k in report}


def _compile(ov: Any, source: Path, target: Target, scheme: str) -> tuple[Any, Any]:
    core = ov.Core()
    try:
        model = core.read_model(str(source))
        return model, core.compile_model(model, "CPU", _properties(
            target.precision, scheme, target.threads))
    except Exception as exc:  # OpenVINO raises RuntimeError with a C++ message
        raise BuildError(f"OpenVINO {ov.__version__} could not compile {source}: "
                         f"{' '.join(str(exc).split())[:400]}") from None


def _kernel_cosine(compiled: Any, qdq_path: Path, batch: int = 4) -> float:
    """Cosine between OpenVINO's outputs and ONNX Runtime running the same Q/DQ graph
    unfused (the reference semantics of QuantizeLinear/DequantizeLinear), on synthetic
    inputs inside each input's range."""
    import onnx

    from trtflow.graph.feeds import random_feeds
    from trtflow.ort_session import ort_session

    feeds = random_feeds(onnx.load(str(qdq_path), load_external_data=False), batch)
    session = ort_session(qdq_path, "disable")
    names = [o.name for o in session.get_outputs()]
    want = np.concatenate([o.ravel() for o in session.run(names, feeds)]).astype(np.float64)
    results = compiled.create_infer_request().infer(feeds)
    by_name = {port.get_any_name(): value for port, value in results.items()}
    got = np.concatenate([np.asarray(by_name[n]).ravel() for n in names]).astype(np.float64)
    norm = np.linalg.norm(want) * np.linalg.norm(got)
    return float(want @ got / norm) if norm > 0 else float(np.array_equal(want, got))


class OpenVinoBackend:
    name = "openvino-cpu"
    precisions = ("fp32", "bf16", "int8")
    libraries = ("openvino", "onnx")
    options = OpenVinoOptions
    selectable = True

    def fingerprint(self, target: Target) -> dict[str, str]:
        from trtflow.latency import host_fingerprint

        host = host_fingerprint()  # the compiled blob is for this CPU
        return {"cpu": host["cpu"], "cpu_flags": host["flags_digest"]}

    def build(self, model_path: Path, target: Target, out_dir: Path,
              calibration: Calibration | None) -> dict[str, Any]:
        ov = _openvino()
        scheme = _scheme(target)
        if target.precision == "bf16" and not set(cpu_flags()) & set(BF16_FLAGS):
            raise BuildError("precision 'bf16' on backend 'openvino' needs a CPU with "
                             f"{' or '.join(BF16_FLAGS)}; this one has neither")
        report: dict[str, Any] = {}
        source = model_path
        if target.precision == "int8":
            assert calibration is not None
            source, report["qdq"] = _int8_model(model_path, calibration, scheme, out_dir)
        model, compiled = _compile(ov, source, target, scheme)
        if target.precision == "int8" and scheme == "auto":
            cosine = _kernel_cosine(compiled, source)
            report["qdq"]["kernel_cosine"] = cosine
            if cosine < MIN_KERNEL_COSINE:
                assert calibration is not None
                source, report["qdq"] = _int8_model(model_path, calibration,
                                                    "static-tensorrt", out_dir)
                report["qdq"]["fallback"] = (
                    f"OpenVINO's int8 kernels computed the '{PLACEMENTS['auto']}' placement "
                    f"differently from its Q/DQ graph (cosine {cosine:.4f} < "
                    f"{MIN_KERNEL_COSINE}); built the TensorRT placement instead")
                model, compiled = _compile(ov, source, target, "static-tensorrt")
                report["qdq"]["kernel_cosine"] = _kernel_cosine(compiled, source)
        ov.save_model(model, str(out_dir / IR_FILE), compress_to_fp16=False)
        blob = compiled.export_model()
        (out_dir / BLOB_FILE).write_bytes(blob.getvalue() if hasattr(blob, "getvalue")
                                          else bytes(blob))
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # what it really runs
        ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        config = {"precision": target.precision, "int8_scheme": scheme,
                  "inference_precision": ran,
                  "threads": target.threads, "openvino": ov.__version__,
                  "inputs": [i.get_any_name() for i in model.inputs],
                  "outputs": [o.get_any_name() for o in model.outputs]}
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        report.update(session=config, runtime_layers=runtime_precisions(compiled),
                      engine_bytes=(out_dir / BLOB_FILE).stat().st_size)
        return report

    def load(self, engine_dir: Path, threads: int | None = None, spinning: bool = True
             ) -> OpenVinoEngine:
        return OpenVinoEngine.load(engine_dir, threads)


class OpenVinoEngine:
    """A compiled OpenVINO model with one infer request, run on named numpy inputs."""

    def __init__(self, compiled: Any, config: dict[str, Any]) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = list(config["inputs"])
        self.output_names = list(config["outputs"])
        self.config = config
        self.input_dtypes = {p.get_any_name(): _NUMPY.get(p.get_element_type().get_type_name(),
                                                          np.float32) for p in compiled.inputs}

    @classmethod
    def load(cls, engine_dir: Path, threads: int | None = None) -> OpenVinoEngine:
        ov = _openvino()
        config = json.loads((engine_dir / CONFIG_FILE).read_text())
        if config["openvino"] != ov.__version__:
            raise BuildError(f"{engine_dir} was compiled by OpenVINO {config['openvino']}; this "
                             f"is {ov.__version__}: rebuild it")
        props = _properties(config["precision"], config.get("int8_scheme", "auto"),
                            threads or config.get("threads"))
        core = ov.Core()
        compiled = core.import_model(io.BytesIO((engine_dir / BLOB_FILE).read_bytes()), "CPU",
                                     props)
        return cls(compiled, config)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer({n: inputs[n] for n in self.input_names})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return {n: np.array(by_name[n], copy=True) for n in self.output_names}


BACKEND = OpenVinoBackend()
