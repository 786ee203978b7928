"""Explicit quantization: QuantizeLinear/DequantizeLinear from one set of calibrated amax.

The placement rules (which tensors get Q/DQ, NVIDIA's residual rule) live in
``placement``; this module edits the graph: scales and zero points, int8 (or FP8)
weight initializers read by a DequantizeLinear, and a report of what stayed float.

- ``"tensorrt"`` placement: symmetric, zero point 0; activations per tensor, weights
  per output channel. ``precision="int8"``: scale = amax / 127. ``precision="fp8"``:
  ``FLOAT8E4M3FN`` Q/DQ (opset 19), scale = amax / 448, the graph TensorRT builds
  FP8 engines from (Hopper and later) and ONNX Runtime runs on the CPU as a numerical
  stand-in.
- ``"ort_cpu"`` placement: int8 or uint8, the groups ORT's CPU provider fuses.

Weights are stored as int8 (FP8) initializers read by a DequantizeLinear: a quarter of
the float size, accepted by TensorRT (its documented form for weights) and by ORT.

Written here rather than taken from ORT's ``quantize_static`` or ModelOpt: both run
their own calibration; trtflow calibrates once (``methods``) and only places nodes.
ModelOpt's placement is the test oracle (tests/unit/test_qdq_modelopt.py).
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from trtflow.errors import CalibrationError, ParamsError
from trtflow.quant.methods import AMAX_FLOOR
from trtflow.quant.placement import (
    COMPUTE_OPS,
    MIN_OPSET,
    PASS_THROUGH_OPS,
    PLACEMENTS,
    POOL_OPS,
    PRECISION_SENSITIVE_OPS,
    Placement,
    Plan,
    activation_inputs,
    check_placement,
    float_activations,
    ir_model,
    is_activation,
    is_weight,
    node_label,
    plan_placement,
    present_input,
    quantizable_activations,
    value_name,
)

__all__ = [
    "COMPUTE_OPS", "FP8_MAX", "INT8_QMAX", "ORT_INT8_ALLOWED", "ORT_U8U8_PRECISION",
    "PASS_THROUGH_OPS", "PLACEMENTS", "POOL_OPS", "PRECISION_SENSITIVE_OPS",
    "REDUCED_WEIGHT_QMAX", "ActivationDtype", "Placement", "QuantPrecision",
    "activation_qparams", "count_fused_ops", "float_activations", "insert_qdq",
    "node_label", "quantizable_activations", "quantize_weight", "u8s8_may_saturate",
]

ActivationDtype = Literal["int8", "uint8"]
QuantPrecision = Literal["int8", "fp8"]
# On x86 ORT fuses int8-activation Conv/MatMul groups only when asked (QDQIsInt8Allowed()
# is true only on ARM); uint8 activations fuse by default.
ORT_INT8_ALLOWED = {"session.qdqisint8allowed": "1"}
# On x86 without VNNI, U8S8 products can saturate (see REDUCED_WEIGHT_QMAX); this makes ORT
# use exact but slower U8U8 kernels instead.
ORT_U8U8_PRECISION = {"session.x64quantprecision": "1"}
FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear with FLOAT8E4M3FN
FP8_MAX = 448.0  # largest finite E4M3FN value
INT8_QMAX = 127
# 7-bit weights: on x86 without VNNI, MLAS multiplies u8 x s8 pairs with vpmaddubsw, whose
# int16 pair sums saturate above 32767 (255 * 127 * 2 = 64770); 255 * 63 * 2 = 32130 cannot.
REDUCED_WEIGHT_QMAX = 63


def activation_qparams(amax: float, activation_dtype: ActivationDtype = "int8",
                       nonnegative: bool = False, precision: QuantPrecision = "int8"
                       ) -> tuple[np.float32, np.ndarray]:
    """(scale, zero point) of one activation tensor.

    Symmetric: scale = amax/127, zero point 0 (int8) or 128 (uint8); FP8: scale =
    amax/448, an E4M3FN zero point 0. Non-negative
    tensors (Relu outputs, ort_cpu only) take [0, amax]: scale = amax/255, zero point
    at the type's minimum, the only form in which ORT drops the Relu and fuses the
    op before it (``IsClipMadeRedundantByQ``).
    """
    amax = max(float(amax), AMAX_FLOOR)
    if precision == "fp8":
        return np.float32(amax / FP8_MAX), np.array(0, ml_dtypes.float8_e4m3fn)
    dtype = np.int8 if activation_dtype == "int8" else np.uint8
    if nonnegative:
        return np.float32(amax / 255.0), np.array(np.iinfo(dtype).min, dtype)
    return np.float32(amax / INT8_QMAX), np.array(0 if dtype is np.int8 else 128, dtype)


def quantize_weight(weight: np.ndarray, axis: int | None, qmax: int = INT8_QMAX,
                    precision: QuantPrecision = "int8") -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight per ``axis`` (or tensor): scale = max|w| / qmax, values in ±qmax
    (int8), or scale = max|w| / 448 and E4M3FN values rounded to nearest even (fp8)."""
    w = np.asarray(weight, dtype=np.float32)
    if axis is None:
        amax = np.abs(w).max(initial=0.0)
        shape: tuple[int, ...] = ()
    else:
        amax = np.abs(w).max(axis=tuple(a for a in range(w.ndim) if a != axis), initial=0.0)
        shape = tuple(-1 if a == axis else 1 for a in range(w.ndim))
    if precision == "fp8":
        scale = (np.maximum(amax, AMAX_FLOOR) / FP8_MAX).astype(np.float32)
        scaled = np.clip(w / scale.reshape(shape), -FP8_MAX, FP8_MAX)
        return scaled.astype(ml_dtypes.float8_e4m3fn), scale
    scale = (np.maximum(amax, AMAX_FLOOR) / qmax).astype(np.float32)
    q = np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def _array(value: ir.Value) -> np.ndarray:
    if value.const_value is None:
        raise CalibrationError(f"tensor {value_name(value)!r} is not a constant")
    return value.const_value.numpy()


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

    def __init__(self, graph: ir.Graph, weight_qmax: int = INT8_QMAX,
                 precision: QuantPrecision = "int8") -> None:
        self.graph = graph
        self.weight_qmax = weight_qmax
        self.precision: QuantPrecision = precision
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
        name = value_name(value)
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
        weight = present_input(node, index)
        array, name = _array(weight), value_name(weight)
        axis = _weight_axis(node, array.ndim)
        key = (name, axis)
        if key not in self.weights:
            q, scale = quantize_weight(array, axis, self.weight_qmax, self.precision)
            q_v = self.initializer(f"{name}_{self.precision}", q)
            scale_v = self.initializer(f"{name}_scale", scale)
            zp_v = self.initializer(f"{name}_zero_point", np.zeros_like(scale, q.dtype))
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
        bias = present_input(node, 2)
        name = value_name(bias)
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
            self.graph.initializers.pop(value_name(value))


def insert_qdq(model: onnx.ModelProto, amax: Mapping[str, float], placement: Placement,
               activation_dtype: ActivationDtype = "int8",
               skip: Iterable[str] = frozenset(), *,
               reduce_range: bool = False, precision: QuantPrecision = "int8"
               ) -> tuple[onnx.ModelProto, dict]:
    """The Q/DQ model for ``placement`` and a report of what was quantized and what stayed float.

    ``amax`` maps the names from ``quantizable_activations`` to amax > 0; ``skip`` names
    nodes (``node_label``) to keep in float. TensorRT takes only symmetric int8 or FP8.
    ``reduce_range`` stores weights in ±63 (see ``REDUCED_WEIGHT_QMAX``): for uint8
    activations on x86 CPUs without VNNI, where full-range weights saturate.
    ``precision="fp8"`` (tensorrt placement only) writes E4M3FN Q/DQ at opset 19.
    """
    check_placement(placement)
    if precision not in ("int8", "fp8"):
        raise ParamsError(f"precision must be 'int8' or 'fp8', got {precision!r}")
    if precision == "fp8" and (placement != "tensorrt" or reduce_range):
        raise ParamsError("fp8 Q/DQ is placed only the TensorRT way, without reduce_range")
    if activation_dtype not in ("int8", "uint8"):
        raise ParamsError(f"activation_dtype must be 'int8' or 'uint8', got {activation_dtype!r}")
    if placement == "tensorrt" and activation_dtype != "int8":
        raise ParamsError("placement 'tensorrt' takes only int8 activations (zero point 0)")
    qdq_model = ir_model(model, FP8_OPSET if precision == "fp8" else MIN_OPSET)
    graph = qdq_model.graph
    plan = plan_placement(graph, placement, skip)
    missing = sorted({k for k in plan.amax_key.values() if k not in amax})
    if missing:
        raise CalibrationError(f"no amax for tensors {missing} (placement {placement!r})")

    producers: dict[str, ir.Node | None] = {value_name(v): None for v in graph.inputs}
    producers.update((value_name(v), n) for n in graph for v in n.outputs)
    quantized = _quantized_entries(plan, placement)  # names before the graph is edited
    float_tensors = _float_tensors(graph, plan, placement)
    activations: dict[str, dict] = {}
    editor = _Editor(graph, REDUCED_WEIGHT_QMAX if reduce_range else INT8_QMAX, precision)
    for value, key in plan.amax_key.items():
        producer = producers[key]
        relu = producer is not None and producer.op_type == "Relu"
        scale, zero_point = activation_qparams(
            amax[key], activation_dtype, nonnegative=placement == "ort_cpu" and relu,
            precision=precision)
        activations[value_name(value)] = {"amax_from": key, "scale": float(scale),
                                          "zero_point": int(zero_point.astype(np.int32)),
                                          "dtype": str(zero_point.dtype)}
        uses = plan.uses[value] if placement == "tensorrt" else \
            [(u.node, u.idx) for u in value.uses()]
        editor.insert_activation_qdq(value, scale, zero_point, uses)

    for node in plan.core:
        if node.op_type not in COMPUTE_OPS or not is_weight(node.inputs[1]):
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
        "precision": precision,
        "activation_dtype": "float8e4m3fn" if precision == "fp8" else activation_dtype,
        "weight_qmax": editor.weight_qmax,
        "quantized_nodes": quantized,
        "float_nodes": dict(plan.float_nodes),
        "float_tensors": float_tensors,
        "residual_inputs_left_float": dict(plan.residual),
        "activations": activations,
        "quantizable_ops": candidates,
        "float_ops": float_ops,
        "float_fraction": float_ops / candidates if candidates else 0.0,
        # what an x86 ORT session needs to fuse this model (see ORT_INT8_ALLOWED)
        "ort_session_config": dict(ORT_INT8_ALLOWED)
        if placement == "ort_cpu" and activation_dtype == "int8" else {},
    }


def _quantized_entries(plan: Plan, placement: str) -> dict[str, dict]:
    entries: dict[str, dict] = {}
    for node in plan.core:
        inputs = activation_inputs(node, placement)
        entry: dict = {"op_type": node.op_type,
                       "inputs": [value_name(present_input(node, i)) for i in inputs]}
        if node.op_type in COMPUTE_OPS and is_weight(node.inputs[1]):
            weight = present_input(node, 1)
            entry["weight"] = value_name(weight)
            entry["weight_axis"] = _weight_axis(node, _array(weight).ndim)
        if node_label(node) in plan.outputs:
            entry["output"] = plan.outputs[node_label(node)]
        entries[node_label(node)] = entry
    return entries


def _float_tensors(graph: ir.Graph, plan: Plan, placement: str) -> dict[str, str]:
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
            if value is not None and is_activation(value) and not quantized:
                float_tensors.setdefault(value_name(value), reason)
    return float_tensors


def count_fused_ops(model: onnx.ModelProto | str | Path, level: Literal["extended", "all"] = "all",
                    session_config: Mapping[str, str] | None = None,
                    optimized_path: str | Path | None = None) -> collections.Counter[str]:
    """Op counts of the graph ONNX Runtime's CPU provider runs after its own optimizations.

    Saved through ``optimized_model_filepath``: QLinearConv / QLinearMatMul / QGemm there
    prove a Q/DQ model is fused, Conv + DequantizeLinear that it runs dequantized floats.
    """
    from trtflow.ort_session import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(optimized_path) if optimized_path else Path(tmp) / "optimized.onnx"
        ort_session(model, level, config_entries=session_config, optimized_model_path=target)
        optimized = onnx.load(str(target), load_external_data=False)
    return collections.Counter(node.op_type for node in optimized.graph.node)
