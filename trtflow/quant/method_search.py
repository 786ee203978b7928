"""`method: auto` per tensor class: entropy, max or percentile for each kind of activation,
chosen on the selection split.

One method for the whole graph loses where activations differ in kind: entropy (KL)
clips the long tail of a residual sum or a squeeze-excite gate that MinMax keeps, and
on RegNetY-800MF and a GPT-2-shaped decoder trtflow's entropy INT8 missed the 0.99
cosine gate that ONNX Runtime's and NNCF's MinMax met (issue 26). So the tensors are
grouped by what produces them (``tensor_class``: a ReLU's bounded output, a gate in
[0, 1], a residual sum, a linear layer's raw output, ...), the best single method is
found first, then each class in turn tries the other methods and keeps one only where
the fake-quantized graph agrees better with FP32 on the selection split (agreement,
then output error, as ``accuracy.choose_method`` ranks). Classes whose tensors the Q/DQ
graph does not quantize cannot change that score and take the chosen method as is.

Cost: one fake-quantized evaluation per method, then one per (class, other method):
3 + 2 x classes evaluations with the default three methods; nothing else runs unless
``method: auto`` is asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx

from trtflow.progress_estimate import StepEstimate
from trtflow.quant.amax_table import AUTO_METHODS

# Producer op -> class. Graph inputs are their own class ("input").
_CLASS_OF_OP = {
    "Relu": "bounded", "Clip": "bounded", "LeakyRelu": "bounded",
    "Sigmoid": "gate", "HardSigmoid": "gate", "Softmax": "gate", "Tanh": "gate",
    "HardSwish": "swish", "Mul": "product", "Div": "product", "Gelu": "swish",
    "Add": "residual", "Sum": "residual", "Sub": "residual",
    "Conv": "linear", "ConvTranspose": "linear", "Gemm": "linear", "MatMul": "linear",
    "MaxPool": "pool", "AveragePool": "pool", "GlobalAveragePool": "pool",
    "GlobalMaxPool": "pool", "ReduceMean": "pool",
    "LayerNormalization": "normalized", "BatchNormalization": "normalized",
    "InstanceNormalization": "normalized",
}
DEFAULT_METHODS = AUTO_METHODS


def tensor_class(model: onnx.ModelProto) -> Callable[[str], str]:
    """A function naming each tensor's class: ``input`` for graph inputs, else its
    producer's family (``bounded``, ``gate``, ``swish``, ``product``, ``residual``,
    ``linear``, ``pool``, ``normalized``) or ``other:<OpType>``. Shape ops
    (Reshape, Transpose, Flatten, ...) pass their input's class through."""
    producer = {out: node for node in model.graph.node for out in node.output}
    inputs = {i.name for i in model.graph.input}
    passthrough = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                   "Cast", "Concat", "Slice", "Split", "Gather", "Pad", "Expand"}
    memo: dict[str, str] = {}

    def of(tensor: str) -> str:
        if tensor in memo:
            return memo[tensor]
        seen = set()
        name = tensor
        while True:  # iterative: a long chain of shape ops must not recurse
            if name in inputs:
                cls = "input"
                break
            node = producer.get(name)
            if node is None:
                cls = "other"
                break
            if node.op_type in passthrough and node.input and node.input[0] not in seen:
                seen.add(name)
                name = node.input[0]
                continue
            cls = _CLASS_OF_OP.get(node.op_type, f"other:{node.op_type}")
            break
        memo[tensor] = cls
        return cls

    return of


class Scorer(Protocol):
    """What judges an amax table: ``accuracy.Evaluator`` (agreement, relative_error)."""

    def score(self, amax: Mapping[str, float], skip: Iterable[str] = ()) -> dict[str, float]:
        ...


def rank(score: Mapping[str, float]) -> tuple[float, float]:
    """Higher is better: agreement (to 6 places, so float noise does not decide), then
    lower output error; as ``accuracy.choose_method``."""
    return round(score["agreement"], 6), -score["relative_error"]


@dataclass
class MethodChoice:
    method: str  # the best single method (the cache header's calibrator)
    by_class: dict[str, str]  # class -> method, every class of the calibrated tensors
    methods: dict[str, str]  # tensor -> method
    score: dict[str, float]
    single_scores: dict[str, dict[str, float]]  # each method on every tensor
    steps: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "by_class": self.by_class, "score": self.score,
                "single_scores": self.single_scores, "steps": self.steps}


def search_methods(scorer: Scorer, amax_by_method: Mapping[str, Mapping[str, float]],
                   classes: Mapping[str, str], fixed: Mapping[str, str] | None = None,
                   quantized: Iterable[str] | None = None,
                   methods: Sequence[str] = DEFAULT_METHODS,
                   progress: Callable[[str], None] | None = None) -> MethodChoice:
    """The method for each tensor class (``classes``: tensor -> class) that agrees best
    with FP32 on the scorer's data. ``fixed`` tensors keep their method (graph inputs'
    ``input_method``); ``quantized`` (default: every tensor) are those the Q/DQ graph
    uses: only their classes are searched."""
    fixed = dict(fixed or {})
    tensors = list(classes)
    quantized_set = set(tensors if quantized is None else quantized)

    def table(assign: Mapping[str, str]) -> dict[str, float]:
        return {t: amax_by_method[fixed.get(t) or assign[classes[t]]][t] for t in tensors}

    all_classes = sorted(set(classes.values()))
    total = len(methods) + sum(len(methods) - 1 for c in all_classes
                               if any(classes[t] == c and t in quantized_set and t not in fixed
                                      for t in tensors))
    estimate = StepEstimate(progress, "method search", total)

    def evaluate(assign: Mapping[str, str], what: str) -> dict[str, float]:
        estimate.step(what)
        return scorer.score(table(assign))

    single = {m: evaluate(dict.fromkeys(all_classes, m), f"{m} everywhere") for m in methods}
    best_method = max(methods, key=lambda m: rank(single[m]))
    assign = dict.fromkeys(all_classes, best_method)
    best = single[best_method]
    steps: list[dict[str, Any]] = []
    searched = sorted((c for c in all_classes
                       if any(classes[t] == c and t in quantized_set and t not in fixed
                              for t in tensors)),
                      key=lambda c: (-sum(1 for t in tensors if classes[t] == c), c))
    for cls in searched:
        start = assign[cls]
        for method in methods:
            if method == start:
                continue
            trial = {**assign, cls: method}
            score = evaluate(trial, f"{cls} -> {method}")
            kept = rank(score) > rank(best)
            steps.append({"class": cls, "method": method, **score, "kept": kept})
            if kept:
                assign, best = trial, score
    return MethodChoice(best_method, assign,
                        {t: fixed.get(t) or assign[classes[t]] for t in tensors}, best,
                        single, steps)
