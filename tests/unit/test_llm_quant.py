"""GPTQ, mixed INT4/INT8 projections and the weight-only settings' bad inputs
(trtflow/llm/gptq.py, trtflow/llm/quantize.py), on random layers and the tiny Llama of
test_llm.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_llm import ids, tiny_llama
from trtflow.errors import CalibrationError
from trtflow.llm.export import PROJECTIONS, DecoderShape, hf_weights
from trtflow.llm.generate import OrtDecoder, session_for
from trtflow.llm.gptq import gptq_quantize, hessian
from trtflow.llm.ort_engine import float_graph, matmulnbits_graph
from trtflow.llm.quantize import (
    HESSIAN,
    capture_inputs,
    load_quantized,
    quantize_decoder,
    save_quantized,
)
from trtflow.llm.weight_only import (
    WeightOnlyConfig,
    grid_params,
    quantize_groups,
    split_columns,
)


def correlated_layer(seed: int = 0, rows: int = 128, cols: int = 48
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A weight W[rows, cols] and inputs with correlated channels of unequal scale (what
    makes GPTQ's error compensation pay)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    mix = rng.standard_normal((rows, rows)) * 0.3 + np.eye(rows)
    x = (rng.standard_normal((1024, rows)) * np.exp(rng.standard_normal(rows))) @ mix
    return w, x.astype(np.float32)


def output_error(x: np.ndarray, w: np.ndarray, deq: np.ndarray) -> float:
    return float(np.linalg.norm(x @ w - x @ deq))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = tiny_llama()
    shape = DecoderShape.from_config(model.config)
    weights = {k: v.numpy() for k, v in hf_weights(model).items()}
    graph = float_graph(weights, shape, tmp_path_factory.mktemp("llmq") / "model.onnx")
    inputs = capture_inputs(model, ids(4, 24), rows=96)
    return shape, weights, graph, inputs


def test_gptq_with_an_identity_hessian_is_round_to_nearest() -> None:
    w, _ = correlated_layer()
    for symmetric in (True, False):
        got = gptq_quantize(w, np.eye(128), 4, 32, symmetric, damp=0.0)
        expected = quantize_groups(w, 4, 32, symmetric)
        np.testing.assert_array_equal(got.codes, expected.codes)
        np.testing.assert_allclose(got.scales, expected.scales, rtol=1e-6)
        np.testing.assert_array_equal(got.zero_points, expected.zero_points)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_the_output_error_of_round_to_nearest(symmetric: bool, act_order: bool
                                                          ) -> None:
    w, x = correlated_layer()
    rtn = quantize_groups(w, 4, 32, symmetric)
    gptq = gptq_quantize(w, hessian(x), 4, 32, symmetric, act_order=act_order,
                         clip_ratios=(1.0, 0.9, 0.8))
    assert output_error(x, w, gptq.dequantize()) < 0.7 * output_error(x, w, rtn.dequantize())
    assert gptq.codes.shape == (48, 4, 32) and gptq.codes.max() <= 15
    assert gptq.scales.shape == gptq.zero_points.shape == (48, 4)


def test_clipping_search_never_loses_to_the_full_range() -> None:
    w, x = correlated_layer(seed=2, rows=32)
    gram = hessian(x)
    values = w[:32]
    for symmetric in (True, False):
        scale, zero, ratio = grid_params(values, gram, 4, symmetric, (1.0, 0.9, 0.8, 0.7))
        full, full_zero, _ = grid_params(values, gram, 4, symmetric)

        def err(s: np.ndarray, z: np.ndarray) -> np.ndarray:
            d = values - (np.clip(np.round(values / s) + z, 0, 15) - z) * s
            return ((gram @ d) * d).sum(0)

        assert (err(scale, zero) <= err(full, full_zero) + 1e-9).all()
        assert np.isclose(ratio[:, None], [1.0, 0.9, 0.8, 0.7]).any(1).all()


def test_split_columns_undoes_a_concatenation() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((64, 8)), rng.standard_normal((64, 24))
    joined = quantize_groups(np.concatenate([a, b], axis=1), 4, 32, False)
    left, right = split_columns(joined, [8, 24])
    np.testing.assert_array_equal(left.dequantize(), quantize_groups(a, 4, 32, False).dequantize())
    np.testing.assert_array_equal(right.codes, quantize_groups(b, 4, 32, False).codes)


@pytest.mark.parametrize("method", ["gptq", "awq+gptq"])
def test_gptq_decoder_with_int8_projections_runs_as_matmulnbits(tiny, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                method: str) -> None:
    shape, weights, graph, inputs = tiny
    cfg = WeightOnlyConfig(bits=4, group_size=32, method=method,  # type: ignore[arg-type]
                           int8_projections=("down_proj", "layers.1.q_proj"),
                           int8_group_size=32, lm_head_group_size=32)
    q = quantize_decoder(weights, shape, cfg, inputs)
    bits = {k: w.bits for k, w in q.weights.items()}
    assert bits["layers.0.down_proj"] == bits["layers.1.down_proj"] == 8
    # k/v share q's input and its MatMulNBits: they follow q to INT8
    assert bits["layers.1.q_proj"] == bits["layers.1.k_proj"] == bits["layers.1.v_proj"] == 8
    assert bits["layers.1.o_proj"] == bits["layers.1.gate_proj"] == 4
    assert bits["layers.0.q_proj"] == 4 and bits["lm_head"] == 8
    engine = matmulnbits_graph(graph, q, tmp_path / "engine.onnx", accuracy_level=0)
    dequantized = dict(q.float_weights)
    dequantized.update({k: w.dequantize() for k, w in q.weights.items()})
    reference = float_graph(dequantized, shape, tmp_path / "dequantized.onnx")
    x = ids(2, 9)
    got = OrtDecoder(session_for(engine), shape).logits_stepwise(x, 4)
    expected = OrtDecoder(session_for(reference), shape).logits_stepwise(x, 4)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    save_quantized(q, tmp_path / "art")
    again = load_quantized(tmp_path / "art")
    assert again.config == cfg
    np.testing.assert_array_equal(again.weights["layers.1.v_proj"].codes,
                                  q.weights["layers.1.v_proj"].codes)


def test_gptq_needs_calibration_activations(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, weights, _, _ = tiny
    with pytest.raises(CalibrationError, match="method gptq needs calibration activations"):
        quantize_decoder(weights, shape, WeightOnlyConfig(method="gptq"))


def test_group_size_that_does_not_divide_the_input_is_refused_by_gptq() -> None:
    w, x = correlated_layer(rows=96)
    with pytest.raises(CalibrationError, match=r"group_size 64 does not divide layers\.3\."
                       r"down_proj's input dimension 96; expected a group size that divides "
                       r"it \(e\.g\. \[16, 32\]\)"):
        gptq_quantize(w, hessian(x), 4, 64, False, name="layers.3.down_proj")


def test_hessian_of_the_wrong_size_is_refused() -> None:
    w, x = correlated_layer()
    with pytest.raises(CalibrationError, match=r"w: Hessian of shape \(64, 64\); expected "
                       r"\(128, 128\)"):
        gptq_quantize(w, hessian(x[:, :64]), 4, 32, False, name="w")


def test_hessian_that_is_not_positive_definite_is_refused() -> None:
    w, _ = correlated_layer()
    with pytest.raises(CalibrationError, match="w: the calibration Hessian is not positive "
                       "definite"):
        gptq_quantize(w, -np.eye(128), 4, 32, False, name="w")


def test_int8_projection_that_names_nothing_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, weights, _, _ = tiny
    with pytest.raises(CalibrationError, match=r"int8_projections entry 'layers\.7' names no "
                       r"projection; expected one of \['q_proj'.*'layers\.N' \(0 <= N < 2, or "
                       r"-2 <= N < 0"):
        quantize_decoder(weights, shape, WeightOnlyConfig(method="rtn",
                                                          int8_projections=("layers.7",)))


def test_int8_group_size_that_does_not_divide_is_refused(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, weights, _, _ = tiny
    with pytest.raises(CalibrationError, match=r"group_size 256 does not divide "
                       r"layers\.0\.down_proj \(int8_projections\)"):
        quantize_decoder(weights, shape, WeightOnlyConfig(
            method="rtn", int8_projections=("down_proj",), int8_group_size=256))


def test_captured_hessians_cover_every_calibration_token() -> None:
    model = tiny_llama()
    windows = ids(3, 16)
    sampled = capture_inputs(model, windows, rows=8)
    every = capture_inputs(model, windows, rows=10_000)
    assert sampled["layers.1.down_proj"].shape == (8, 128)
    assert every["layers.1.down_proj"].shape == (48, 128)
    for key in ("layers.0.q_proj", "layers.1.down_proj"):
        np.testing.assert_allclose(sampled[key + HESSIAN], hessian(every[key]), rtol=1e-4,
                                   atol=1e-6)
    assert "lm_head" + HESSIAN not in sampled


def test_awq_scales_fold_into_the_hessians_as_into_the_rows(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, weights, _, _ = tiny
    model = tiny_llama()
    x = capture_inputs(model, ids(4, 24), rows=10_000)  # every row: the same Hessian twice
    rows_only = {k: v for k, v in x.items() if not k.endswith(HESSIAN)}
    cfg = WeightOnlyConfig(bits=4, method="awq+gptq", lm_head_group_size=32)
    with_h, without = quantize_decoder(weights, shape, cfg, x), quantize_decoder(
        weights, shape, cfg, rows_only)
    assert with_h.awq_alphas == without.awq_alphas
    for key in ("layers.0.q_proj", "layers.1.down_proj", "layers.1.up_proj"):
        np.testing.assert_allclose(with_h.weights[key].dequantize(),
                                   without.weights[key].dequantize(), atol=1e-5)


def test_zero_windows_is_refused_as_such() -> None:
    from tests.unit.test_llm import tiny_tokenizer
    from trtflow.llm.quantize import token_windows

    text = " ".join(["the cat sat on a mat"] * 20)
    assert token_windows(tiny_tokenizer(), text, 8, 2).shape == (2, 8)
    with pytest.raises(CalibrationError, match="0 windows of 8 tokens: expected at least one"):
        token_windows(tiny_tokenizer(), text, 8, 0)
    with pytest.raises(CalibrationError, match="fewer than one window of 1000"):
        token_windows(tiny_tokenizer(), text, 1000)


def test_int8_layers_count_from_the_end(tiny) -> None:  # type: ignore[no-untyped-def]
    shape, weights, _, _ = tiny
    from trtflow.llm.quantize import int8_keys

    cfg = WeightOnlyConfig(int8_projections=("layers.-1", "layers.0.o_proj"))
    assert int8_keys(cfg, shape) == {f"layers.1.{p}" for p in PROJECTIONS} | {"layers.0.o_proj"}
    for bad in ("layers.-3", "layers.2", "mlp"):
        with pytest.raises(CalibrationError, match=f"entry '{bad}' names no projection"):
            int8_keys(WeightOnlyConfig(int8_projections=(bad,)), shape)
    assert int8_keys(WeightOnlyConfig(bits=8, int8_projections=("down_proj",)), shape) == set()
