"""What TensorRT 11 and TensorRT-RTX both do with an ONNX graph, in one place.

Both are strongly typed only: precision comes from the graph (Q/DQ nodes for INT8/FP8,
the graph's own float16/bfloat16 types for FP16/BF16), never from builder flags. Both
bind the same Python API (`tensorrt` and `tensorrt_rtx_bindings`), so the functions
here take the module as their first argument:
- `typed_graph`: the ONNX file each precision hands the builder (clean FP32, a
  float16/bfloat16 graph from NVIDIA ModelOpt's AutoCast keeping `FP32_OPS` in
  FP32, the calibration's INT8 or FP8 Q/DQ graph);
- `profile_shapes`: one optimization profile covering EVERY dynamic axis;
- `parse_onnx`: NVIDIA's ONNX parser into a strongly typed network; a node it
  refuses is a BuildError naming the node and its op;
- `precision_report`: per layer of the parsed network, its input and output types and
  the precision it computes in (a Convolution fed by Dequantize of INT8 is INT8);
- `engine_layers`: the built engine's layers (kernels, their ONNX nodes and data
  types) from the builder's verbose log, which prints them without a GPU (an engine
  inspector needs a deserialized engine, i.e. a GPU the plan supports).
Build steps a tool already does (the timing cache, Polygraphy's loaders) stay with
each backend.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from trtflow.errors import BuildError

if TYPE_CHECKING:
    from trtflow.quant.artifact import Calibration

# min / opt / max of one input in an optimization profile
ProfileShape = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

# Non-batch dynamic axes (sequence, spatial): min / opt / max of the one profile.
OTHER_AXIS_RANGE = (1, 128, 512)

# Every (class, member) of the TensorRT Python API this module calls: checked against
# NVIDIA's bindings of TensorRT 10.16.1 and 11.1.0 (typings/tensorrt_api) and against the
# installed TensorRT-RTX by tests/unit/test_tensorrt_rtx.py, so the one module serves both.
API_USED: tuple[tuple[str, str], ...] = (
    ("Builder", "create_network"), ("Builder", "create_optimization_profile"),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
    ("OnnxParser", "parse_from_file"), ("OnnxParser", "num_errors"),
    ("OnnxParser", "get_error"), ("ParserError", "node"), ("ParserError", "node_name"),
    ("ParserError", "node_operator"), ("ParserError", "desc"),
    ("INetworkDefinition", "num_layers"), ("INetworkDefinition", "get_layer"),
    ("ILayer", "name"), ("ILayer", "type"), ("ILayer", "num_inputs"),
    ("ILayer", "get_input"), ("ILayer", "num_outputs"), ("ILayer", "get_output"),
    ("ILayer", "metadata"), ("ITensor", "name"), ("ITensor", "dtype"),
    ("IOptimizationProfile", "set_shape"), ("IBuilderConfig", "add_optimization_profile"),
    ("ILogger", "log"), ("ILogger", "Severity"))

TYPED_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
# layers whose inputs decide what a layer "computes in" (weights and activations)
COMPUTE_LAYERS = ("CONVOLUTION", "DECONVOLUTION", "MATRIX_MULTIPLY")
QUANTIZED_TYPES = ("INT8", "FP8", "INT4", "FP4", "UINT8")
FLOAT_TYPES = ("FLOAT", "HALF", "BF16")


def _dynamic_axes(value: onnx.ValueInfoProto) -> list[int]:
    """Axes without a fixed positive size (a dim_param, or nothing)."""
    dims = value.type.tensor_type.shape.dim
    return [axis for axis, d in enumerate(dims)
            if not (d.HasField("dim_value") and d.dim_value > 0)]


def profile_shapes(model_path: Path, max_batch: int) -> dict[str, ProfileShape]:
    """min/opt/max per input for one optimization profile: axis 0, when dynamic, runs
    1..max_batch (opt max_batch); every other dynamic axis OTHER_AXIS_RANGE. Inputs
    without a dynamic axis are left out (TensorRT needs no profile entry for them)."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    shapes: dict[str, ProfileShape] = {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dynamic = _dynamic_axes(value)
        if not dynamic:
            continue
        fixed = [d.dim_value for d in value.type.tensor_type.shape.dim]
        lo, opt, hi = list(fixed), list(fixed), list(fixed)
        for axis in dynamic:
            lo[axis], opt[axis], hi[axis] = ((1, max_batch, max_batch) if axis == 0
                                             else OTHER_AXIS_RANGE)
        shapes[value.name] = (tuple(lo), tuple(opt), tuple(hi))
    return shapes


def _fp32_ops() -> tuple[str, ...]:
    """The CUDA mixed-precision pass's keep-in-FP32 op types (one list for every GPU
    backend)."""
    from trtflow.quant.mixed_precision import FP32_OPS

    return FP32_OPS


def autocast_graph(model_path: Path, precision: str, out_path: Path) -> dict[str, Any]:
    """`model_path` converted to a float16 or bfloat16 graph by ModelOpt's AutoCast, the
    op types of the mixed-precision pass kept in FP32, float32 inputs and outputs; the
    report counts the nodes per type in each precision."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise BuildError(f"a strongly typed {precision} graph is converted by NVIDIA ModelOpt's "
                         "AutoCast: install trtflow's 'tensorrt-rtx' extra (pip install "
                         "'trtflow[tensorrt-rtx]')") from None
    low = {"fp16": "fp16", "bf16": "bf16"}[precision]
    with _quiet_modelopt():
        converted = convert_to_mixed_precision(str(model_path), low_precision_type=low,
                                               op_types_to_exclude=list(_fp32_ops()),
                                               keep_io_types=True)
    onnx.save_model(converted, str(out_path))
    return {"tool": "modelopt.onnx.autocast", "precision": precision,
            "fp32_ops": list(_fp32_ops()), **node_types(converted)}


@contextmanager
def _quiet_modelopt() -> Iterator[None]:
    """ModelOpt logs each conversion step at INFO through its own handlers (and the root
    logger): keep its errors only, for the duration of the conversion."""
    names = ["", *(n for n in logging.root.manager.loggerDict if n.startswith("modelopt"))]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def node_types(model: onnx.ModelProto) -> dict[str, Any]:
    """How many compute nodes of a typed graph produce each element type (a Cast counted
    apart): what the strongly typed network will compute in."""
    types: dict[str, int] = {}
    for value in list(model.graph.value_info) + list(model.graph.output):
        types[value.name] = value.type.tensor_type.elem_type
    counts: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in ("Constant", "Cast"):
            continue
        elem = types.get(node.output[0]) if node.output else None
        name = onnx.TensorProto.DataType.Name(elem) if elem else "unknown"
        counts[name] += 1
    casts = sum(n.op_type == "Cast" for n in model.graph.node)
    return {"nodes_by_output_type": dict(counts.most_common()), "casts": casts}


def typed_graph(precision: str, model_path: Path, calibration: Calibration | None,
                out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX file a strongly typed build of `precision` parses, and how it was made."""
    if precision == "fp32":
        return model_path, {"graph": "clean"}
    if precision in ("fp16", "bf16"):
        path = out_dir / f"model.{precision}.onnx"
        return path, {"graph": f"autocast_{precision}",
                      "conversion": autocast_graph(model_path, precision, path)}
    if precision in ("int8", "fp8"):
        if calibration is None:
            raise BuildError(f"a {precision} build reads the calibration's {precision} Q/DQ "
                             "graph, and no calibration was given")
        return calibration.qdq_model(precision), {"graph": f"{precision}_qdq"}
    raise BuildError(f"a strongly typed network builds precisions {list(TYPED_PRECISIONS)}, "
                     f"not '{precision}'")


@dataclass
class BuildLog:
    """What the builder logged: (severity, message), in order."""

    messages: list[tuple[str, str]] = field(default_factory=list)

    def errors(self) -> list[str]:
        return [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]

    def text(self) -> str:
        return "\n".join(f"[{s}] {m}" for s, m in self.messages)


def make_logger(trt: Any, log: BuildLog, verbose: bool = True) -> Any:
    """An ILogger of `trt` that appends to `log` (VERBOSE: the builder then prints the
    engine's layers, see `engine_layers`)."""
    class _Logger(trt.ILogger):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = str(severity).rsplit(".", 1)[-1]
            if verbose or level != "VERBOSE":
                log.messages.append((level, msg))

    return _Logger()


@dataclass
class Parsed:
    """A strongly typed network parsed from an ONNX file (the builder and parser keep it
    alive), and how long the parse took."""

    builder: Any
    network: Any
    parser: Any
    seconds: float


def parse_onnx(trt: Any, logger: Any, graph: Path) -> Parsed:
    """NVIDIA's ONNX parser into a strongly typed network; a BuildError naming each node
    (and op) it refused."""
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    ok = parser.parse_from_file(str(graph))
    seconds = time.perf_counter() - start
    if not ok or parser.num_errors:
        problems = []
        for i in range(parser.num_errors):
            error = parser.get_error(i)
            node = error.node_name() or f"#{error.node()}"
            problems.append(f"node '{node}' (op {error.node_operator() or '?'}): "
                            f"{' '.join(str(error.desc()).split())[:300]}")
        raise BuildError(f"NVIDIA's ONNX parser ({_library(trt)}) refused {graph}: "
                         + "; ".join(problems or ["no error recorded"]))
    return Parsed(builder, network, parser, seconds)


def _library(trt: Any) -> str:
    name = "TensorRT-RTX" if "rtx" in trt.__name__ else "TensorRT"
    return f"{name} {trt.__version__}"


def add_profile(trt: Any, builder: Any, config: Any, shapes: dict[str, ProfileShape]) -> None:
    """One optimization profile with `shapes` (nothing to add for a static graph)."""
    if not shapes:
        return
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)


def _type_name(value: Any) -> str:
    return str(value).rsplit(".", 1)[-1]


def network_layers(network: Any) -> list[dict[str, Any]]:
    """Each layer of a parsed network: name, type, input/output (tensor, data type), the
    ONNX node it came from."""
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = [layer.get_input(j) for j in range(layer.num_inputs)]
        layers.append({
            "name": layer.name, "type": _type_name(layer.type),
            "inputs": [(t.name, _type_name(t.dtype)) for t in inputs if t is not None],
            "outputs": [(layer.get_output(j).name, _type_name(layer.get_output(j).dtype))
                        for j in range(layer.num_outputs)],
            "onnx_nodes": re.findall(r"\[ONNX Layer: ([^|\]]+?)\s*(?:\|[^\]]*)?\]",
                                     str(layer.metadata or ""))})
    return layers


def precision_report(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Which layers compute in INT8/FP8/FP16/BF16/FP32, from a strongly typed network's
    layers (`network_layers`). A layer's input fed by a Dequantize of an INT8/FP8 tensor
    counts as that type: TensorRT fuses the Dequantize into the consumer, which then
    computes in it. Constants, Quantize and Dequantize are listed apart."""
    producer = {name: layer for layer in layers for name, _ in layer["outputs"]}
    rows = []
    for layer in layers:
        inputs = []
        for name, dtype in layer["inputs"]:
            source = producer.get(name)
            quantized = None
            if source is not None and source["type"] == "DEQUANTIZE" and source["inputs"]:
                quantized = source["inputs"][0][1]  # the dequantized tensor's type
            inputs.append({"tensor": name, "type": dtype, "dequantized_from": quantized})
        rows.append({"layer": layer["name"], "type": layer["type"], "inputs": inputs,
                     "outputs": [{"tensor": n, "type": t} for n, t in layer["outputs"]],
                     "computes_in": _computes_in(layer["type"], inputs, layer["outputs"]),
                     "onnx_nodes": layer["onnx_nodes"]})
    compute = [r for r in rows if r["type"] not in ("CONSTANT", "QUANTIZE", "DEQUANTIZE")]
    by_type: dict[str, Counter[str]] = {}
    for row in compute:
        by_type.setdefault(row["type"], Counter())[row["computes_in"]] += 1
    convs = [r for r in compute if r["type"] == "CONVOLUTION"]
    return {
        "layers": len(rows),
        "compute_layers": len(compute),
        "by_precision": dict(Counter(r["computes_in"] for r in compute).most_common()),
        "by_type": {t: dict(c.most_common()) for t, c in sorted(by_type.items())},
        "convolutions": len(convs),
        "convolutions_int8_inputs": sum(r["computes_in"] == "INT8" for r in convs),
        "convolutions_fp8_inputs": sum(r["computes_in"] == "FP8" for r in convs),
        "quantize_layers": sum(r["type"] == "QUANTIZE" for r in rows),
        "dequantize_layers": sum(r["type"] == "DEQUANTIZE" for r in rows),
        "float_layers": [{"layer": r["layer"], "type": r["type"], "computes_in": r["computes_in"]}
                         for r in compute if r["computes_in"] in FLOAT_TYPES + ("mixed",)],
        "rows": rows,
    }


def _computes_in(kind: str, inputs: list[dict[str, Any]], outputs: list[tuple[str, str]]
                 ) -> str:
    """Compute layers: the type both their data and weights arrive in (after Q/DQ
    fusion); 'mixed' when they differ. Other layers: their first input's (or output's)
    type after the same fusion."""
    effective = [i["dequantized_from"] or i["type"] for i in inputs]
    if kind in COMPUTE_LAYERS:
        first_two = set(effective[:2])
        return first_two.pop() if len(first_two) == 1 else "mixed"
    if effective:
        return effective[0]
    return outputs[0][1] if outputs else "unknown"


_LAYER_LINE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), ")
_SECTION = re.compile(r"(Inputs|Constants|Outputs): \[(.*?)\](?=, (?:Constants|Outputs|"
                      r"TacticName):)")
_TENSOR = re.compile(r"\{ Name: (?P<name>[^,]*),.*?Datatype: (?P<dtype>[A-Za-z0-9]+)")
_TACTIC = re.compile(r"TacticName: (?P<tactic>[^,]*),")
_METADATA = re.compile(r"Metadata: (?P<meta>.*)$")


def engine_layers(log: BuildLog) -> list[dict[str, Any]]:
    """The engine's layers as the builder's verbose log lists them after the build
    ("Layers:", one `Name: ..., LayerType: ..., Inputs: [...], ...` line each), in the
    shape of the engine inspector's JSON (Name, LayerType, Inputs/Outputs with DataType,
    TacticName, Metadata), so `tensorrt_report.fusion_report` reads either. Empty when
    the log has no such block (a builder that does not print it)."""
    lines: list[str] = []
    for severity, message in log.messages:
        if severity == "VERBOSE" and message.startswith("Layers:"):
            lines = message.splitlines()[1:]
    layers = []
    for line in lines:
        head = _LAYER_LINE.match(line)
        if head is None:
            continue
        sections = {kind: [{"Name": t["name"], "DataType": t["dtype"]}
                           for t in _TENSOR.finditer(body)]
                    for kind, body in _SECTION.findall(line)}
        tactic = _TACTIC.search(line)
        meta = _METADATA.search(line)
        layers.append({"Name": head["name"], "LayerType": head["type"],
                       "Inputs": sections.get("Inputs", []),
                       "Constants": sections.get("Constants", []),
                       "Outputs": sections.get("Outputs", []),
                       "TacticName": tactic["tactic"] if tactic else "",
                       "Metadata": meta["meta"].replace("][", "]\x1f[") if meta else ""})
    return layers


def kernel_precisions(layers: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Engine layers counted per type and input data type (what the kernels really
    read): e.g. {'correlation': {'Int8': 20}}. Synchronisation layers are left out."""
    counts: dict[str, Counter[str]] = {}
    for layer in layers:
        kind = str(layer["LayerType"])
        if kind in ("signal", "wait", "shape_call"):
            continue
        types = "+".join(sorted({t["DataType"] for t in layer["Inputs"]})) or "none"
        counts.setdefault(kind, Counter())[types] += 1
    return {k: dict(c.most_common()) for k, c in sorted(counts.items())}
