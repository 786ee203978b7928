"""The fused KV-cache decoder graph for ONNX Runtime's CPU engine, written directly from
the Hugging Face Llama weights (no tracing).

Per layer: `SkipSimplifiedLayerNormalization` (residual add + RMSNorm), one `MatMul`
for the packed Q/K/V projection, `com.microsoft.GroupQueryAttention` (rotary inside,
KV cache in and out, grouped heads without expanding K/V), the o projection, a second
skip-RMSNorm, one `MatMul` for the packed gate/up projection and a `Split`, SiLU x up
(ONNX Runtime fuses Sigmoid x gate into QuickGelu), the down projection: 11 nodes where
the traced graph of `trtflow.llm.export` runs ~50. The weight-only build
(`trtflow.llm.ort_engine.matmulnbits_graph`) turns each projection `MatMul` into
`MatMulNBits`, a packed one from its quantized projections side by side (one input
quantization and one kernel call instead of two or three).

Same inputs and outputs as the traced graph, except `position_ids`: the attention op
derives positions from the cache length (past length + i for new token i), which is
what the generation loop feeds. A step of several tokens on a non-empty cache (chunked
prefill) needs batch 1 (GroupQueryAttention's limit); prefill from an empty cache and
one-token decode steps take any batch. With left padding a sequence's positions are shifted
by its pad count for its queries and keys alike; RoPE scores depend only on the
difference of positions, so the padded rows (masked through `attention_bias`) do not
change the result beyond rounding.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import ModelError
from trtflow.llm.export import DecoderShape, output_names

# the graph `float_graph` writes by default: a store key of the export stage must include it
# (bump it when this module changes the graph)
GRAPH_VERSION = "fused-gqa-1"
OPSET = 23  # RMSNormalization (the first layer's norm; later ones are skip-RMSNorms)
MS = "com.microsoft"
# a packed projection: its weight is these projections' weights side by side (W[in, sum out])
PACKED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
FUSED_INPUTS = ("input_ids", "attention_mask")


def initializer_name(key: str) -> str:
    """The graph's initializer for a weight key (the traced graph's naming, so the
    weight-only build finds projections and AWQ-folded norms in either graph)."""
    return "weights." + key.replace(".", "_")


def packed_key(layer: int, packed: str = "qkv_proj") -> str:
    return f"layers.{layer}.{packed}"


def rope_caches(shape: DecoderShape) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [context, head_dim / 2] of the default Llama RoPE (rotate-half layout)."""
    inv = 1.0 / (shape.rope_theta ** (np.arange(0, shape.head_dim, 2, dtype=np.float64)
                                      / shape.head_dim))
    freqs = np.outer(np.arange(shape.context, dtype=np.float64), inv)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def is_fused(model_path: Path) -> bool:
    """Whether an ONNX decoder graph is the fused one (it has GroupQueryAttention)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return any(n.op_type == "GroupQueryAttention" for n in model.graph.node)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, name: str = "",
             domain: str = "", **attrs: Any) -> list[str]:
        self._count += 1
        base = name or f"{op}_{self._count}"
        outs = [f"{base}/out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op, inputs, outs, name=base, domain=domain, **attrs))
        return outs


def _weight(weights: dict[str, np.ndarray], key: str, rows: int, cols: int) -> np.ndarray:
    w = weights.get(key)
    if w is None:
        raise ModelError(f"fused decoder graph: no weight {key!r}; expected the weights "
                         "trtflow.llm.export.hf_weights reads")
    if tuple(w.shape) != (rows, cols):
        raise ModelError(f"fused decoder graph: weight {key!r} has shape {tuple(w.shape)}; "
                         f"expected {(rows, cols)} from the model config")
    return np.asarray(w, np.float32)


def _vector(weights: dict[str, np.ndarray], key: str, size: int) -> np.ndarray:
    w = weights.get(key)
    if w is None or tuple(w.shape) != (size,):
        raise ModelError(f"fused decoder graph: weight {key!r} has shape "
                         f"{None if w is None else tuple(w.shape)}; expected ({size},)")
    return np.asarray(w, np.float32)


def fused_decoder_model(weights: dict[str, np.ndarray], shape: DecoderShape,
                        pack_mlp: bool = True) -> onnx.ModelProto:
    """The fused graph as an in-memory ONNX model (float weights as initializers).
    `pack_mlp`: gate and up as one MatMul [hidden, 2 x intermediate] and a Split."""
    s = shape
    if s.heads % s.kv_heads:
        raise ModelError(f"fused decoder graph: {s.heads} heads are not a multiple of "
                         f"{s.kv_heads} KV heads")
    q_out, kv_out = s.heads * s.head_dim, s.kv_heads * s.head_dim
    b = _Builder()
    # -- mask and lengths: every cache slot is in use (left padding is masked by the bias)
    ints = {n: b.const(f"const.{n}", np.asarray(v, np.int64))
            for n, v in (("0", [0]), ("1", [1]), ("axes12", [1, 2]),
                         ("split", [s.intermediate, s.intermediate]))}
    one_i32 = b.const("const.1_i32", np.asarray(1, np.int32))
    mask_shape = b.node("Shape", ["attention_mask"], name="mask/shape")[0]
    total64 = b.node("Gather", [mask_shape, ints["1"]], name="mask/total", axis=0)[0]  # [1]
    batch = b.node("Gather", [mask_shape, ints["0"]], name="mask/batch", axis=0)[0]  # [1]
    total32 = b.node("Cast", [total64], name="mask/total_i32", to=TensorProto.INT32)[0]
    total_scalar = b.node("Squeeze", [total32, ints["0"]], name="mask/total_scalar")[0]
    last = b.node("Sub", [total32, one_i32], name="mask/last")[0]
    seqlens = b.node("Expand", [last, batch], name="mask/seqlens_k")[0]  # [B] = total - 1
    seq = b.node("Gather", [b.node("Shape", ["input_ids"], name="ids/shape")[0], ints["1"]],
                 name="ids/seq", axis=0)[0]
    is_pad = b.node("Equal", ["attention_mask", b.const("const.0_i64", np.asarray(0, np.int64))],
                    name="mask/is_pad")[0]
    bias2d = b.node("Where", [is_pad, b.const("const.min", np.asarray(
        np.finfo(np.float32).min, np.float32)), b.const("const.0_f32", np.asarray(0, np.float32))],
        name="mask/bias2d")[0]
    bias4d = b.node("Unsqueeze", [bias2d, ints["axes12"]], name="mask/bias4d")[0]  # [B,1,1,T]
    bias_shape = b.node("Concat", [batch, ints["1"], seq, total64], name="mask/bias_shape",
                        axis=0)[0]
    bias = b.node("Expand", [bias4d, bias_shape], name="mask/attention_bias")[0]  # [B,1,S,T]
    cos, sin = rope_caches(s)
    cos_name, sin_name = b.const("rope.cos", cos), b.const("rope.sin", sin)
    # -- layers
    embed = b.const(initializer_name("embed"), _weight(weights, "embed", s.vocab, s.hidden))
    x = b.node("Gather", [embed, "input_ids"], name="embed", axis=0)[0]
    residual = x
    pending: str | None = None  # the last sublayer's output, not yet added to the residual
    eps = float(s.rms_eps)

    def norm(key: str, name: str) -> str:
        nonlocal residual, pending
        gamma = b.const(initializer_name(key), _vector(weights, key, s.hidden))
        if pending is None:
            return b.node("RMSNormalization", [residual, gamma], name=name, axis=-1,
                          epsilon=eps)[0]
        out, _, _, summed = b.node("SkipSimplifiedLayerNormalization", [residual, pending, gamma],
                                   [f"{name}/out", "", "", f"{name}/residual"], name=name,
                                   domain=MS, epsilon=eps)
        residual, pending = summed, None
        return out

    def matmul(x_in: str, key: str, rows: int, cols: int, w: np.ndarray | None = None) -> str:
        w = _weight(weights, key, rows, cols) if w is None else w
        return b.node("MatMul", [x_in, b.const(initializer_name(key), w)],
                      name=f"{key}/MatMul")[0]

    for i in range(s.layers):
        L = f"layers.{i}"
        h = norm(f"{L}.input_norm", f"{L}/input_norm")
        qkv_w = np.concatenate([_weight(weights, f"{L}.q_proj", s.hidden, q_out),
                                _weight(weights, f"{L}.k_proj", s.hidden, kv_out),
                                _weight(weights, f"{L}.v_proj", s.hidden, kv_out)], axis=1)
        qkv = matmul(h, packed_key(i), s.hidden, q_out + 2 * kv_out, qkv_w)
        attn = b.node("GroupQueryAttention", [
            qkv, "", "", f"past_key.{i}", f"past_value.{i}", seqlens, total_scalar,
            cos_name, sin_name, "", bias],
            [f"{L}/attn/out", f"present_key.{i}", f"present_value.{i}"], name=f"{L}/attn",
            domain=MS, num_heads=s.heads, kv_num_heads=s.kv_heads,
            scale=1.0 / math.sqrt(s.head_dim), do_rotary=1, rotary_interleaved=0,
            local_window_size=-1)[0]
        pending = matmul(attn, f"{L}.o_proj", q_out, s.hidden)
        h = norm(f"{L}.post_norm", f"{L}/post_norm")
        if pack_mlp:
            gate_up = matmul(h, packed_key(i, "gate_up_proj"), s.hidden, 2 * s.intermediate,
                             np.concatenate([
                                 _weight(weights, f"{L}.gate_proj", s.hidden, s.intermediate),
                                 _weight(weights, f"{L}.up_proj", s.hidden, s.intermediate)],
                                 axis=1))
            gate, up = b.node("Split", [gate_up, ints["split"]], 2, name=f"{L}/mlp/split",
                              axis=-1)
        else:
            gate = matmul(h, f"{L}.gate_proj", s.hidden, s.intermediate)
            up = matmul(h, f"{L}.up_proj", s.hidden, s.intermediate)
        sig = b.node("Sigmoid", [gate], name=f"{L}/mlp/sigmoid")[0]
        silu = b.node("Mul", [gate, sig], name=f"{L}/mlp/silu")[0]
        act = b.node("Mul", [silu, up], name=f"{L}/mlp/act")[0]
        pending = matmul(act, f"{L}.down_proj", s.intermediate, s.hidden)
    h = norm("norm", "final_norm")
    b.node("MatMul", [h, b.const(initializer_name("lm_head"),
                                 _weight(weights, "lm_head", s.hidden, s.vocab))],
           ["logits"], name="lm_head/MatMul")
    # -- interface
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    kv: list[str | int] = ["batch", s.kv_heads, "past", s.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"])]
    for i in range(s.layers):
        inputs += [helper.make_tensor_value_info(f"past_key.{i}", f32, kv),
                   helper.make_tensor_value_info(f"past_value.{i}", f32, kv)]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", s.vocab])]
    present: list[str | int] = ["batch", s.kv_heads, "total", s.head_dim]
    outputs += [helper.make_tensor_value_info(n, f32, present) for n in output_names(s)[1:]]
    graph = helper.make_graph(b.nodes, "trtflow_fused_decoder", inputs, outputs, b.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid(MS, 1)],
                             producer_name="trtflow.llm.fused_graph")


def fused_graph(weights: dict[str, np.ndarray], shape: DecoderShape, path: Path,
                pack_mlp: bool = True) -> Path:
    """Write the fused KV-cache graph with these float weights to `path` (one file)."""
    model = fused_decoder_model(weights, shape, pack_mlp)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    onnx.checker.check_model(str(path))
    return path
