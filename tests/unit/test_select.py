"""`precision: best`: the selection logic on given timings, and one real selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import BuildError
from trtflow.latency_race import LatencyRace, RacePolicy
from trtflow.params import SelectPolicy, Target
from trtflow.stages.select import (
    Candidate,
    candidates,
    decide,
    float_op_classes,
    passed_candidates,
    race_batch_sizes,
    race_order,
    select_engine,
    smoothed_calibration,
)

from .tiny import conv_bn_graph


def cand(name: str, precision: str, p50: float, noise: float = 1.0, passed: bool = True,
         float_ops: tuple[str, ...] = ()) -> Candidate:
    c = Candidate(name, Target(precision=precision), float_ops)  # type: ignore[arg-type]
    c.p50_ms, c.noise_pct, c.passed, c.agreement = {1: p50}, {1: noise}, passed, 0.999
    return c


def raced(pool: list[Candidate], ms: dict[str, list[float]], previous: str | None = None
          ) -> tuple[Candidate, str, bool]:
    """decide() after a race fed the given per-round times (ms, the same at bs 1)."""
    race = LatencyRace([c.name for c in race_order([c for c in pool if c.passed])], [1],
                       RacePolicy(budget_s=1e9, min_rounds=6, confidence=0.95,
                                  max_rounds=len(next(iter(ms.values())))),
                       previous)
    for r in range(len(next(iter(ms.values())))):
        race.add_round({n: {1: ms[n][r]} for n in race.alive})
        if race.status() != "running":
            break
    verdict = race.verdict()
    winner, why = decide(pool, verdict)
    return winner, why, verdict.decided


def test_the_fastest_candidate_that_passed_wins() -> None:
    winner, why, decided = raced(
        [cand("ort-fp32", "fp32", 2.0), cand("ort-int8", "int8", 1.0),
         cand("ov-int8", "int8", 0.5, passed=False)],
        {"ort-fp32": [2.0, 2.1, 1.9, 2.0, 2.2, 2.0], "ort-int8": [1.0, 1.1, 0.9, 1.0, 1.0, 1.1]})
    assert winner.name == "ort-int8" and decided
    assert "fastest beyond the noise" in why and "failed the accuracy gate" in why


def test_an_int8_engine_slower_than_fp32_is_not_chosen() -> None:
    winner, _, _ = raced([cand("ort-fp32", "fp32", 1.0), cand("ort-int8", "int8", 1.25)],
                         {"ort-fp32": [1.0] * 6, "ort-int8": [1.25] * 6})
    assert winner.name == "ort-fp32"


def test_too_noisy_to_decide_keeps_the_previous_choice_not_the_simpler_engine() -> None:
    pool = [cand("ort-fp32", "fp32", 1.0), cand("ov-int8", "int8", 0.9)]
    swings = {"ort-fp32": [1.0, 1.4, 1.0, 1.4] * 10, "ov-int8": [1.3, 1.0, 1.35, 1.0] * 10}
    winner, why, decided = raced(pool, swings, previous="ov-int8")
    assert winner.name == "ov-int8" and not decided
    assert "too noisy to decide" in why and "previous choice ov-int8" in why


def test_the_race_times_the_smallest_and_largest_validated_batch_sizes() -> None:
    assert race_batch_sizes(SelectPolicy(), [1, 2, 4, 32]) == [1, 32]
    assert race_batch_sizes(SelectPolicy(batch_sizes=[8, 1, 8]), [1, 32]) == [1, 8]
    assert race_batch_sizes(SelectPolicy(), None) == [1, 8]


def test_no_passing_candidate_is_a_clear_error() -> None:
    with pytest.raises(BuildError, match="no candidate passed.*ort-int8: agreement 0.9990"):
        passed_candidates([cand("ort-int8", "int8", 1.0, passed=False)])  # before any race


def _depthwise_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "dw"),
             numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "pw")]
    nodes = [helper.make_node("Conv", ["x", "dw"], ["d"], name="dw0", group=4, pads=[1] * 4),
             helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Conv", ["r", "pw"], ["y"], name="pw0")]
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_candidates_follow_the_policy_the_cpu_and_the_graph(tmp_path: Path) -> None:
    onnx.save_model(_depthwise_graph(), str(tmp_path / "m.onnx"))
    assert float_op_classes(tmp_path / "m.onnx") == {"depthwise_conv": ["dw0"]}
    target = Target(precision="best")
    names = [c.name for c in candidates(target, tmp_path / "m.onnx", calibrated=True)]
    assert {"onnxruntime-fp32", "onnxruntime-int8", "onnxruntime-int8-depthwise_conv-float",
            "openvino-fp32", "openvino-int8"} <= set(names)
    assert not any("bf16" in n and "onnxruntime" in n for n in names)
    uncalibrated = [c.name for c in candidates(target, tmp_path / "m.onnx", calibrated=False)]
    assert not any("int8" in n for n in uncalibrated)
    only = Target(precision="best", select={"backends": ["onnxruntime"], "precisions": ["fp32"]})
    assert [c.name for c in candidates(only, None, True)] == ["onnxruntime-fp32"]


def test_a_real_selection_keeps_the_winner_and_lists_every_candidate(tmp_path: Path) -> None:
    onnx.save_model(conv_bn_graph(), str(tmp_path / "m.onnx"))
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(precision="best", select={"precisions": ["fp32"], "rounds": 3})
    x = {"x": np.random.default_rng(0).standard_normal((4, 3, 8, 8), np.float32)}
    report = select_engine(tmp_path / "m.onnx", target, out, None, x, "cosine", 0.999, 1)
    selection = report["selection"]
    assert {c["name"] for c in selection["candidates"]} == {"onnxruntime-fp32", "openvino-fp32"}
    assert all(c["passed"] and c["p50_ms"] for c in selection["candidates"])
    assert report["backend"] == selection["winner"].replace("-fp32", "-cpu")
    assert (out / "engine.json").is_file() and not (out / "candidates").exists()


def _matmul_graph() -> onnx.ModelProto:
    """x -> Mul(outlier gain) -> MatMul(w) -> Relu -> MatMul(w2) -> y."""
    rng = np.random.default_rng(0)
    gain = np.ones(8, np.float32)
    gain[[1, 6]] = 30.0
    inits = [numpy_helper.from_array(gain, "gain"),
             numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Mul", ["x", "gain"], ["h"], name="gain0"),
             helper.make_node("MatMul", ["h", "w"], ["a"], name="mm0"),
             helper.make_node("Relu", ["a"], ["r"], name="relu0"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm1")]
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def test_int8_variants_follow_the_graph(tmp_path: Path) -> None:
    onnx.save_model(_matmul_graph(), str(tmp_path / "mm.onnx"))
    onnx.save_model(_depthwise_graph(), str(tmp_path / "dw.onnx"))
    target = Target(precision="best", select={"smoothquant_alpha": [0.5, 0.8]})
    names = {c.name for c in candidates(target, tmp_path / "mm.onnx", calibrated=True)}
    assert {"openvino-int8-static-tensorrt", "openvino-int8-dynamic",
            "onnxruntime-int8-smoothquant0.5", "openvino-int8-smoothquant0.8",
            "onnxruntime-int8-matmul-float"} <= names
    conv = {c.name for c in candidates(target, tmp_path / "dw.onnx", calibrated=True)}
    assert "openvino-int8-static-tensorrt" in conv  # no MatMul: no dynamic, no smoothing
    assert not any("dynamic" in n or "smoothquant" in n for n in conv)
    plain = Target(precision="best", select={"int8_schemes": False, "float_blocks": False})
    assert {c.name for c in candidates(plain, tmp_path / "mm.onnx", True)} & {
        "openvino-int8-static-tensorrt", "openvino-int8-dynamic"} == set()


def test_a_smoothquant_candidate_is_recalibrated_on_the_smoothed_graph(tmp_path: Path) -> None:
    import json

    from trtflow.backends import Calibration
    from trtflow.params import CalibrationConfig
    from trtflow.stages.calibrate import calibrate

    onnx.save_model(_matmul_graph(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((32, 8)).astype(np.float32)} for _ in range(2)]
    calib = tmp_path / "calib"
    calib.mkdir()
    calibrate(tmp_path / "m.onnx", iter(batches), CalibrationConfig(method="max"), 1, calib,
              selection=iter(batches))
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(precision="best", select={
        "backends": ["onnxruntime"], "precisions": ["int8"], "float_blocks": False,
        "smoothquant_alpha": [0.5], "rounds": 2})
    report = select_engine(tmp_path / "m.onnx", target, out, Calibration(calib), batches[0],
                           "cosine", 0.9, 1)
    rows = {c["name"]: c for c in report["selection"]["candidates"]}
    assert set(rows) == {"onnxruntime-int8", "onnxruntime-int8-smoothquant0.5"}
    assert rows["onnxruntime-int8-smoothquant0.5"]["smooth_alpha"] == 0.5
    assert rows["onnxruntime-int8-smoothquant0.5"]["agreement"] > 0.99
    cand = tmp_path / "cand"
    cand.mkdir()
    graph, smoothed = smoothed_calibration(tmp_path / "m.onnx", CalibrationConfig(method="max"),
                                           0.5, batches[0], "cosine", 1, cand)
    smoothing = json.loads((cand / "smoothquant.json").read_text())
    assert [g["activation"] for g in smoothing["groups"]] == ["h", "r"]
    assert smoothing["float_layers"] == []  # no fallback budget in this calibration
    # a complete calibration, written by the calibrate stage itself: TensorRT's Q/DQ models,
    # cache, scales with every method's amax, histograms, for the new graph
    assert smoothed.qdq_model("int8").is_file() and smoothed.qdq_model("fp8").is_file()
    assert smoothed.cache_file.is_file() and smoothed.histograms_file.is_file()
    assert all("amax_by_method" in row for row in smoothed.scales().values())
    # the MatMul reads the smoothed tensor now, and the calibration has its amax
    assert "h_smoothed" in smoothed.amax() and "h_smoothed" not in Calibration(calib).amax()
    assert any(n.op_type == "Mul" and n.output[0] == "h_smoothed"
               for n in onnx.load(str(graph)).graph.node)


def test_a_proven_tie_keeps_the_simpler_engine_and_says_so() -> None:
    pool = [cand("ov-int8", "int8", 0.99), cand("ov-bf16", "bf16", 1.0)]
    jitter = [0.995, 1.003, 0.996, 1.002]
    winner, why, decided = raced(pool, {"ov-bf16": [1.0] * 30,
                                        "ov-int8": [jitter[i % 4] for i in range(30)]})
    assert winner.name == "ov-bf16" and decided
    assert "faster than" not in why and "ov-int8 is within ±3%" in why
