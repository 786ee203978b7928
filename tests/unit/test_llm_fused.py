"""The fused decoder graph (GroupQueryAttention, skip-RMSNorm, packed Q/K/V) on a tiny
random Llama: the same logits as the traced graph and transformers, the in-place KV
buffer of the generation loop, MatMulNBits on the packed projection, and bad weights."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from trtflow.errors import BuildError, DataError, ModelError
from trtflow.llm.export import DecoderShape, check_parity, hf_weights
from trtflow.llm.fused_graph import fused_graph, is_fused
from trtflow.llm.generate import OrtDecoder, session_for
from trtflow.llm.ort_engine import float_graph, matmulnbits_graph, packed_weight
from trtflow.llm.quantize import quantize_decoder
from trtflow.llm.weight_only import WeightOnlyConfig, quantize_groups

from .test_llm import tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    model = tiny_llama()
    shape = DecoderShape.from_config(model.config)
    weights = {k: v.numpy() for k, v in hf_weights(model).items()}
    folder = tmp_path_factory.mktemp("fused")
    fused = float_graph(weights, shape, folder / "fused.onnx")
    traced = float_graph(weights, shape, folder / "traced.onnx", fused=False)
    return model, shape, weights, fused, traced


def ids(batch: int, seq: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 64, (batch, seq))


def test_fused_graph_is_the_default_and_runs_few_ops_per_layer(tiny) -> None:  # type: ignore[no-untyped-def]
    _, shape, _, fused, traced = tiny
    assert is_fused(fused) and not is_fused(traced)
    ops = Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
    assert ops["GroupQueryAttention"] == shape.layers
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * shape.layers
    assert ops["MatMul"] == 4 * shape.layers + 1  # packed qkv, o, packed gate/up, down; lm_head
    assert "Softmax" not in ops
    per_layer = (sum(ops.values()) - 20) / shape.layers  # ~20 nodes: mask, embed, head
    assert per_layer <= 11
    inputs = [i.name for i in onnx.load(str(fused), load_external_data=False).graph.input]
    assert inputs[:2] == ["input_ids", "attention_mask"] and "position_ids" not in inputs


def test_fused_graph_matches_transformers_and_the_traced_graph(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, shape, weights, fused, traced = tiny
    parity = check_parity(session_for(fused), model, ids(2, 14), 6, shape)
    assert parity["max_abs_error"] < 1e-4 and parity["argmax_agreement"] == 1.0
    x = ids(3, 10, seed=2)
    expected = OrtDecoder(session_for(traced), shape).logits_stepwise(x, 3)
    np.testing.assert_allclose(OrtDecoder(session_for(fused), shape).logits_stepwise(x, 3),
                               expected, atol=1e-4)
    unpacked = fused_graph(weights, shape, tmp_path / "unpacked.onnx", pack_mlp=False)
    np.testing.assert_allclose(OrtDecoder(session_for(unpacked), shape).logits_stepwise(x, 3),
                               expected, atol=1e-4)


def test_in_place_kv_buffer_generates_what_the_copying_loop_does(tiny) -> None:  # type: ignore[no-untyped-def]
    _, shape, _, fused, traced = tiny
    shared = OrtDecoder(session_for(fused), shape)
    assert shared.shared_cache
    copying = OrtDecoder(session_for(fused), shape)
    copying.shared_cache = False
    reference = OrtDecoder(session_for(traced), shape)
    prompt = ids(2, 7, seed=4)
    mask = np.ones((2, 7), np.int64)
    mask[1, :2] = 0  # a left-padded row
    for kwargs in ({}, {"prompt_mask": mask}):
        got = shared.generate(prompt, 12, **kwargs).tokens  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, copying.generate(prompt, 12, **kwargs).tokens)  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, reference.generate(prompt, 12, **kwargs).tokens)  # type: ignore[arg-type]


def test_kv_buffer_refuses_more_tokens_than_it_holds(tiny) -> None:  # type: ignore[no-untyped-def]
    _, shape, _, fused, _ = tiny
    run = OrtDecoder(session_for(fused), shape).cache_stepper(1, 4)
    with pytest.raises(DataError, match="5 tokens exceed the KV buffer of 4"):
        run(ids(1, 5), np.ones((1, 5), np.int64), np.arange(5)[None])


@pytest.mark.parametrize(("bits", "symmetric"), [(4, True), (4, False), (8, True)])
def test_packed_qkv_matmulnbits_equals_the_traced_engine(tiny, tmp_path: Path, bits: int,  # type: ignore[no-untyped-def]
                                                         symmetric: bool) -> None:
    _, shape, weights, fused, traced = tiny
    q = quantize_decoder(weights, shape, WeightOnlyConfig(
        bits=bits, group_size=32, symmetric=symmetric, method="rtn"))  # type: ignore[arg-type]
    a = matmulnbits_graph(fused, q, tmp_path / "fused.onnx", accuracy_level=0)
    b = matmulnbits_graph(traced, q, tmp_path / "traced.onnx", accuracy_level=0)
    nodes = [n for n in onnx.load(str(a)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 4 * shape.layers + 1  # every projection and lm_head
    widths = {n.name: {a.name: a.i for a in n.attribute}["N"] for n in nodes}
    n_qkv = (shape.heads + 2 * shape.kv_heads) * shape.head_dim
    assert sorted(w for k, w in widths.items() if "qkv_proj" in k) == [n_qkv] * shape.layers
    assert sorted(w for k, w in widths.items() if "gate_up_proj" in k) == \
        [2 * shape.intermediate] * shape.layers
    x = ids(2, 9, seed=7)
    np.testing.assert_allclose(OrtDecoder(session_for(a), shape).logits_stepwise(x, 4),
                               OrtDecoder(session_for(b), shape).logits_stepwise(x, 4),
                               atol=1e-4)


def test_projections_quantized_differently_cannot_be_packed() -> None:
    w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    with pytest.raises(BuildError, match=r"weights\.layers_0_qkv_proj: .*4/32/True vs "
                                         r"8/32/True"):
        packed_weight([quantize_groups(w, 4, 32, True), quantize_groups(w, 8, 32, True)],
                      "weights.layers_0_qkv_proj")


def test_a_weight_of_the_wrong_shape_is_named(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, shape, weights, _, _ = tiny
    bad = dict(weights)
    bad["layers.1.k_proj"] = bad["layers.1.k_proj"][:, :8]
    with pytest.raises(ModelError, match=r"'layers\.1\.k_proj' has shape \(64, 8\); expected "
                                         r"\(64, 32\)"):
        fused_graph(bad, shape, tmp_path / "bad.onnx")
    del bad["layers.0.post_norm"]
    with pytest.raises(ModelError, match="layers.0.post_norm"):
        fused_graph(bad, shape, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
