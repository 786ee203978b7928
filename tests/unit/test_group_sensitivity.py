"""Grouped sensitivity ranks the top layers as per-layer sensitivity does, in fewer passes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtflow.quant import accuracy
from trtflow.quant.collect import collect_histograms
from trtflow.quant.group_sensitivity import (
    grouped_sensitivity,
    lazy_fallback,
    sensitive_layers,
)
from trtflow.quant.methods import compute_amax


class GivenLayers:
    """Layer errors given; a set of quantized layers costs the sum of theirs (monotone)."""

    def __init__(self, errors: Mapping[str, float]) -> None:
        self.errors = dict(errors)
        self.calls = 0

    def quantized_nodes(self, amax: Mapping[str, float]) -> list[str]:
        return list(self.errors)

    def score(self, amax: Mapping[str, float], skip: Iterable[str] = ()) -> dict[str, float]:
        self.calls += 1
        skipped = set(skip)
        error = sum(e for n, e in self.errors.items() if n not in skipped)
        return {"agreement": 1.0 - error, "relative_error": error}


def test_top_layers_and_their_order_match_per_layer_in_fewer_evaluations() -> None:
    rng = np.random.default_rng(0)
    # heavy-tailed, as layer sensitivity is: a few layers carry most of the error
    errors = {f"conv{i}": float(e) for i, e in enumerate(rng.lognormal(-6, 2.0, 64))}
    scorer = GivenLayers(errors)
    rows = grouped_sensitivity(scorer, {}, top=5, group_size=8)
    per_layer = sorted(errors, key=lambda n: -errors[n])
    assert [r["node"] for r in rows[:5]] == per_layer[:5]
    assert scorer.calls < len(errors)
    assert [r["relative_error"] for r in rows] == [errors[n] for n in per_layer[:5]]


def test_asked_for_every_layer_it_ranks_them_all_as_per_layer() -> None:
    errors = {f"conv{i}": float(e)
              for i, e in enumerate(np.random.default_rng(1).lognormal(-6, 1.0, 20))}
    rows = list(sensitive_layers(GivenLayers(errors), {}, group_size=4))
    assert [r["node"] for r in rows] == sorted(errors, key=lambda n: -errors[n])


def test_group_size_one_is_per_layer_sensitivity() -> None:
    errors = {"a": 0.1, "b": 0.3, "c": 0.2}
    rows = grouped_sensitivity(GivenLayers(errors), {}, top=3, group_size=1)
    assert [r["node"] for r in rows] == ["b", "c", "a"]


def _conv_chain(n: int = 6) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    nodes, inits, prev = [], [], "x"
    for i in range(n):
        w = rng.standard_normal((8, 8 if i else 3, 3, 3)).astype(np.float32) * (0.3 + 0.2 * i)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], name=f"conv{i}",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, 8, 8])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["b", 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_on_a_conv_chain_the_top_layers_match_per_layer_sensitivity() -> None:
    model = _conv_chain()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)}]
    tensors = ["x"] + [f"r{i}" for i in range(6)]
    hists = collect_histograms(model, tensors, feeds, 1).collector
    amax = {t: compute_amax(hists[t], "entropy") for t in tensors}
    ev = accuracy.Evaluator(model, feeds, "cosine", 1)
    exact = [r["node"] for r in accuracy.sensitivity(ev, amax)]
    grouped = [r["node"] for r in grouped_sensitivity(ev, amax, top=2, group_size=3)]
    assert grouped[:2] == exact[:2]


def test_lazy_fallback_scores_nothing_more_when_the_graph_already_agrees() -> None:
    scorer = GivenLayers({"a": 0.001, "b": 0.002})
    fallback, rows = lazy_fallback(scorer, {}, min_agreement=0.99, max_layers=8)
    assert fallback["skip"] == [] and fallback["met"] and rows == [] and scorer.calls == 1


def test_lazy_fallback_keeps_the_worst_layers_float_until_agreement_is_met() -> None:
    errors = {f"conv{i}": 0.001 for i in range(16)} | {"conv3": 0.02, "conv9": 0.015}
    scorer = GivenLayers(errors)
    fallback, rows = lazy_fallback(scorer, {}, min_agreement=0.98, max_layers=8)
    # all quantized: 0.049 error; conv3 float: 0.029; conv9 float too: 0.014 -> 0.986
    assert fallback["skip"] == ["conv3", "conv9"] and fallback["met"]
    assert [s["float_layers"] for s in fallback["steps"]] == [0, 1, 2]
    assert [r["node"] for r in rows] == ["conv3", "conv9"]
    assert scorer.calls < 1 + len(errors) + 2  # fewer than a per-layer ranking


def test_lazy_fallback_stops_at_max_layers_and_says_the_budget_was_missed() -> None:
    scorer = GivenLayers({f"conv{i}": 0.01 for i in range(8)})
    fallback, _ = lazy_fallback(scorer, {}, min_agreement=0.999, max_layers=2)
    assert len(fallback["skip"]) == 2 and not fallback["met"]
