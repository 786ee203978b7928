"""Explicit quantization: QuantizeLinear/DequantizeLinear from one set of calibrated amax.

One calibration, two placements:

- ``"tensorrt"``: Q/DQ on the *inputs* of Conv/ConvTranspose/Gemm/MatMul and on both
  inputs of residual Adds (NVIDIA ModelOpt / pytorch-quantization style), which
  TensorRT fuses into int8 kernels. Symmetric int8, zero point 0: activations per
  tensor (scale = amax / 127), weights per output channel. Softmax, LayerNorm and the
  rest stay float.
- ``"ort_cpu"``: the node groups ONNX Runtime's CPU provider rewrites into QLinearConv,
  QLinearMatMul / MatMulIntegerToFloat, QGemm, QLinearAdd and
  QLinearGlobalAveragePool (its QDQ selectors, ``qdq_selectors.cc``): DQ on every
  input (int32 bias included) *and* Q on the output, with a following Relu absorbed;
  MaxPool/Reshape/Flatten/... get Q/DQ with their input's parameters so ORT drops them
  and runs those ops on integers.

Weights are stored as int8 initializers read by a DequantizeLinear: a quarter of the
float size, accepted by TensorRT (its documented form for weights) and by ORT.

Written here rather than taken from ORT's ``quantize_static`` or ModelOpt: both run
their own calibration; trtflow calibrates once (``methods``) and only places nodes.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from trtflow.errors import CalibrationError, ModelError, ParamsError
from trtflow.quant.methods import AMAX_FLOOR

Placement = Literal["tensorrt", "ort_cpu"]
ActivationDtype = Literal["int8", "uint8"]
PLACEMENTS = ("tensorrt", "ort_cpu")
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
# On x86 ORT fuses int8-activation Conv/MatMul groups only when asked (QDQIsInt8Allowed()
# is true only on ARM); uint8 activations fuse by default.
ORT_INT8_ALLOWED = {"session.qdqisint8allowed": "1"}
# On x86 without VNNI, U8S8 products can saturate (see REDUCED_WEIGHT_QMAX); this makes ORT
# use exact but slower U8U8 kernels instead.
ORT_U8U8_PRECISION = {"session.x64quantprecision": "1"}

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that only move or select values: Q/DQ commute with them, so a tensor behind
# them shares its source's amax (and ORT drops the Q/DQ pair around them).
PASS_THROUGH_OPS = frozenset(
    {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
# ort_cpu only: unary ops with a QLinear kernel on the CPU provider.
POOL_OPS = frozenset({"GlobalAveragePool", "AveragePool"})
_CARRIED_OPS = PASS_THROUGH_OPS | POOL_OPS
PRECISION_SENSITIVE_OPS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
    "InstanceNormalization", "BatchNormalization", "Gelu", "Erf", "Exp", "Log", "Pow",
    "Sqrt", "Reciprocal", "Div", "Sigmoid", "Tanh", "ReduceMean", "ReduceSum",
    "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceLogSumExp",
})
INT8_QMAX = 127
# 7-bit weights: on x86 without VNNI, MLAS multiplies u8 x s8 pairs with vpmaddubsw, whose
# int16 pair sums saturate above 32767 (255 * 127 * 2 = 64770); 255 * 63 * 2 = 32130 cannot.
REDUCED_WEIGHT_QMAX = 63


@dataclass
class _Plan:
    """Where Q/DQ go: the quantized nodes and, per quantized tensor, its amax source."""

    core: list[ir.Node] = field(default_factory=list)
    float_nodes: dict[str, str] = field(default_factory=dict)
    # tensor -> name of the tensor whose amax it uses (insertion order = graph order)
    amax_key: dict[ir.Value, str] = field(default_factory=dict)
    # tensorrt: the (node, input index) uses that read the DQ; ort_cpu: every use
    uses: dict[ir.Value, list[tuple[ir.Node, int]]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # node -> quantized output


def node_label(node: ir.Node) -> str:
    """A node's name, or its first output's name when it has none (what ``skip`` matches)."""
    return node.name or node.outputs[0].name or node.op_type


def _name(value: ir.Value) -> str:
    return value.name or ""  # every value of a graph read from ONNX has a name


def _input(node: ir.Node, index: int) -> ir.Value:
    """A present input (callers have checked it is there: optional inputs are None)."""
    value = node.inputs[index]
    if value is None:
        raise ModelError(f"node {node_label(node)!r}: input {index} is missing")
    return value


def _array(value: ir.Value) -> np.ndarray:
    if value.const_value is None:
        raise ModelError(f"tensor {_name(value)!r} is not a constant")
    return value.const_value.numpy()


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _is_weight(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and not value.is_graph_input() \
        and value.const_value is not None


def _is_activation(value: ir.Value | None) -> bool:
    return _is_float(value) and not _is_weight(value)


def _amax_key(value: ir.Value) -> str:
    """The tensor whose amax ``value`` takes: itself, or its source behind pass-through ops."""
    while (producer := value.producer()) is not None and producer.op_type in PASS_THROUGH_OPS \
            and _is_activation(producer.inputs[0]):
        value = _input(producer, 0)
    return _name(value)


def _from_conv(value: ir.Value) -> bool:
    producer = value.producer()
    if producer is not None and producer.op_type == "Relu":
        producer = _input(producer, 0).producer()
    return producer is not None and producer.op_type in ("Conv", "ConvTranspose")


def _activation_inputs(node: ir.Node) -> list[int]:
    """Input indices of ``node`` quantized per tensor (the weight has its own path)."""
    if node.op_type == "Add":
        return [0, 1]
    indices = [0]
    if node.op_type in ("Gemm", "MatMul") and _is_activation(node.inputs[1]):
        indices.append(1)
    return indices


def _float_reason(node: ir.Node, placement: str) -> str | None:
    """Why a candidate node cannot be quantized in this placement (None: it can)."""
    inputs = node.inputs
    if not _is_float(node.outputs[0]):
        return "output is not float32"
    if node.op_type == "Add":
        if not all(_is_activation(v) for v in inputs):
            return "an input is a constant or not float32"
        return None
    if not _is_activation(inputs[0]):
        return "input 0 is not a float32 activation"
    if node.op_type in ("Conv", "ConvTranspose") and not _is_weight(inputs[1]):
        return "weight is not an initializer"
    if not (_is_weight(inputs[1]) or _is_activation(inputs[1])):
        return "input 1 is not float32"
    if placement == "ort_cpu":
        if node.op_type == "ConvTranspose":
            return "ORT's CPU provider has no QLinearConvTranspose"
        bias = inputs[2] if len(inputs) > 2 else None
        if bias is not None and not (_is_weight(bias) and len(bias.shape or ()) == 1):
            return "bias is not a 1-D initializer (ORT needs it as int32)"
        if node.op_type == "Gemm" and bias is not None and (
                node.attributes.get_float("alpha", 1.0) != 1.0
                or node.attributes.get_float("beta", 1.0) != 1.0):
            return "Gemm with bias and alpha/beta != 1 does not fuse into QGemm"
    return None


def _candidate(node: ir.Node) -> bool:
    if node.op_type in COMPUTE_OPS:
        return True
    return node.op_type == "Add" and len(node.inputs) == 2 and any(
        v is not None and _from_conv(v) for v in node.inputs)


def _group_output(node: ir.Node) -> ir.Value:
    """The output ORT quantizes for ``node``: through a sole following Relu, which it drops."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) == 1 and uses[0].node.op_type == "Relu" and not out.is_graph_output():
        return uses[0].node.outputs[0]
    return out


def _feeds_only_quantized(value: ir.Value, core: set[ir.Node]) -> bool:
    """Every use is a quantized node, or a pass-through op whose output feeds only those."""
    if value.is_graph_output() or not value.uses():
        return False
    for use in value.uses():
        node = use.node
        if node in core:
            continue
        if node.op_type in PASS_THROUGH_OPS and use.idx == 0 \
                and _feeds_only_quantized(node.outputs[0], core):
            continue
        return False
    return True


def _plan(graph: ir.Graph, placement: str, skip: Iterable[str] = ()) -> _Plan:
    skip = set(skip)
    plan = _Plan()
    for node in graph:
        if not _candidate(node):
            continue
        reason = "skipped by request" if node_label(node) in skip \
            else _float_reason(node, placement)
        if reason is None:
            plan.core.append(node)
        else:
            plan.float_nodes[node_label(node)] = reason
    core = set(plan.core)

    wanted: dict[ir.Value, list[tuple[ir.Node, int]]] = collections.defaultdict(list)
    for node in plan.core:
        for index in _activation_inputs(node):
            wanted[_input(node, index)].append((node, index))
    if placement == "ort_cpu":
        for node in plan.core:
            out = _group_output(node)
            if node.op_type in ("Conv", "Add") or _feeds_only_quantized(out, core):
                wanted.setdefault(out, [])
                plan.outputs[node_label(node)] = _name(out)
        # Carry quantization through value-preserving ops and pools, in graph order.
        for node in graph:
            if node_label(node) in skip or not node.inputs or node.inputs[0] not in wanted:
                continue
            if node.op_type in _CARRIED_OPS and _is_float(node.outputs[0]):
                wanted.setdefault(node.outputs[0], [])
                if node.op_type in POOL_OPS:
                    plan.outputs[node_label(node)] = _name(node.outputs[0])

    for value in _graph_order(graph, wanted):
        plan.amax_key[value] = _amax_key(value)
        plan.uses[value] = wanted[value]
    return plan


def _graph_order(graph: ir.Graph, values: Iterable[ir.Value]) -> list[ir.Value]:
    position = {v: i for i, v in enumerate(graph.inputs)}
    for node in graph:
        for v in node.outputs:
            position[v] = len(position)
    return sorted(values, key=lambda v: position.get(v, -1))


def _ir_model(model: onnx.ModelProto) -> ir.Model:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        model = onnx.version_converter.convert_version(model, MIN_OPSET)
    return ir.from_proto(onnx.shape_inference.infer_shapes(model))


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ParamsError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def quantizable_activations(model: onnx.ModelProto, placement: Placement) -> list[str]:
    """Float activations whose amax ``insert_qdq`` needs for ``placement``, in graph order.

    Tensors behind pass-through ops (MaxPool, Reshape, ...) share their source's amax,
    so only the source is listed. Any ``skip`` set needs a subset of these.
    """
    _check_placement(placement)
    plan = _plan(_ir_model(model).graph, placement)
    return list(dict.fromkeys(plan.amax_key.values()))


def activation_qparams(amax: float, activation_dtype: ActivationDtype = "int8",
                       nonnegative: bool = False) -> tuple[np.float32, np.ndarray]:
    """(scale, zero point) of one activation tensor.

    Symmetric: scale = amax/127, zero point 0 (int8) or 128 (uint8). Non-negative
    tensors (Relu outputs, ort_cpu only) take [0, amax]: scale = amax/255, zero point
    at the type's minimum, the only form in which ORT drops the Relu and fuses the
    op before it (``IsClipMadeRedundantByQ``).
    """
    amax = max(float(amax), AMAX_FLOOR)
    dtype = np.int8 if activation_dtype == "int8" else np.uint8
    if nonnegative:
        return np.float32(amax / 255.0), np.array(np.iinfo(dtype).min, dtype)
    return np.float32(amax / INT8_QMAX), np.array(0 if dtype is np.int8 else 128, dtype)


def quantize_weight(weight: np.ndarray, axis: int | None,
                    qmax: int = INT8_QMAX) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weight per ``axis`` (or tensor): scale = max|w| / qmax, values in ±qmax."""
    w = np.asarray(weight, dtype=np.float32)
    if axis is None:
        amax = np.abs(w).max(initial=0.0)
        shape: tuple[int, ...] = ()
    else:
        amax = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis), initial=0.0)
        shape = tuple(-1 if a == axis else 1 for a in range(w.ndim))
    scale = (np.maximum(amax, AMAX_FLOOR) / qmax).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def u8s8_may_saturate(cpu_flags: Iterable[str]) -> bool:
    """Whether MLAS's U8S8 kernels use vpmaddubsw here (AVX2 or AVX-512 without VNNI).

    Then full-range int8 weights can saturate int16 pair sums: quantize with
    ``reduce_range=True`` or run with ``ORT_U8U8_PRECISION``. ``cpu_flags`` as in
    /proc/cpuinfo.
    """
    flags = set(cpu_flags)
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def _weight_axis(node: ir.Node, ndim: int) -> int | None:
    """The output-channel axis of a weight, None where only per-tensor scales fit."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":  # weight (C_in, C_out / group, ...)
        return 1 if node.attributes.get_int("group", 1) == 1 else None
    if ndim != 2:
        return None
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    return 1  # MatMul: (K, N), one scale per column


class _Editor:
    """Adds initializers and Q/DQ nodes to one graph with names unique in it."""

    def __init__(self, graph: ir.Graph, weight_qmax: int = INT8_QMAX) -> None:
        self.graph = graph
        self.weight_qmax = weight_qmax
        self.names = {v.name for v in graph.inputs} | set(graph.initializers)
        for node in graph:
            self.names.add(node.name or "")
            self.names.update(v.name for v in node.outputs)
        self.weights: dict[tuple[str, int | None], tuple[ir.Node, np.ndarray]] = {}

    def unique(self, name: str) -> str:
        candidate, i = name, 0
        while candidate in self.names:
            i += 1
            candidate = f"{name}_{i}"
        self.names.add(candidate)
        return candidate

    def initializer(self, name: str, array: np.ndarray) -> ir.Value:
        name = self.unique(name)
        value = ir.Value(name=name, const_value=ir.tensor(array, name=name),
                         shape=ir.Shape(array.shape),
                         type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))
        self.graph.register_initializer(value)
        return value

    def dequantize(self, source: ir.Value, scale: ir.Value, zero_point: ir.Value,
                   axis: int | None, name: str) -> ir.Node:
        attributes = {} if axis is None else {"axis": axis}
        dq = ir.node("DequantizeLinear", [source, scale, zero_point], attributes,
                     name=self.unique(f"{name}_DequantizeLinear"))
        dq.outputs[0].name = self.unique(f"{name}_dequantized")
        dq.outputs[0].dtype = ir.DataType.FLOAT
        dq.outputs[0].shape = source.shape
        return dq

    def insert_activation_qdq(self, value: ir.Value, scale: np.float32, zero_point: np.ndarray,
                              uses: list[tuple[ir.Node, int]]) -> None:
        """value -> Q -> DQ -> ``uses``; a graph output keeps its name on the DQ's output."""
        name = _name(value)
        scale_v = self.initializer(f"{name}_scale", np.asarray(scale, np.float32))
        zp_v = self.initializer(f"{name}_zero_point", zero_point)
        q = ir.node("QuantizeLinear", [value, scale_v, zp_v],
                    name=self.unique(f"{name}_QuantizeLinear"))
        q.outputs[0].name = self.unique(f"{name}_quantized")
        q.outputs[0].dtype = ir.DataType.from_numpy(zero_point.dtype)
        q.outputs[0].shape = value.shape
        dq = self.dequantize(q.outputs[0], scale_v, zp_v, None, name)
        for node, index in uses:
            node.replace_input_with(index, dq.outputs[0])
        if value.is_graph_output():  # ORT fuses only an op whose output is not a graph output
            outputs = self.graph.outputs
            outputs[outputs.index(value)] = dq.outputs[0]
            value.name, dq.outputs[0].name = self.unique(f"{name}_float"), name
        producer = value.producer()
        if producer is None:
            self.graph.insert_before(self.graph.node(0), [q, dq])
        else:
            self.graph.insert_after(producer, [q, dq])

    def dequantized_weight(self, node: ir.Node, index: int) -> np.ndarray:
        """Replace ``node``'s weight input by DQ(int8 initializer); returns its scale."""
        weight = _input(node, index)
        array, name = _array(weight), _name(weight)
        axis = _weight_axis(node, array.ndim)
        key = (name, axis)
        if key not in self.weights:
            q, scale = quantize_weight(array, axis, self.weight_qmax)
            q_v = self.initializer(f"{name}_int8", q)
            scale_v = self.initializer(f"{name}_scale", scale)
            zp_v = self.initializer(f"{name}_zero_point", np.zeros_like(scale, np.int8))
            self.weights[key] = (self.dequantize(q_v, scale_v, zp_v, axis, name), scale)
        dq, scale = self.weights[key]
        if dq.graph is None:
            self.graph.insert_before(node, dq)
        node.replace_input_with(index, dq.outputs[0])
        self._drop_if_unused(weight)
        return scale

    def dequantized_bias(self, node: ir.Node, input_scale: np.float32,
                         weight_scale: np.ndarray) -> None:
        """int32 bias with scale = input scale * weight scale: ORT's QLinearConv/QGemm form."""
        bias = _input(node, 2)
        name = _name(bias)
        scale = (np.float32(input_scale) * weight_scale).astype(np.float32)
        info = np.iinfo(np.int32)
        q = np.clip(np.rint(_array(bias) / scale), info.min, info.max)
        q_v = self.initializer(f"{name}_int32", q.astype(np.int32))
        scale_v = self.initializer(f"{name}_scale", scale)
        zp_v = self.initializer(f"{name}_zero_point", np.zeros_like(scale, np.int32))
        dq = self.dequantize(q_v, scale_v, zp_v, 0 if scale.ndim else None, name)
        self.graph.insert_before(node, dq)
        node.replace_input_with(2, dq.outputs[0])
        self._drop_if_unused(bias)

    def _drop_if_unused(self, value: ir.Value) -> None:
        if not value.uses() and not value.is_graph_output():
            self.graph.initializers.pop(_name(value))


def insert_qdq(model: onnx.ModelProto, amax: Mapping[str, float], placement: Placement,
               activation_dtype: ActivationDtype = "int8",
               skip: Iterable[str] = frozenset(), *,
               reduce_range: bool = False) -> tuple[onnx.ModelProto, dict]:
    """The Q/DQ model for ``placement`` and a report of what was quantized and what stayed float.

    ``amax`` maps the names from ``quantizable_activations`` to amax > 0; ``skip`` names
    nodes (``node_label``) to keep in float. TensorRT takes only symmetric int8.
    ``reduce_range`` stores weights in ±63 (see ``REDUCED_WEIGHT_QMAX``): for uint8
    activations on x86 CPUs without VNNI, where full-range weights saturate.
    """
    _check_placement(placement)
    if activation_dtype not in ("int8", "uint8"):
        raise ParamsError(f"activation_dtype must be 'int8' or 'uint8', got {activation_dtype!r}")
    if placement == "tensorrt" and activation_dtype != "int8":
        raise ParamsError("placement 'tensorrt' takes only int8 activations (zero point 0)")
    qdq_model = _ir_model(model)
    graph = qdq_model.graph
    plan = _plan(graph, placement, skip)
    missing = sorted({k for k in plan.amax_key.values() if k not in amax})
    if missing:
        raise CalibrationError(f"no amax for tensors {missing} (placement {placement!r})")

    producers: dict[str, ir.Node | None] = {_name(v): None for v in graph.inputs}
    producers.update((_name(v), n) for n in graph for v in n.outputs)
    quantized = _quantized_entries(plan)  # names before the graph is edited
    float_tensors = _float_tensors(graph, plan, placement)
    activations: dict[str, dict] = {}
    editor = _Editor(graph, REDUCED_WEIGHT_QMAX if reduce_range else INT8_QMAX)
    for value, key in plan.amax_key.items():
        producer = producers[key]
        relu = producer is not None and producer.op_type == "Relu"
        scale, zero_point = activation_qparams(
            amax[key], activation_dtype, nonnegative=placement == "ort_cpu" and relu)
        activations[_name(value)] = {"amax_from": key, "scale": float(scale),
                                   "zero_point": int(zero_point), "dtype": str(zero_point.dtype)}
        uses = plan.uses[value] if placement == "tensorrt" else \
            [(u.node, u.idx) for u in value.uses()]
        editor.insert_activation_qdq(value, scale, zero_point, uses)

    for node in plan.core:
        if node.op_type not in COMPUTE_OPS or not _is_weight(node.inputs[1]):
            continue
        weight_scale = editor.dequantized_weight(node, 1)
        if placement == "ort_cpu" and len(node.inputs) > 2 and node.inputs[2] is not None:
            input_scale = activations[quantized[node_label(node)]["inputs"][0]]["scale"]
            editor.dequantized_bias(node, np.float32(input_scale), weight_scale)

    qdq_proto = ir.to_proto(qdq_model)
    onnx.checker.check_model(qdq_proto, full_check=True)
    float_ops = len(plan.float_nodes)
    candidates = len(plan.core) + float_ops
    return qdq_proto, {
        "placement": placement,
        "activation_dtype": activation_dtype,
        "weight_qmax": editor.weight_qmax,
        "quantized_nodes": quantized,
        "float_nodes": dict(plan.float_nodes),
        "float_tensors": float_tensors,
        "activations": activations,
        "quantizable_ops": candidates,
        "float_ops": float_ops,
        "float_fraction": float_ops / candidates if candidates else 0.0,
        # what an x86 ORT session needs to fuse this model (see ORT_INT8_ALLOWED)
        "ort_session_config": dict(ORT_INT8_ALLOWED)
        if placement == "ort_cpu" and activation_dtype == "int8" else {},
    }


def _quantized_entries(plan: _Plan) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for node in plan.core:
        entry: dict = {"op_type": node.op_type,
                       "inputs": [_name(_input(node, i)) for i in _activation_inputs(node)]}
        if node.op_type in COMPUTE_OPS and _is_weight(node.inputs[1]):
            weight = _input(node, 1)
            entry["weight"] = _name(weight)
            entry["weight_axis"] = _weight_axis(node, _array(weight).ndim)
        if node_label(node) in plan.outputs:
            entry["output"] = plan.outputs[node_label(node)]
        entries[node_label(node)] = entry
    return entries


def _float_tensors(graph: ir.Graph, plan: _Plan, placement: str) -> dict[str, str]:
    """Activation inputs of float candidates and precision-sensitive ops left without Q/DQ."""
    float_tensors: dict[str, str] = {}
    for node in graph:
        label = node_label(node)
        if label in plan.float_nodes:
            reason = f"{node.op_type} {label!r} stays float: {plan.float_nodes[label]}"
        elif node.op_type in PRECISION_SENSITIVE_OPS:
            reason = f"{node.op_type} {label!r} is precision-sensitive: runs in float"
        else:
            continue
        for index, value in enumerate(node.inputs):
            quantized = value in plan.amax_key and (
                placement == "ort_cpu" or (node, index) in plan.uses[value])
            if value is not None and _is_activation(value) and not quantized:
                float_tensors.setdefault(_name(value), reason)
    return float_tensors


def count_fused_ops(model: onnx.ModelProto | str | Path, level: Literal["extended", "all"] = "all",
                    session_config: Mapping[str, str] | None = None,
                    optimized_path: str | Path | None = None) -> collections.Counter[str]:
    """Op counts of the graph ONNX Runtime's CPU provider runs after its own optimizations.

    Saved through ``optimized_model_filepath``: QLinearConv / QLinearMatMul / QGemm there
    prove a Q/DQ model is fused, Conv + DequantizeLinear that it runs dequantized floats.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the "hardware specific optimizations" warning
    options.graph_optimization_level = {
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(key, value)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(optimized_path) if optimized_path else Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(target)
        ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(target), load_external_data=False)
    return collections.Counter(node.op_type for node in optimized.graph.node)
