"""`precision: best`: the selection logic on given timings, and one real selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import BuildError
from trtflow.params import Target
from trtflow.select import Candidate, candidates, decide, float_op_classes, select_engine

from .tiny import conv_bn_graph


def cand(name: str, precision: str, p50: float, noise: float = 1.0, passed: bool = True,
         float_ops: tuple[str, ...] = ()) -> Candidate:
    c = Candidate(name, Target(precision=precision), float_ops)  # type: ignore[arg-type]
    c.p50_ms, c.noise_pct, c.passed, c.agreement = {1: p50}, {1: noise}, passed, 0.999
    return c


def test_the_fastest_candidate_that_passed_wins() -> None:
    winner, why = decide([cand("ort-fp32", "fp32", 2.0), cand("ort-int8", "int8", 1.0),
                          cand("ov-int8", "int8", 0.5, passed=False)])
    assert winner.name == "ort-int8"
    assert "2.00x faster than ort-fp32" in why and "failed the accuracy gate" in why


def test_an_int8_engine_slower_than_fp32_is_not_chosen() -> None:
    winner, _ = decide([cand("ort-fp32", "fp32", 1.0), cand("ort-int8", "int8", 1.25)])
    assert winner.name == "ort-fp32"


def test_a_lead_inside_the_noise_keeps_the_simpler_engine_and_says_so() -> None:
    winner, why = decide([cand("ort-fp32", "fp32", 1.0, noise=6.0),
                          cand("ort-int8", "int8", 0.95, noise=6.0)])
    assert winner.name == "ort-fp32"
    assert "inside the combined noise, so the simpler engine is kept" in why


def test_no_passing_candidate_is_a_clear_error() -> None:
    with pytest.raises(BuildError, match="no candidate passed.*ort-int8: agreement 0.9990"):
        decide([cand("ort-int8", "int8", 1.0, passed=False)])


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
