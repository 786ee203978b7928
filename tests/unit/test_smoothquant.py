"""SmoothQuant on tiny graphs: the smoothed graph computes the same function in float,
outlier channels are flattened, and 1/s goes into a LayerNorm or a new Mul."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import ParamsError
from trtflow.graph.parity import ort_run
from trtflow.quant.smoothquant import channel_amax, smooth, smoothable, smoothing_scales

K, N = 8, 6
OUTLIERS = (2, 5)  # input channels scaled x50 before the MatMuls


def _graph(residual: bool) -> onnx.ModelProto:
    """x -> LayerNorm -> Mul(outlier gain) -> {MatMul w1, MatMul w2 (shared input)} and,
    with `residual`, the same tensor also into an Add; plus Relu -> MatMul w3."""
    rng = np.random.default_rng(0)
    gain = np.ones(K, np.float32)
    gain[list(OUTLIERS)] = 50.0
    inits = [numpy_helper.from_array(np.ones(K, np.float32), "ln_scale"),
             numpy_helper.from_array(np.zeros(K, np.float32), "ln_bias"),
             numpy_helper.from_array(gain, "gain"),
             numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "w3")]
    nodes = [helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"],
                              name="ln0", axis=-1),
             helper.make_node("Mul", ["ln", "gain"], ["h"], name="gain0"),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["h", "w2"], ["b"], name="mm2"),
             helper.make_node("Add", ["a", "b"], ["ab"], name="add0"),
             helper.make_node("Relu", ["ab"], ["r"], name="relu0"),
             helper.make_node("MatMul", ["r", "w3"], ["y"], name="mm3")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, K])]
    if residual:
        nodes.append(helper.make_node("Add", ["h", "y"], ["z"], name="residual"))
        outputs = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 4, K])]
    graph = helper.make_graph(
        nodes, "sq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, K])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _ln_graph() -> onnx.ModelProto:
    """x -> LayerNorm (scale with outlier channels) -> MatMul: 1/s folds into the LN."""
    rng = np.random.default_rng(1)
    scale = np.ones(K, np.float32)
    scale[list(OUTLIERS)] = 40.0
    inits = [numpy_helper.from_array(scale, "ln_scale"),
             numpy_helper.from_array(rng.standard_normal(K).astype(np.float32), "ln_bias"),
             numpy_helper.from_array(rng.standard_normal((N, K)).astype(np.float32), "w")]
    nodes = [helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"],
                              name="ln0", axis=-1),
             helper.make_node("Gemm", ["ln", "w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "sq_ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


def _feeds(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp_path, name: str
         ) -> dict[str, np.ndarray]:
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    return ort_run(path, feeds)


def test_smoothable_groups_matmuls_by_their_shared_input() -> None:
    assert smoothable(_graph(residual=False)) == {"h": ["mm1", "mm2"], "r": ["mm3"]}
    assert smoothable(_ln_graph()) == {"ln": ["fc"]}


@pytest.mark.parametrize("residual", [False, True])
def test_smoothed_graph_computes_the_same_function_and_flattens_outliers(
        tmp_path, residual: bool) -> None:
    model = _graph(residual)
    calib = [_feeds((16, 4, K), seed) for seed in range(3)]
    act = channel_amax(model, smoothable(model), calib)
    assert set(np.argsort(act["h"])[-2:]) == set(OUTLIERS)
    smoothed, report = smooth(model, act, alpha=0.5)
    x = _feeds((5, 4, K), seed=9)
    out = "z" if residual else "y"
    np.testing.assert_allclose(_run(smoothed, x, tmp_path, "s")[out],
                               _run(model, x, tmp_path, "m")[out], rtol=1e-4, atol=1e-4)
    group = next(g for g in report.groups if g.activation == "h")
    assert group.consumers == ["mm1", "mm2"] and group.folded_into is None  # Mul inserted
    assert group.outlier_ratio_before > 40 and group.outlier_ratio_after < 8
    # the MatMuls now read the smoothed tensor; a residual reader keeps the original
    nodes = {n.name: n for n in smoothed.graph.node}
    assert nodes["mm1"].input[0] == nodes["mm2"].input[0] == group.smoothed != "h"
    if residual:
        assert nodes["residual"].input[0] == "h"
    flat = channel_amax(smoothed, [group.smoothed], calib)[group.smoothed]
    assert flat.max() / np.median(flat) == pytest.approx(group.outlier_ratio_after, rel=1e-4)


def test_a_layernorm_read_only_by_matmuls_takes_the_scale_itself(tmp_path) -> None:
    model = _ln_graph()
    act = channel_amax(model, ["ln"], [_feeds((64, K))])
    smoothed, report = smooth(model, act, alpha=0.8)
    assert report.groups[0].folded_into == "ln0"
    assert [n.op_type for n in smoothed.graph.node] == ["LayerNormalization", "Gemm"]
    x = _feeds((7, K), seed=3)
    np.testing.assert_allclose(_run(smoothed, x, tmp_path, "s")["y"],
                               _run(model, x, tmp_path, "m")["y"], rtol=1e-4, atol=1e-4)
    scale = numpy_helper.to_array(next(i for i in smoothed.graph.initializer
                                       if i.name == "ln_scale"))
    assert np.argmax(np.abs(scale)) not in OUTLIERS or scale.max() / np.median(scale) < 40


def test_scales_follow_the_formula_and_leave_empty_channels_alone() -> None:
    s = smoothing_scales(np.array([4.0, 0.0, 1.0]), np.array([1.0, 2.0, 4.0]), alpha=0.5)
    np.testing.assert_allclose(s, [2.0, 1.0, 0.5])
    with pytest.raises(ParamsError, match="alpha must be in"):
        smooth(_ln_graph(), {"ln": np.ones(K)}, alpha=1.5)
