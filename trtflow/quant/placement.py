"""Where Q/DQ go: the placement rules, separate from the graph editing in ``qdq.py``.

Two placements from one set of amax:

- ``"tensorrt"``: Q/DQ on the *inputs* of Conv/ConvTranspose/Gemm/MatMul and of
  residual Adds, as NVIDIA ModelOpt places them for TensorRT. An Add whose input comes
  from a Conv (through Relu/BatchNormalization/...: ModelOpt's ``get_fusible_backbone``)
  keeps Q/DQ only on its other, identity input, so TensorRT fuses Conv+Add (ModelOpt's
  ``build_non_residual_input_map``, transcribed in :func:`residual_inputs`).
- ``"ort_cpu"``: the node groups ONNX Runtime's CPU provider rewrites into QLinear ops
  (its QDQ selectors, ``qdq_selectors.cc``): DQ on every input and Q on the output.

The plan is computed on an ``onnx_ir`` graph and names tensors; ``qdq.insert_qdq``
then edits the graph. Differences from ModelOpt that remain are listed, with NVIDIA's
reason, in ``docs/quantization.md``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import onnx
import onnx_ir as ir

from trtflow.errors import ModelError, ParamsError

Placement = Literal["tensorrt", "ort_cpu"]
PLACEMENTS = ("tensorrt", "ort_cpu")
MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear

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
# ModelOpt's get_copy_ops(): skipped when matching a Conv's fusible path.
_COPY_OPS = frozenset({
    "Flatten", "Transpose", "Concat", "Split", "Squeeze", "Expand", "ReverseSequence",
    "Reshape", "Tile", "Gather", "Slice", "GatherElements", "GatherND", "ScatterElements",
    "ScatterND", "OneHot"})
# ModelOpt's fusible_linear_path_types, read backwards from the Add's input producer
# ("BiasAdd"/"ConstMul": an Add/Mul with a constant input, optional where listed).
_FUSIBLE_PATHS = tuple(
    path + (conv,) for conv in ("Conv", "ConvTranspose") for path in (
        ("BiasAdd", "ConstMul"),
        ("Relu", "BiasAdd", "ConstMul"),
        ("BatchNormalization", "BiasAdd"),
        ("Relu", "BatchNormalization", "BiasAdd"),
        ("MaxPool", "Relu", "BatchNormalization", "BiasAdd"),
        ("Mul", "Sigmoid", "BatchNormalization"),
    ))
_OPTIONAL_PATH_TYPES = ("BiasAdd", "ConstMul")


@dataclass
class Plan:
    """Where Q/DQ go: the quantized nodes and, per quantized tensor, its amax source."""

    core: list[ir.Node] = field(default_factory=list)
    float_nodes: dict[str, str] = field(default_factory=dict)
    # tensor -> name of the tensor whose amax it uses (insertion order = graph order)
    amax_key: dict[ir.Value, str] = field(default_factory=dict)
    # tensorrt: the (node, input index) uses that read the DQ; ort_cpu: every use
    uses: dict[ir.Value, list[tuple[ir.Node, int]]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # node -> quantized output
    # tensorrt: Add node -> the input index left float by the residual rule
    residual: dict[str, int] = field(default_factory=dict)


def node_label(node: ir.Node) -> str:
    """A node's name, or its first output's name when it has none (what ``skip`` matches)."""
    return node.name or node.outputs[0].name or node.op_type


def value_name(value: ir.Value) -> str:
    return value.name or ""  # every value of a graph read from ONNX has a name


def present_input(node: ir.Node, index: int) -> ir.Value:
    """A present input (callers have checked it is there: optional inputs are None)."""
    value = node.inputs[index]
    if value is None:
        raise ModelError(f"node {node_label(node)!r}: input {index} is missing")
    return value


def is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def is_weight(value: ir.Value | None) -> bool:
    return value is not None and value.is_initializer() and not value.is_graph_input() \
        and value.const_value is not None


def is_activation(value: ir.Value | None) -> bool:
    return is_float(value) and not is_weight(value)


def _amax_key(value: ir.Value) -> str:
    """The tensor whose amax ``value`` takes: itself, or its source behind pass-through ops."""
    while (producer := value.producer()) is not None and producer.op_type in PASS_THROUGH_OPS \
            and is_activation(producer.inputs[0]):
        value = present_input(producer, 0)
    return value_name(value)


# --- NVIDIA's residual rule (ModelOpt graph_utils.build_non_residual_input_map) -----------

def _has_constant_input(node: ir.Node) -> bool:
    return any(v is not None and (is_weight(v) or _op_type(v.producer()) == "Constant")
               for v in node.inputs)


def _op_type(node: ir.Node | None) -> str | None:
    return None if node is None else node.op_type


def _path_type(node: ir.Node) -> str:
    if node.op_type == "Add" and _has_constant_input(node):
        return "BiasAdd"
    if node.op_type == "Mul" and _has_constant_input(node):
        return "ConstMul"
    return node.op_type


def _parents(node: ir.Node) -> list[ir.Node]:
    """Producers of the node's non-constant inputs, in input order."""
    return [p for v in node.inputs if v is not None and not is_weight(v)
            and (p := v.producer()) is not None]


def _matches_backwards(node: ir.Node, path: tuple[str, ...]) -> bool:
    """ModelOpt's ``has_path_type(..., is_forward=False, wild_card_types=copy ops)``."""
    if not path:
        return True
    kind = _path_type(node)
    matched = kind == path[0] or node.op_type == path[0]
    wild = kind in _COPY_OPS
    if not matched and not wild and path[0] not in _OPTIONAL_PATH_TYPES:
        return False
    # a match, or an optional type (present or not), is consumed; a copy op is skipped
    rest = path[1:] if matched or path[0] in _OPTIONAL_PATH_TYPES else path
    if not matched and not wild:  # an optional type that is absent: this node, the rest
        return _matches_backwards(node, rest)
    return any(_matches_backwards(parent, rest) for parent in _parents(node)) or not rest


def _backbone_search(node: ir.Node) -> ir.Node | None:
    if node.op_type in ("Conv", "ConvTranspose"):
        return node
    for parent in _parents(node):
        found = _backbone_search(parent)
        if found is not None:
            return found
    return None


def fusible_backbone(node: ir.Node) -> ir.Node | None:
    """The Conv that TensorRT fuses with ``node`` and its path (ModelOpt's
    ``get_fusible_backbone``), or None."""
    if any(_matches_backwards(node, path) for path in _FUSIBLE_PATHS):
        return _backbone_search(node)
    return None


def _ancestor_distances(node: ir.Node) -> dict[ir.Node, int]:
    """ModelOpt's ``_find_ancestors``: a depth-first walk, first distance found kept."""
    distances = {node: 0}
    stack = [(node, 0)]
    while stack:
        current, distance = stack.pop()
        for parent in _parents(current):
            if parent not in distances:
                distances[parent] = distance + 1
                stack.append((parent, distance + 1))
    return distances


def _lowest_common_ancestor(a: ir.Node, b: ir.Node) -> tuple[ir.Node | None, int, int]:
    first, second = _ancestor_distances(a), _ancestor_distances(b)
    common = [n for n in first if n in second]
    if not common:
        return None, -1, -1
    best = min(common, key=lambda n: first[n])
    return best, first[best], second[best]


def residual_input(node: ir.Node) -> int | None:
    """For an Add, the index of the input NVIDIA leaves without Q/DQ (the Conv branch),
    or None when both inputs are quantized (``build_non_residual_input_map``)."""
    if node.op_type != "Add" or len(node.inputs) != 2 or _has_constant_input(node):
        return None
    producers = [v.producer() if v is not None else None for v in node.inputs]
    backbones = [fusible_backbone(p) if p is not None else None for p in producers]
    if producers[0] is None or producers[1] is None:
        # An identity that is the graph input: ModelOpt's partitioner still fuses the
        # Conv branch into the Add, so that branch stays float.
        return next((i for i in (0, 1) if backbones[i] is not None), None)
    lca, d0, d1 = _lowest_common_ancestor(producers[0], producers[1])
    if backbones[0] is not None and backbones[1] is not None:
        if backbones[0] is backbones[1]:
            return None
        return 0 if d0 > d1 else 1
    for index in (0, 1):
        if backbones[index] is not None:
            return None if lca is backbones[index] else index
    return None


# --- candidates ---------------------------------------------------------------------------

def activation_inputs(node: ir.Node, placement: str) -> list[int]:
    """Input indices of ``node`` quantized per tensor (the weight has its own path)."""
    if node.op_type == "Add":
        skipped = residual_input(node) if placement == "tensorrt" else None
        return [i for i in (0, 1) if i != skipped]
    indices = [0]
    if node.op_type in ("Gemm", "MatMul") and is_activation(node.inputs[1]):
        indices.append(1)
    return indices


def _float_reason(node: ir.Node, placement: str) -> str | None:
    """Why a candidate node cannot be quantized in this placement (None: it can)."""
    inputs = node.inputs
    if not is_float(node.outputs[0]):
        return "output is not float32"
    if node.op_type == "Add":
        if not all(is_activation(v) for v in inputs):
            return "an input is a constant or not float32"
        return None
    if not is_activation(inputs[0]):
        return "input 0 is not a float32 activation"
    if node.op_type in ("Conv", "ConvTranspose") and not is_weight(inputs[1]):
        return "weight is not an initializer"
    if not (is_weight(inputs[1]) or is_activation(inputs[1])):
        return "input 1 is not float32"
    if placement == "ort_cpu":
        if node.op_type == "ConvTranspose":
            return "ORT's CPU provider has no QLinearConvTranspose"
        bias = inputs[2] if len(inputs) > 2 else None
        if bias is not None and not (is_weight(bias) and len(bias.shape or ()) == 1):
            return "bias is not a 1-D initializer (ORT needs it as int32)"
        if node.op_type == "Gemm" and bias is not None and (
                node.attributes.get_float("alpha", 1.0) != 1.0
                or node.attributes.get_float("beta", 1.0) != 1.0):
            return "Gemm with bias and alpha/beta != 1 does not fuse into QGemm"
    return None


def _from_conv(value: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and fusible_backbone(producer) is not None


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


def plan_placement(graph: ir.Graph, placement: str, skip: Iterable[str] = ()) -> Plan:
    """The Q/DQ plan of ``graph`` for ``placement``; ``skip`` names nodes kept in float."""
    skip = set(skip)
    plan = Plan()
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
        indices = activation_inputs(node, placement)
        if node.op_type == "Add" and len(indices) == 1:
            plan.residual[node_label(node)] = 1 - indices[0]
        for index in indices:
            wanted[present_input(node, index)].append((node, index))
    if placement == "tensorrt":
        _quantize_pool_inputs(graph, wanted, skip)
    if placement == "ort_cpu":
        for node in plan.core:
            out = _group_output(node)
            if node.op_type in ("Conv", "Add") or _feeds_only_quantized(out, core):
                wanted.setdefault(out, [])
                plan.outputs[node_label(node)] = value_name(out)
        # Carry quantization through value-preserving ops and pools, in graph order.
        for node in graph:
            if node_label(node) in skip or not node.inputs or node.inputs[0] not in wanted:
                continue
            if node.op_type in _CARRIED_OPS and is_float(node.outputs[0]):
                wanted.setdefault(node.outputs[0], [])
                if node.op_type in POOL_OPS:
                    plan.outputs[node_label(node)] = value_name(node.outputs[0])

    for value in _graph_order(graph, wanted):
        plan.amax_key[value] = _amax_key(value)
        plan.uses[value] = wanted[value]
    return plan


def _quantize_pool_inputs(graph: ir.Graph, wanted: dict[ir.Value, list[tuple[ir.Node, int]]],
                          skip: set[str]) -> None:
    """A MaxPool whose output is quantized gets Q/DQ on its input too, with the same amax
    (ModelOpt quantizes MaxPool, so TensorRT runs it in int8; numerically a no-op, as
    max commutes with a monotone quantizer)."""
    outputs = {v for v in wanted if wanted[v]}
    for node in reversed(list(graph)):
        if node.op_type != "MaxPool" or node_label(node) in skip \
                or not is_activation(node.inputs[0]):
            continue
        if node.outputs[0] in outputs:
            wanted[present_input(node, 0)].append((node, 0))
            outputs.add(present_input(node, 0))


def _graph_order(graph: ir.Graph, values: Iterable[ir.Value]) -> list[ir.Value]:
    position = {v: i for i, v in enumerate(graph.inputs)}
    for node in graph:
        for v in node.outputs:
            position[v] = len(position)
    return sorted(values, key=lambda v: position.get(v, -1))


def ir_model(model: onnx.ModelProto, min_opset: int = MIN_OPSET) -> ir.Model:
    """``model`` as onnx_ir with inferred shapes, converted up to ``min_opset`` if older."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < min_opset:
        model = onnx.version_converter.convert_version(model, min_opset)
    return ir.from_proto(onnx.shape_inference.infer_shapes(model))


def check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ParamsError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def quantizable_activations(model: onnx.ModelProto, placement: Placement) -> list[str]:
    """Float activations whose amax ``insert_qdq`` needs for ``placement``, in graph order.

    Tensors behind pass-through ops (MaxPool, Reshape, ...) share their source's amax,
    so only the source is listed. Any ``skip`` set needs a subset of these.
    """
    check_placement(placement)
    plan = plan_placement(ir_model(model).graph, placement)
    return list(dict.fromkeys(plan.amax_key.values()))


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Every float32 activation tensor of the graph, in graph order: the float graph
    inputs and every float node output that is not a constant (what TensorRT's own
    calibrator writes a cache line for)."""
    graph = ir_model(model, min_opset=0).graph
    names = [value_name(v) for v in graph.inputs if is_activation(v)]
    for node in graph:
        if node.op_type == "Constant":
            continue
        names.extend(value_name(v) for v in node.outputs if is_activation(v))
    return list(dict.fromkeys(names))
