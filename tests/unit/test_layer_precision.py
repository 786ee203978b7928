"""Per-layer precision: groups, their ranking by gain per cost, the measured greedy search
on given numbers, and two real selections (reaching the gate; the report of a free search)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.params import CalibrationConfig, SelectPolicy, Target
from trtflow.quant.layer_precision import (
    GroupScore,
    LayerGroup,
    RaceOutcome,
    block_cuts,
    greedy_search,
    layer_costs,
    layer_groups,
    rank_groups,
)


def conv_chain(blocks: int = 4, outlier_block: int = 2) -> onnx.ModelProto:
    """x -> [/bK/conv/Conv -> Relu] x blocks, the exporter's way of naming nodes; block
    `outlier_block`'s input has one channel scaled 200x (an outlier entropy clips), so
    quantizing that conv's input costs the most accuracy."""
    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for k in range(blocks):
        w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 8
        inits.append(numpy_helper.from_array(w, f"w{k}"))
        if k == outlier_block:
            gain = np.ones((1, 8, 1, 1), np.float32)
            gain[0, 3] = 200.0
            inits.append(numpy_helper.from_array(gain, f"g{k}"))
            nodes.append(helper.make_node("Mul", [prev, f"g{k}"], [f"m{k}"],
                                          name=f"/b{k}/gain/Mul"))
            prev = f"m{k}"
        nodes.append(helper.make_node("Conv", [prev, f"w{k}"], [f"c{k}"],
                                      name=f"/b{k}/conv/Conv", pads=[1] * 4))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"/b{k}/act/Relu"))
        prev = f"r{k}"
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 8])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _residual_graph() -> onnx.ModelProto:
    """x -> conv a -> Relu -> conv b -> Add(x) -> Relu -> conv c -> y, and a side input
    `scale` (no conv flows into it) multiplied in after the block."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), w)
             for w in ("wa", "wb", "wc")]
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a"),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["b"], name="conv_b"),
             helper.make_node("Add", ["b", "x"], ["s"]),
             helper.make_node("Relu", ["s"], ["rs"]),
             helper.make_node("Neg", ["scale"], ["ns"]),
             helper.make_node("Mul", ["rs", "ns"], ["m"]),
             helper.make_node("Conv", ["m", "wc"], ["y"], name="conv_c")]
    graph = helper.make_graph(
        nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 2, 2]),
                       helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_groups_are_blocks_where_the_data_flows_through_one_tensor() -> None:
    model = _residual_graph()
    assert block_cuts(model) == [3, 4, 6, 7]  # after the Add, its Relu, the Mul, conv c
    groups = layer_groups(model, ["conv_a", "conv_b", "conv_c"])
    assert [g.nodes for g in groups] == [("conv_a", "conv_b"), ("conv_c",)]
    assert groups[0].name == "conv_a..conv_b" and groups[0].macs == 2 * 16 * 4.0
    chain = conv_chain(blocks=4)  # a chain cuts after every layer: neighbours are merged
    labels = [f"/b{k}/conv/Conv" for k in range(4)]
    assert [len(g.nodes) for g in layer_groups(chain, labels, target=4)] == [1, 1, 1, 1]
    assert [g.nodes for g in layer_groups(chain, labels, target=2)] == [
        tuple(labels[:2]), tuple(labels[2:])]
    assert layer_groups(model, []) == []


def test_costs_are_macs_per_sample() -> None:
    costs = layer_costs(conv_chain(blocks=2))
    assert costs == {"/b0/conv/Conv": 8 * 8 * 9 * 64.0, "/b1/conv/Conv": 8 * 8 * 9 * 64.0}


class GivenGroups:
    """Each layer's share of the output error given; float layers remove theirs."""

    def __init__(self, errors: Mapping[str, float]) -> None:
        self.errors = dict(errors)

    def quantized_nodes(self, amax: Mapping[str, float]) -> list[str]:
        return list(self.errors)

    def score(self, amax: Mapping[str, float], skip: Iterable[str] = ()) -> dict[str, float]:
        error = sum(e for n, e in self.errors.items() if n not in set(skip))
        return {"agreement": 1.0 - error, "relative_error": error}


def test_groups_are_ranked_by_gain_per_cost_and_those_without_gain_left_out() -> None:
    groups = [LayerGroup("big", ("a",), 90.0), LayerGroup("small", ("b",), 10.0),
              LayerGroup("none", ("c",), 10.0), LayerGroup("skipped", ("d",), 1.0)]
    scorer = GivenGroups({"a": 0.04, "b": 0.02, "c": 0.0, "d": 0.5})
    base, ranked = rank_groups(scorer, {}, groups, skip=["d"])
    assert base["relative_error"] == pytest.approx(0.06)  # "d" already float
    # big: 0.04 / 0.81 of the MACs; small: 0.02 / 0.09 -- the small one buys more per cost
    assert [r.group for r in ranked] == ["small", "big"]
    assert ranked[0].priority > ranked[1].priority and ranked[0].gain == pytest.approx(0.02)


def _rows(*names: str) -> tuple[list[GroupScore], dict[str, LayerGroup]]:
    rows = [GroupScore(n, 1, 0.1, 0.0, 0.0, 0.1, 1.0) for n in names]
    return rows, {n: LayerGroup(n, (f"{n}/Conv",), 1.0) for n in names}


def test_gate_mode_keeps_groups_that_raise_agreement_until_the_gate_is_met() -> None:
    ranked, groups = _rows("g1", "g2", "g3", "g4")
    agreement = {1: 0.985, 2: 0.980, 3: 0.992}  # by trial: g2 makes it worse
    trial = iter(range(1, 10))
    kept: list[bool] = []
    result = greedy_search(ranked, groups, "start", 0.98, 0.99,
                           lambda layers: agreement[next(trial)], None, kept.append)
    assert result.mode == "gate" and result.met and result.stopped == "gate met"
    assert result.kept_groups == ["g1", "g3"] and kept == [True, False, True]
    assert result.float_layers == ["g1/Conv", "g3/Conv"] and result.agreement == 0.992
    assert len(result.steps) == 3  # g4 never tried: the gate was met
    assert "no gain, dropped" in result.steps[1].why


def test_free_mode_keeps_only_what_is_faster_or_tied_and_more_accurate() -> None:
    ranked, groups = _rows("fast", "free", "slow", "noisy", "worse")
    races = iter([RaceOutcome("trial", "decided", 0.9, 0.95, {}),
                  RaceOutcome("current", "undecided", 1.01, 1.02, {}),  # no slower than 3 %
                  RaceOutcome("current", "decided", 1.3, 1.4, {}),
                  RaceOutcome("trial", "undecided", 0.95, 1.2, {})])  # may be 20 % slower
    agreements = iter([0.995, 0.997, 0.999, 0.999, 0.98])
    result = greedy_search(ranked, groups, "start", 0.995, 0.99, lambda layers: next(agreements),
                           lambda budget: next(races))
    assert result.mode == "free" and result.met is None
    assert result.kept_groups == ["fast", "free"]
    assert [s.kept for s in result.steps] == [True, True, False, False, False]
    assert "faster beyond the noise" in result.steps[0].why
    assert "more accurate and no slower than +3%" in result.steps[1].why
    assert "dropped" in result.steps[3].why
    assert "misses the gate" in result.steps[4].why  # no race for a trial below the gate


def test_the_search_stops_at_its_budget_and_at_max_steps() -> None:
    ranked, groups = _rows("a", "b", "c")
    now = iter([0.0, 0.0, 5.0, 5.0, 11.0, 11.0, 11.0])
    result = greedy_search(ranked, groups, "start", 0.9, 0.99, lambda layers: 0.91, None,
                           budget_s=10.0, clock=lambda: next(now))
    assert len(result.steps) == 1 and result.stopped.startswith("budget")
    free = iter([0.996, 0.997, 0.998])
    capped = greedy_search(ranked, groups, "start", 0.995, 0.99, lambda layers: next(free),
                           lambda budget: RaceOutcome("current", "undecided", 1.0, 1.1, {}),
                           max_steps=2)
    assert len(capped.steps) == 2 and "2 trials" in capped.stopped
    gate = greedy_search(ranked, groups, "start", 0.9, 0.999, lambda layers: 0.95, None,
                         max_steps=2)
    assert len(gate.steps) == 3  # reaching the gate is bounded by the budget only


def _calibrated(tmp_path: Path, method: str = "entropy") -> tuple[Path, Path, dict]:
    from trtflow.stages.calibrate import calibrate

    onnx.save_model(conv_chain(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    batches = [{"x": np.abs(rng.standard_normal((16, 8, 8, 8))).astype(np.float32)}
               for _ in range(2)]
    calib = tmp_path / "calib"
    calib.mkdir()
    calibrate(tmp_path / "m.onnx", iter(batches), CalibrationConfig(method=method), 1, calib,
              selection=iter(batches))
    return tmp_path / "m.onnx", calib, batches[0]


def test_an_int8_engine_that_misses_the_gate_reaches_it_with_the_outlier_block_float(
        tmp_path: Path) -> None:
    from trtflow.backends import Calibration
    from trtflow.stages.select import select_engine

    model, calib, selection = _calibrated(tmp_path)
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(precision="best", select=SelectPolicy(
        backends=["onnxruntime"], precisions=["int8"], rounds=3, budget_s=30))
    report = select_engine(model, target, out, Calibration(calib), selection, "cosine", 0.998, 1)
    chosen = report["selection"]
    [layer] = chosen["layer_precision"]  # no candidate passed: one search, before the race
    assert layer["mode"] == "gate" and layer["met"] and layer["kept_groups"][0] == "/b2/conv/Conv"
    assert layer["ranked"][0]["group"] == "/b2/conv/Conv"  # the outlier block ranks first
    assert chosen["winner"] == f"onnxruntime-int8+float{len(layer['kept_groups'])}"
    rows = {c["name"]: c for c in chosen["candidates"]}
    won = rows[chosen["winner"]]
    assert won["passed"] and won["agreement"] >= 0.998 and "/b2/conv/Conv" in won["float_layers"]
    assert not rows["onnxruntime-int8"]["passed"]
    assert "per-layer precision kept" in chosen["why"]
    # the engine kept is the trial's, with its calibration's float layers, and nothing else
    # of the search is left behind
    assert json.loads((out / "selection.json").read_text())["winner"] == chosen["winner"]
    assert not (out / "candidates").exists()


def test_an_int8_winner_gets_a_free_search_recorded_step_by_step(tmp_path: Path) -> None:
    from trtflow.backends import Calibration
    from trtflow.stages.select import select_engine

    model, calib, selection = _calibrated(tmp_path)
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(precision="best", select=SelectPolicy(
        backends=["onnxruntime"], precisions=["int8"], rounds=3, budget_s=30))
    report = select_engine(model, target, out, Calibration(calib), selection, "cosine", 0.95, 1)
    [layer] = report["selection"]["layer_precision"]
    assert layer["mode"] == "free" and layer["start"] == "onnxruntime-int8"
    assert report["selection"]["class_level"] == "onnxruntime-int8"
    assert layer["steps"], "the groups that gain were tried"
    for step in layer["steps"]:  # each trial measured: agreement, and a race where it passed
        assert step["agreement"] is not None and step["why"]
        assert step["race"] is None or set(step["race"]["p50_ms"]) == {
            "onnxruntime-int8", f"onnxruntime-int8+trial{layer['steps'].index(step) + 1}"}
    assert "per-layer precision" in report["selection"]["why"]


def test_a_previous_per_layer_pick_races_as_the_candidate_it_started_from() -> None:
    from trtflow.stages.select import _as_raced

    assert _as_raced("openvino-int8+float2", ["openvino-int8", "onnxruntime-int8"]) == \
        "openvino-int8"
    assert _as_raced("ort-int8+float1", ["ort-int8+float1"]) == "ort-int8+float1"
    assert _as_raced(None, ["x"]) is None


def test_a_trial_that_changes_nothing_is_not_raced_and_a_lead_inside_the_margin_is_no_win(
        ) -> None:
    ranked, groups = _rows("same", "slight")
    raced: list[float] = []

    def race(budget: float) -> RaceOutcome:
        raced.append(budget)
        return RaceOutcome("trial", "decided", 0.97, 0.98, {})  # faster, not beyond 3 %

    same = iter([True, False])
    result = greedy_search(ranked, groups, "start", 0.999, 0.99, lambda layers: 0.999, race,
                           unchanged=lambda: next(same))
    assert [s.kept for s in result.steps] == [False, False] and len(raced) == 1
    assert "dropped unraced" in result.steps[0].why


def test_the_engine_digest_tells_a_trial_that_quantized_the_same_layers(tmp_path: Path
                                                                       ) -> None:
    from trtflow.backends import Calibration, build_engine
    from trtflow.stages.select import _engine_digest

    model, calib, _ = _calibrated(tmp_path)
    digests = []
    for name, floats in (("a", []), ("b", []), ("c", ["/b2/conv/Conv"])):
        engine = tmp_path / name
        engine.mkdir()
        build_engine(model, Target(backend="openvino", precision="int8"), engine,
                     Calibration(calib).with_float_layers(floats, engine / "calibration"))
        digests.append(_engine_digest(engine))
    assert digests[0] == digests[1] != digests[2]


def test_a_gate_out_of_reach_says_how_far_per_layer_precision_got(tmp_path: Path) -> None:
    from trtflow.backends import Calibration
    from trtflow.errors import BuildError
    from trtflow.stages.select import select_engine

    model, calib, selection = _calibrated(tmp_path)
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(precision="best", select=SelectPolicy(  # a budget the ranking spends
        backends=["onnxruntime"], precisions=["int8"], rounds=3, budget_s=0.001))
    with pytest.raises(BuildError, match=r"no candidate passed.*onnxruntime-int8: agreement "
                       r"0\.97.*per-layer precision kept no group of onnxruntime-int8 float "
                       r"\(0 tried; budget"):
        select_engine(model, target, out, Calibration(calib), selection, "cosine", 0.998, 1)
