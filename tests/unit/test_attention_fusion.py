"""Attention fusion for ONNX Runtime: torch's SDPA blocks -> com.microsoft.MultiHeadAttention.

The oracle is the PyTorch module itself: a small BERT exported by trtflow's own export
stage, fused, and run by ONNX Runtime (whose CPU provider also runs MultiHeadAttention)
must give PyTorch's outputs, with a padded attention mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.graph.attention_fusion import fuse_attention, fuse_transformer


def _run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0], dtype=np.float32)


def sdpa_graph(heads: int = 2, head_size: int = 4, seed: int = 0) -> onnx.ModelProto:
    """The shape torch's exporter gives `scaled_dot_product_attention` with a mask:
    Q/K/V projections, head split, sqrt-scale on Q and K, K^T, additive bias, Softmax,
    NaN guard, x V, head merge, output projection."""
    rng = np.random.default_rng(seed)
    hidden = heads * head_size
    half_scale = float(head_size ** -0.25)

    def const(name: str, value: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(value, name)

    inits = [const(f"w{n}", rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.5)
             for n in "qkvo"]
    inits += [const("split", np.array([0, 0, -1, head_size], np.int64)),
              const("merge", np.array([0, 0, hidden], np.int64)),
              const("half_scale", np.array(half_scale, np.float32)),
              const("zero", np.array(0.0, np.float32))]
    nodes = []
    for n in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}3"]),
                  helper.make_node("Reshape", [f"{n}3", "split"], [f"{n}r"]),
                  helper.make_node("Transpose", [f"{n}r"], [f"{n}4"], perm=[0, 2, 1, 3])]
    nodes += [
        helper.make_node("Mul", ["q4", "half_scale"], ["qs"]),
        helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("Mul", ["kt", "half_scale"], ["ks"]),
        helper.make_node("MatMul", ["qs", "ks"], ["scores"]),
        helper.make_node("Add", ["scores", "mask_bias"], ["biased"]),
        helper.make_node("Softmax", ["biased"], ["probs"], axis=-1),
        helper.make_node("IsNaN", ["probs"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "probs"], ["probs_ok"]),
        helper.make_node("MatMul", ["probs_ok", "v4"], ["context"]),
        helper.make_node("Transpose", ["context"], ["context_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["context_t", "merge"], ["merged"]),
        helper.make_node("MatMul", ["merged", "wo"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "sdpa", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", hidden]),
                        helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT,
                                                      ["b", 1, "s", "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def sdpa_feeds(batch: int = 2, seq: int = 5, hidden: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    bias = np.zeros((batch, 1, seq, seq), np.float32)
    bias[1, :, :, 3:] = np.finfo(np.float32).min  # the second sequence is padded after 3
    return {"x": rng.standard_normal((batch, seq, hidden)).astype(np.float32),
            "mask_bias": bias}


def test_sdpa_block_becomes_one_multihead_attention_with_the_same_outputs() -> None:
    model = sdpa_graph()
    fused, report = fuse_attention(model)
    ops = [n.op_type for n in fused.graph.node]
    assert report["fused"] == 1 and report["num_heads"] == 2 and report["head_size"] == 4
    assert ops.count("MultiHeadAttention") == 1
    assert "Softmax" not in ops and "IsNaN" not in ops and "Transpose" not in ops
    mha = next(n for n in fused.graph.node if n.op_type == "MultiHeadAttention")
    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    assert attrs["num_heads"] == 2 and attrs["scale"] == pytest.approx(0.5)  # 4 ** -0.5
    assert list(mha.input) == ["q3", "k3", "v3", "", "", "mask_bias"]
    feeds = sdpa_feeds()
    np.testing.assert_allclose(_run(fused, feeds), _run(model, feeds), atol=1e-5)


def test_a_softmax_outside_attention_is_left_alone_and_reported() -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["p"], name="classifier_softmax", axis=-1)],
        "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["b", 3])],
        [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    fused, report = fuse_attention(model)
    assert report["fused"] == 0
    assert "not a head split" in report["skipped"]["classifier_softmax"]
    assert [n.op_type for n in fused.graph.node] == ["MatMul", "Softmax"]


@pytest.fixture(scope="module")
def tiny_bert_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 2-layer BERT (non-zero biases, as a trained one has) through trtflow's export and
    cleanup (the graph the CUDA engine is built from: constants folded)."""
    import torch
    from transformers import BertConfig, BertModel

    from trtflow.graph.cleanup import PASSES, cleanup
    from trtflow.params import ExportConfig, TensorSpec
    from trtflow.sources import LoadedModel
    from trtflow.stages.export import export_model

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64,
                                             vocab_size=100), add_pooling_layer=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]

    torch.manual_seed(0)
    module = Encoder().eval()
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.05)
    specs = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
             TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"])]
    out = tmp_path_factory.mktemp("bert")
    sample = bert_feeds()
    export_model(LoadedModel(module, None, specs, ["hidden"]),
                 ExportConfig(opset=18, atol=1e-4, rtol=1e-3), sample, out)
    passes = tuple(PASSES[p] for p in ("onnxscript", "onnxslim", "shape_inference"))
    cleaned, _ = cleanup(onnx.load(str(out / "model.onnx")), passes)
    onnx.save_model(cleaned, str(out / "model.clean.onnx"))
    return out / "model.clean.onnx", module


def bert_feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    mask = np.ones((2, 7), np.int64)
    mask[1, 4:] = 0
    return {"input_ids": rng.integers(0, 100, (2, 7)).astype(np.int64), "attention_mask": mask}


def test_exported_bert_fuses_every_layer_and_matches_pytorch(
        tiny_bert_onnx: tuple[Path, object], tmp_path: Path) -> None:
    import torch

    path, module = tiny_bert_onnx
    report = fuse_transformer(path, tmp_path / "fused.onnx", fp16=False, use_gpu=False)
    assert report["sdpa_attention"]["fused"] == 2 and report["attention_nodes"] == 2
    assert report["softmax_left"] == 0
    assert report["fused"]["MultiHeadAttention"] == 2
    feeds = bert_feeds()
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()  # type: ignore[operator]
    got = _run(tmp_path / "fused.onnx", feeds)
    np.testing.assert_allclose(got[0], want[0], atol=1e-4)
    np.testing.assert_allclose(got[1, :4], want[1, :4], atol=1e-4)  # padded rows: unused
    assert not list(Path.cwd().glob("sym_shape_infer_temp*"))


def test_fp16_fusion_keeps_float32_inputs_and_outputs(tiny_bert_onnx: tuple[Path, object],
                                                      tmp_path: Path) -> None:
    path, _ = tiny_bert_onnx
    report = fuse_transformer(path, tmp_path / "fused16.onnx", fp16=True, use_gpu=True)
    model = onnx.load(str(tmp_path / "fused16.onnx"))
    assert report["fp16"] and report["attention_fused"]
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)


def test_ort_cuda_engine_fuses_a_transformer_by_default_and_names_what_fused(
        tiny_bert_onnx: tuple[Path, object], tmp_path: Path) -> None:
    """The CUDA backend's own cleanup (run here on ORT's CPU provider, same code path)."""
    import torch

    from trtflow.backends import build_engine, load_engine
    from trtflow.params import Target

    path, module = tiny_bert_onnx
    target = Target(device="cuda", precision="fp32", options={"execution_device": "cpu"})
    report = build_engine(path, target, tmp_path)
    fusion = report["precision"]["transformer_fusion"]
    assert fusion["attention_nodes"] == 2 and report["engine_ops"]["MultiHeadAttention"] == 2
    feeds = bert_feeds()
    got = load_engine(tmp_path).run(feeds)
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()  # type: ignore[operator]
    np.testing.assert_allclose(next(iter(got.values()))[0], want[0], atol=1e-4)
    off = Target(device="cuda", precision="fp32",
                 options={"execution_device": "cpu", "transformer_fusion": "off"})
    (tmp_path / "plain").mkdir()
    plain = build_engine(path, off, tmp_path / "plain")
    assert "transformer_fusion" not in plain["precision"]
    assert "MultiHeadAttention" not in plain["engine_ops"]
