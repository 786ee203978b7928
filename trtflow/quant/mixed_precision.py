"""FP16 with the precision-sensitive ops kept in FP32 (mixed precision for GPU engines).

Why not `model.half()` before export: the exporter then writes LayerNorm with a
float16 scale next to float32 statistics (mixed float/float16 inputs, an invalid
graph), and Softmax/reductions over long rows lose too much in float16. We
convert the cleaned FP32 graph instead, with ONNX Runtime's transformers
float16 tool (shipped inside the onnxruntime wheel, so no new dependency):
every node runs in float16 except the op types in `FP32_OPS`, which get Casts
around them; graph inputs and outputs stay float32 so the engine's interface
does not change. The same converted graph is what a strongly typed TensorRT 11
network needs for FP16 (TensorRT 11 has no FP16 builder flag).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx

# LayerNorm and the reductions inside it, Softmax and the exp/log family, and
# powers/roots: the ops whose float16 results drift or overflow on real data.
FP32_OPS: tuple[str, ...] = (
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization",
    "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceMin", "ReduceProd",
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
)


def to_mixed_fp16(model: onnx.ModelProto, fp32_ops: tuple[str, ...] = FP32_OPS,
                  fp32_nodes: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """float16 everywhere except `fp32_ops` (op types) and `fp32_nodes` (node names).

    Returns the converted model (float32 inputs/outputs) and a report: how many
    nodes of each op type run in float16 and in float32, and how many Casts the
    conversion added.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    before = Counter(n.op_type for n in model.graph.node)
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    converted = convert_float_to_float16(
        onnx.ModelProto.FromString(model.SerializeToString()), keep_io_types=True,
        op_block_list=blocked, node_block_list=list(fp32_nodes))
    _topological_sort(converted.graph)
    after = Counter(n.op_type for n in converted.graph.node)
    kept = {op: before[op] for op in sorted(before) if op in blocked}
    kept_nodes = [n.name for n in model.graph.node if n.name in set(fp32_nodes)]
    fp32_count = sum(kept.values()) + len(kept_nodes)
    compute = sum(before.values()) - before.get("Constant", 0)
    return converted, {
        "precision": "fp16",
        "fp32_ops": kept,
        "fp32_nodes": kept_nodes,
        "fp16_nodes": compute - fp32_count,
        "fp32_fraction": fp32_count / compute if compute else 0.0,
        "casts_added": after.get("Cast", 0) - before.get("Cast", 0),
        "tool": "onnxruntime.transformers.float16 (keep_io_types, op block list)",
    }


def _topological_sort(graph: onnx.GraphProto) -> None:
    """The converter appends its input Casts at the end; ONNX requires producers first
    (ORT sorts for itself, TensorRT's parser and onnx.checker do not)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:  # inputs from outer scopes (subgraphs) or a cycle: keep the rest as is
            ordered.extend(pending)
            break
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)
