"""`method: auto` per tensor class: classes from the graph, the search on given scores,
and the search wired to the real fake-quantized evaluator on a tiny graph."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.quant.accuracy import Evaluator
from trtflow.quant.collect import collect_histograms
from trtflow.quant.collector import HistogramCollector
from trtflow.quant.method_search import rank, search_methods, tensor_class
from trtflow.quant.methods import compute_amax


def _two_conv_graph() -> onnx.ModelProto:
    """x -> conv1 -> relu -> conv2 -> add(residual of conv2 and reshape of relu) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
                                     "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r"], name="relu"),
             helper.make_node("Identity", ["r"], ["r_id"], name="ident"),
             helper.make_node("Conv", ["r_id", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "two_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_tensor_classes_follow_the_producer_through_shape_ops() -> None:
    of = tensor_class(_two_conv_graph())
    assert [of(t) for t in ("x", "c1", "r", "r_id", "c2", "y")] == \
        ["input", "linear", "bounded", "bounded", "linear", "residual"]


class GivenScores:
    """A scorer on given numbers: agreement falls with each tensor's distance from its
    ideal amax (a stand-in for fake quantization with known answers)."""

    def __init__(self, ideal: Mapping[str, float]) -> None:
        self.ideal = ideal
        self.calls = 0

    def score(self, amax: Mapping[str, float], skip: Iterable[str] = ()) -> dict[str, float]:
        self.calls += 1
        error = sum(abs(amax[t] - self.ideal[t]) for t in self.ideal)
        return {"agreement": 1.0 - error / 100.0, "relative_error": error / 10.0}


TABLES = {  # method -> tensor -> amax
    "entropy": {"x": 4.0, "r": 5.0, "s": 3.0, "g": 1.0},
    "max": {"x": 4.0, "r": 9.0, "s": 8.0, "g": 1.0},
    "percentile": {"x": 4.0, "r": 6.0, "s": 7.0, "g": 1.0},
}
CLASSES = {"x": "input", "r": "bounded", "s": "residual", "g": "gate"}


def test_each_class_keeps_the_method_that_agrees_best() -> None:
    # bounded tensors are best with entropy, the residual sum with max (a tail entropy clips)
    scorer = GivenScores({"x": 4.0, "r": 5.0, "s": 8.0, "g": 1.0})
    choice = search_methods(scorer, TABLES, CLASSES, fixed={"x": "max"})
    assert choice.method == "percentile"  # the best single method (errors 5, 4, 2)
    assert choice.by_class["bounded"] == "entropy" and choice.by_class["residual"] == "max"
    assert choice.methods == {"x": "max", "r": "entropy", "s": "max", "g": "percentile"}
    assert choice.score["agreement"] == 1.0
    assert choice.score["agreement"] > max(s["agreement"] for s in choice.single_scores.values())


def test_only_classes_the_qdq_graph_uses_are_searched() -> None:
    scorer = GivenScores({"x": 4.0, "r": 5.0, "s": 8.0, "g": 1.0})
    choice = search_methods(scorer, TABLES, CLASSES, fixed={"x": "max"}, quantized=["r"])
    assert {s["class"] for s in choice.steps} == {"bounded"}
    assert scorer.calls == 3 + 2  # each method once, then bounded's two alternatives
    assert choice.by_class["residual"] == choice.method  # not searched: the chosen method


def test_a_change_that_does_not_improve_agreement_is_not_kept() -> None:
    scorer = GivenScores({"x": 4.0, "r": 5.0, "s": 3.0, "g": 1.0})  # entropy is ideal
    choice = search_methods(scorer, TABLES, CLASSES)
    assert set(choice.by_class.values()) == {"entropy"}
    assert not any(s["kept"] for s in choice.steps)


def test_rank_prefers_agreement_then_lower_error() -> None:
    assert rank({"agreement": 0.99, "relative_error": 0.5}) > \
        rank({"agreement": 0.98, "relative_error": 0.1})
    assert rank({"agreement": 0.99, "relative_error": 0.1}) > \
        rank({"agreement": 0.99 + 1e-9, "relative_error": 0.2})


def test_search_with_the_fake_quantized_evaluator_reproduces_its_score() -> None:
    model = _two_conv_graph()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    tensors = ["x", "c1", "r", "r_id", "c2", "y"]
    collector: HistogramCollector = collect_histograms(model, tensors, feeds, 1).collector
    tables = {m: {t: compute_amax(collector[t], m) for t in tensors}
              for m in ("entropy", "max", "percentile")}
    of = tensor_class(model)
    ev = Evaluator(model, feeds, "cosine", 1)
    choice = search_methods(ev, tables, {t: of(t) for t in tensors}, fixed={"x": "max"})
    amax = {t: tables[choice.methods[t]][t] for t in tensors}
    assert ev.score(amax) == pytest.approx(choice.score)
    assert rank(choice.score) >= max(rank(s) for s in choice.single_scores.values())
