"""SmoothQuant: move per-channel activation outliers into the weights of the MatMul/Gemm
that read them, before calibration, so both sides quantize well in INT8.

For an activation X (channels on its last axis) read by MatMuls with constant weights
W (K, N), each input channel j gets a factor
    s_j = amax(X_j) ** alpha / amax(W_j,:) ** (1 - alpha)
and the graph computes (X / s) @ (diag(s) W), which equals X @ W in float. alpha
near 1 moves more of the range into the weights (Xiao et al., SmoothQuant, 2022).

Where X is the output of a LayerNormalization read only by such MatMuls, 1/s is
folded into the LayerNorm's scale and bias (no new node); otherwise one Mul by 1/s is
inserted in front of the MatMuls, which keep reading X through it, while any other
reader keeps X as it was. Every MatMul sharing an X takes the same s, from the
largest weight over all of them (as Intel Neural Compressor's ONNX pass and NVIDIA
ModelOpt do). The per-channel activation maxima come from a pass over calibration
data (`channel_amax`). Written here because neither tool's pass runs on a plain ONNX
graph without its own quantizer and calibration; trtflow calibrates once, after this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from trtflow.errors import CalibrationError, ParamsError

MIN_SCALE = 1e-5  # Intel's and ModelOpt's floor: no channel is scaled to zero
_LINEAR_OPS = ("MatMul", "Gemm")


@dataclass
class SmoothGroup:
    """One smoothed activation: its readers, where 1/s went, and how flat it became."""

    activation: str
    consumers: list[str]
    folded_into: str | None  # a LayerNormalization's label, or None: a Mul was inserted
    smoothed: str  # the tensor the MatMuls read now
    outlier_ratio_before: float  # max / median of the channel maxima
    outlier_ratio_after: float


@dataclass
class SmoothReport:
    alpha: float
    groups: list[SmoothGroup] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"alpha": self.alpha, "groups": [g.__dict__ for g in self.groups]}


def _label(node: ir.Node) -> str:
    return node.name or node.outputs[0].name or node.op_type


def _weight_rows(node: ir.Node) -> np.ndarray | None:
    """The constant weight of a MatMul/Gemm as (K, N), input channels first; None if the
    weight is not a 2-D initializer or the node transposes its activation."""
    if node.op_type not in _LINEAR_OPS or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or weight.is_graph_input():
        return None
    array = weight.const_value.numpy()
    if array.ndim != 2 or array.dtype != np.float32:
        return None
    if node.op_type == "Gemm":
        if node.attributes.get_int("transA", 0):
            return None
        return array.T if node.attributes.get_int("transB", 0) else array
    return array


def smoothable(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Activation tensor -> labels of the MatMul/Gemm nodes that read it as input 0 with a
    constant 2-D weight: the tensors SmoothQuant can smooth, in graph order."""
    groups: dict[str, list[str]] = {}
    for node in ir.from_proto(model).graph:
        source = node.inputs[0] if node.inputs else None
        if source is None or source.const_value is not None or _weight_rows(node) is None:
            continue
        groups.setdefault(source.name or "", []).append(_label(node))
    return groups


def channel_amax(model: onnx.ModelProto, tensors: Iterable[str],
                 feeds: Iterable[Mapping[str, np.ndarray]], threads: int = 1
                 ) -> dict[str, np.ndarray]:
    """max |x| per channel (last axis) of each tensor over the feeds, by ONNX Runtime."""
    from trtflow.ort_session import ort_session
    from trtflow.quant.collect import expose_outputs

    names = list(tensors)
    session = ort_session(expose_outputs(model, names), "all", threads)
    inputs = [i.name for i in session.get_inputs()]
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, {n: feed[n] for n in inputs}),
                               strict=True):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            amax[name] = peak if name not in amax else np.maximum(amax[name], peak)
    if len(amax) != len(names):
        raise CalibrationError("smoothquant: no calibration batch was given")
    return amax


def smoothing_scales(act_amax: np.ndarray, weight_amax: np.ndarray, alpha: float
                     ) -> np.ndarray:
    """s_j = amax(X_j)^alpha / amax(W_j)^(1-alpha), 1 where a channel is all zeros."""
    act = np.asarray(act_amax, np.float64)
    wgt = np.asarray(weight_amax, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = act ** alpha / wgt ** (1.0 - alpha)
    s = np.where((act > 0) & (wgt > 0) & np.isfinite(s), s, 1.0)
    return np.maximum(s, MIN_SCALE).astype(np.float32)


def _outlier_ratio(amax: np.ndarray) -> float:
    return float(amax.max() / max(float(np.median(amax)), 1e-12))


def _set_const(value: ir.Value, array: np.ndarray) -> None:
    value.const_value = ir.tensor(array.astype(np.float32), name=value.name)


def _scale_weight(node: ir.Node, s: np.ndarray) -> None:
    """W <- diag(s) W on the input-channel axis; a weight shared elsewhere is copied first."""
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None
    array = weight.const_value.numpy()
    transposed = node.op_type == "Gemm" and bool(node.attributes.get_int("transB", 0))
    scaled = array * (s[None, :] if transposed else s[:, None])
    graph = node.graph
    assert graph is not None
    if len(weight.uses()) > 1:
        name = f"{weight.name}_smoothed"
        while name in graph.initializers:
            name += "_"
        copy = ir.Value(name=name, const_value=ir.tensor(scaled.astype(np.float32), name=name),
                        shape=ir.Shape(scaled.shape), type=ir.TensorType(ir.DataType.FLOAT))
        graph.register_initializer(copy)
        node.replace_input_with(1, copy)
    else:
        _set_const(weight, scaled)


def _fold_into_layernorm(source: ir.Value, readers: list[ir.Node], s: np.ndarray) -> bool:
    """Divide a LayerNormalization's scale (and bias) by s when only `readers` read it."""
    producer = source.producer()
    if producer is None or producer.op_type != "LayerNormalization" or \
            source.is_graph_output() or {u.node for u in source.uses()} != set(readers):
        return False
    params = [v for v in producer.inputs[1:3] if v is not None]
    if not params or any(v.const_value is None or len(v.uses()) > 1 for v in params):
        return False
    for value in params:
        assert value.const_value is not None
        _set_const(value, value.const_value.numpy() / s)
    return True


def _insert_mul(graph: ir.Graph, source: ir.Value, readers: list[ir.Node],
                s: np.ndarray) -> ir.Value:
    name = source.name or "x"
    names = {v.name for n in graph for v in n.outputs} | set(graph.initializers)
    factor_name, out_name = f"{name}_smooth_factor", f"{name}_smoothed"
    while factor_name in names or out_name in names:
        factor_name, out_name = factor_name + "_", out_name + "_"
    inverse = (1.0 / s).astype(np.float32)
    factor = ir.Value(name=factor_name, const_value=ir.tensor(inverse, name=factor_name),
                      shape=ir.Shape(inverse.shape), type=ir.TensorType(ir.DataType.FLOAT))
    graph.register_initializer(factor)
    mul = ir.node("Mul", [source, factor], name=f"{name}_SmoothQuant")
    mul.outputs[0].name = out_name
    mul.outputs[0].dtype = ir.DataType.FLOAT
    mul.outputs[0].shape = source.shape
    graph.insert_before(readers[0], mul)
    for reader in readers:
        reader.replace_input_with(0, mul.outputs[0])
    return mul.outputs[0]


def smooth(model: onnx.ModelProto, act_amax: Mapping[str, np.ndarray], alpha: float = 0.5,
           only: Iterable[str] | None = None) -> tuple[onnx.ModelProto, SmoothReport]:
    """The smoothed model (same function in float) and what was done.

    `act_amax`: per-channel maxima of the tensors to smooth (`channel_amax`); `only`
    restricts smoothing to these MatMul/Gemm labels (None: every smoothable one).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ParamsError(f"smoothquant alpha must be in [0, 1], got {alpha}")
    wanted = None if only is None else set(only)
    ir_model = ir.from_proto(model)
    graph = ir_model.graph
    report = SmoothReport(alpha)
    readers: dict[str, list[ir.Node]] = {}
    values: dict[str, ir.Value] = {}
    for node in graph:
        source = node.inputs[0] if node.inputs else None
        if source is None or source.const_value is not None or _weight_rows(node) is None:
            continue
        if wanted is not None and _label(node) not in wanted:
            continue
        readers.setdefault(source.name or "", []).append(node)
        values[source.name or ""] = source
    for name, nodes in readers.items():
        if name not in act_amax:
            raise CalibrationError(f"smoothquant: no per-channel amax for tensor {name!r}")
        x_amax = np.asarray(act_amax[name], np.float32)
        w_amax = np.max([np.abs(_weight_rows(n)).max(axis=1) for n in nodes],  # type: ignore[arg-type]
                        axis=0)
        if x_amax.shape != w_amax.shape:
            raise CalibrationError(f"smoothquant: tensor {name!r} has {x_amax.size} channels, "
                                   f"its MatMul weights {w_amax.size} input rows")
        s = smoothing_scales(x_amax, w_amax, alpha)
        for node in nodes:
            _scale_weight(node, s)
        source = values[name]
        producer = source.producer()
        folded = _label(producer) if producer is not None and \
            _fold_into_layernorm(source, nodes, s) else None
        smoothed = source if folded else _insert_mul(graph, source, nodes, s)
        report.groups.append(SmoothGroup(
            name, [_label(n) for n in nodes], folded, smoothed.name or "",
            _outlier_ratio(x_amax), _outlier_ratio(x_amax / s)))
    proto = ir.to_proto(ir_model)
    onnx.checker.check_model(proto)
    return proto, report
