"""Graph cleanup as a pipeline of small, composable passes.

Constant folding, dead-code removal and the Conv+BatchNorm fusion come from
onnxscript's optimizer (its default rewrite rules include `fuse_batchnorm`);
onnxslim then runs shape inference, common-subexpression elimination and its
own fusions. No pass of our own is needed for what the foundation asks; the
report records what changed so a user can see each fusion.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]

# (producer op, consumer op, fused name): patterns a target compiler fuses and
# whose disappearance we report per node.
FUSION_PATTERNS = (
    ("Conv", "BatchNormalization", "Conv+BatchNormalization -> Conv"),
    ("ConvTranspose", "BatchNormalization", "ConvTranspose+BatchNormalization -> ConvTranspose"),
    ("MatMul", "Add", "MatMul+Add -> Gemm"),
)


@dataclass
class OnnxscriptOptimize:
    """Constant folding + dead code + default rewrites (incl. Conv+BN folding)."""

    name: str = "onnxscript.optimizer"

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        import onnxscript.optimizer

        return onnxscript.optimizer.optimize(model)


@dataclass
class OnnxSlim:
    """Shape inference, CSE, dead code and onnxslim's fusions."""

    name: str = "onnxslim"

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        import onnxslim

        return onnxslim.slim(model)


@dataclass
class InferShapes:
    name: str = "onnx.shape_inference"

    def __call__(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)


PASSES: dict[str, Pass] = {"onnxscript": OnnxscriptOptimize(), "onnxslim": OnnxSlim(),
                           "shape_inference": InferShapes()}
DEFAULT_PASSES: tuple[Pass, ...] = tuple(PASSES.values())


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(collections.Counter(n.op_type for n in model.graph.node).items()))


def fusion_candidates(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(pattern, producer node, consumer node) for each fusable pair in the graph."""
    producer = {out: n for n in model.graph.node for out in n.output}
    found = []
    for node in model.graph.node:
        for first, second, label in FUSION_PATTERNS:
            if node.op_type != second or not node.input:
                continue
            src = producer.get(node.input[0])
            if src is not None and src.op_type == first:
                found.append((label, src.name, node.name))
    return found


def cleanup(model: onnx.ModelProto, passes: tuple[Pass, ...] = DEFAULT_PASSES
            ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Run `passes` in order; return the cleaned model and a JSON-able report."""
    before = op_counts(model)
    candidates_before = fusion_candidates(model)
    steps = []
    for graph_pass in passes:
        n_before = len(model.graph.node)
        model = graph_pass(model)
        steps.append({"pass": getattr(graph_pass, "name", repr(graph_pass)),
                      "nodes_before": n_before, "nodes_after": len(model.graph.node)})
    after = op_counts(model)
    remaining = {(label, a, b) for label, a, b in fusion_candidates(model)}
    fusions = [{"fusion": label, "nodes": [a, b]} for label, a, b in candidates_before
               if (label, a, b) not in remaining]
    fusion_totals = collections.Counter(f["fusion"] for f in fusions)
    report = {
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "ops_before": before,
        "ops_after": after,
        "ops_removed": {op: before.get(op, 0) - after.get(op, 0)
                        for op in sorted(set(before) | set(after))
                        if before.get(op, 0) != after.get(op, 0)},
        "fusions": fusions,
        "fusion_counts": dict(fusion_totals),
        "passes": steps,
    }
    return model, report
