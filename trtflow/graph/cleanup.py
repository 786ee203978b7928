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

from trtflow.errors import ModelError

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


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The names engines are fed and read by: graph inputs (not initializers), outputs."""
    weights = {init.name for init in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in weights],
            [o.name for o in model.graph.output])


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """`old` -> `new` in every node, value_info and graph output (subgraphs included)."""
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                _rename(sub, old, new)
    for info in (*graph.value_info, *graph.output, *graph.input):
        if info.name == old:
            info.name = new


def restore_io_names(model: onnx.ModelProto, inputs: list[str], outputs: list[str],
                     pass_name: str) -> onnx.ModelProto:
    """Give the graph back the input and output names it had before `pass_name`.

    Engines are fed and read by these names, so no pass may change them. A pass that
    meets a tensor that is both a graph input and a graph output (valid ONNX) renames the
    input and adds `Identity(input) -> output`; the Identity is dropped again here and the
    input keeps its name. A renamed output is renamed back where its producer is known."""
    graph = model.graph
    now_in, now_out = io_names(model)
    if (now_in, now_out) == (inputs, outputs):
        return model
    if len(now_in) != len(inputs) or len(now_out) != len(outputs):
        raise ModelError(f"cleanup pass {pass_name} changed the graph's inputs/outputs from "
                         f"{inputs} -> {outputs} to {now_in} -> {now_out}; leave it out of "
                         "cleanup.passes")
    for new, old in zip(now_in, inputs, strict=True):
        if new == old:
            continue
        for node in list(graph.node):  # the pass's copy of an input that is also an output
            if node.op_type == "Identity" and list(node.input) == [new] and \
                    list(node.output) == [old]:
                graph.node.remove(node)
        _rename(graph, new, old)
    for new, old in zip(io_names(model)[1], outputs, strict=True):
        if new != old:
            _rename(graph, new, old)
    if io_names(model) != (inputs, outputs):
        raise ModelError(f"cleanup pass {pass_name} renamed graph inputs/outputs "
                         f"{inputs} -> {outputs} to {io_names(model)[0]} -> "
                         f"{io_names(model)[1]}, and they could not be restored")
    return model


def cleanup(model: onnx.ModelProto, passes: tuple[Pass, ...] = DEFAULT_PASSES
            ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Run `passes` in order; return the cleaned model and a JSON-able report. The graph
    keeps its input and output names through every pass (`restore_io_names`)."""
    before = op_counts(model)
    candidates_before = fusion_candidates(model)
    inputs, outputs = io_names(model)
    steps = []
    for graph_pass in passes:
        n_before = len(model.graph.node)
        model = restore_io_names(graph_pass(model), inputs, outputs,
                                 getattr(graph_pass, "name", repr(graph_pass)))
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
