"""The KV-cache decoder graph: one ONNX graph with a dynamic past length that serves
both prefill (past length 0) and decode (one new token).

Inputs: `input_ids` [B, S], `attention_mask` [B, P+S] (1 = real token; left padding
allowed), `position_ids` [B, S], and per layer `past_key.i` / `past_value.i`
[B, kv_heads, P, head_dim]. Outputs: `logits` [B, S, vocab] and `present_key.i` /
`present_value.i` [B, kv_heads, P+S, head_dim].

Why a module of our own instead of exporting `LlamaForCausalLM`: transformers' cache
objects do not trace into graph inputs/outputs, and the weight-only engines need every
projection as a plain `MatMul(x, W[in, out])` with W an initializer named after the
layer. The module reads the Hugging Face weights; `check_parity` holds it to the
transformers model's logits.

This traced graph is the plain form (`trtflow.llm.ort_engine.float_graph(fused=False)`);
the ONNX Runtime engines default to `trtflow.llm.fused_graph` (GroupQueryAttention,
skip-RMSNorm, packed projections), which has the same inputs and outputs except
`position_ids`, and which `check_parity` holds to the same logits.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trtflow.errors import ModelError, ParityError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OPSET = 18


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    context: int
    rope_theta: float
    rms_eps: float

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        if isinstance(rope, dict) and rope.get("rope_type", "default") != "default":
            raise ModelError(f"rope type {rope.get('rope_type')!r} is not supported; "
                             "expected the default Llama RoPE")
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size, heads=heads,
                   kv_heads=config.num_key_value_heads, head_dim=head_dim,
                   intermediate=config.intermediate_size, vocab=config.vocab_size,
                   context=config.max_position_embeddings,
                   rope_theta=float(theta or getattr(config, "rope_theta", None) or 10000.0),
                   rms_eps=float(config.rms_norm_eps))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_name(layer: int, projection: str) -> str:
    """The ONNX initializer name of a projection weight (W[in, out])."""
    return f"layers.{layer}.{projection}"


def hf_weights(model: Any) -> dict[str, torch.Tensor]:
    """The decoder's weights from a transformers Llama model, projections as W[in, out]."""
    inner = model.model
    state: dict[str, torch.Tensor] = {
        "embed": inner.embed_tokens.weight.detach().float(),
        "norm": inner.norm.weight.detach().float(),
        "lm_head": model.lm_head.weight.detach().float().t().contiguous(),
    }
    for i, layer in enumerate(inner.layers):
        state[f"layers.{i}.input_norm"] = layer.input_layernorm.weight.detach().float()
        state[f"layers.{i}.post_norm"] = layer.post_attention_layernorm.weight.detach().float()
        for p in PROJECTIONS:
            owner = layer.self_attn if p in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            linear = getattr(owner, p)
            if linear.bias is not None:
                raise ModelError(f"layer {i} {p} has a bias; expected a Llama decoder "
                                 "without projection biases")
            state[weight_name(i, p)] = linear.weight.detach().float().t().contiguous()
    return state


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVCacheDecoder(nn.Module):
    """A Llama decoder step: new tokens + past KV in, logits + present KV out."""

    def __init__(self, shape: DecoderShape, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.shape = shape
        self.weights = nn.ParameterDict(
            {k.replace(".", "_"): nn.Parameter(v, requires_grad=False) for k, v in weights.items()})
        inv = 1.0 / (shape.rope_theta ** (torch.arange(0, shape.head_dim, 2).float()
                                          / shape.head_dim))
        freqs = torch.outer(torch.arange(shape.context).float(), inv)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_table: torch.Tensor
        self.sin_table: torch.Tensor
        self.register_buffer("cos_table", emb.cos(), persistent=False)
        self.register_buffer("sin_table", emb.sin(), persistent=False)

    def w(self, name: str) -> torch.Tensor:
        return self.weights[name.replace(".", "_")]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, past: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s = self.shape
        batch, seq = input_ids.shape
        x = self.w("embed")[input_ids]
        cos = self.cos_table[position_ids].unsqueeze(1)  # [B, 1, S, D]
        sin = self.sin_table[position_ids].unsqueeze(1)
        total = attention_mask.shape[1]
        # query i sits at cache index total - seq + i; it sees keys j <= that index that are
        # real tokens (attention_mask 1)
        q_index = torch.arange(seq, device=x.device) + (total - seq)
        k_index = torch.arange(total, device=x.device)
        allowed = (k_index[None, :] <= q_index[:, None])[None, None] & \
            (attention_mask[:, None, None, :] > 0)
        bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)
        groups = s.heads // s.kv_heads
        present: list[torch.Tensor] = []
        for i in range(s.layers):
            h = _rms(x, self.w(f"layers.{i}.input_norm"), s.rms_eps)
            q = (h @ self.w(weight_name(i, "q_proj"))).view(batch, seq, s.heads, s.head_dim)
            k = (h @ self.w(weight_name(i, "k_proj"))).view(batch, seq, s.kv_heads, s.head_dim)
            v = (h @ self.w(weight_name(i, "v_proj"))).view(batch, seq, s.kv_heads, s.head_dim)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k = torch.cat((past[2 * i], k), dim=2)
            v = torch.cat((past[2 * i + 1], v), dim=2)
            present += [k, v]
            kx = k[:, :, None].expand(batch, s.kv_heads, groups, total, s.head_dim
                                      ).reshape(batch, s.heads, total, s.head_dim)
            vx = v[:, :, None].expand(batch, s.kv_heads, groups, total, s.head_dim
                                      ).reshape(batch, s.heads, total, s.head_dim)
            scores = (q @ kx.transpose(-1, -2)) * (1.0 / math.sqrt(s.head_dim)) + bias
            attn = torch.softmax(scores, dim=-1) @ vx
            attn = attn.transpose(1, 2).reshape(batch, seq, s.heads * s.head_dim)
            x = x + attn @ self.w(weight_name(i, "o_proj"))
            h = _rms(x, self.w(f"layers.{i}.post_norm"), s.rms_eps)
            gate = h @ self.w(weight_name(i, "gate_proj"))
            up = h @ self.w(weight_name(i, "up_proj"))
            x = x + (nn.functional.silu(gate) * up) @ self.w(weight_name(i, "down_proj"))
        logits = _rms(x, self.w("norm"), s.rms_eps) @ self.w("lm_head")
        return logits, present


def input_names(shape: DecoderShape) -> list[str]:
    names = ["input_ids", "attention_mask", "position_ids"]
    for i in range(shape.layers):
        names += [f"past_key.{i}", f"past_value.{i}"]
    return names


def output_names(shape: DecoderShape) -> list[str]:
    names = ["logits"]
    for i in range(shape.layers):
        names += [f"present_key.{i}", f"present_value.{i}"]
    return names


def example_inputs(shape: DecoderShape, batch: int = 2, seq: int = 3, past: int = 4
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape.vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq).repeat(batch, 1)
    kv = [torch.randn(batch, shape.kv_heads, past, shape.head_dim, generator=g)
          for _ in range(2 * shape.layers)]
    return ids, mask, pos, kv


def export_decoder(module: KVCacheDecoder, path: Path) -> Path:
    """Write the KV-cache graph to `path` (one file; weights as named initializers).

    The TorchScript exporter: it traced the 30-layer decoder in seconds where the dynamo
    exporter took minutes, and both gave the same logits."""
    s = module.shape
    dynamic: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}}
    dynamic.update({n: {0: "batch", 2: "past"} for n in input_names(s)[3:]})
    dynamic.update({n: {0: "batch", 2: "total"} for n in output_names(s)[1:]})
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example_inputs(s), str(path), dynamo=False,
                          opset_version=OPSET, input_names=input_names(s),
                          output_names=output_names(s), dynamic_axes=dynamic,
                          do_constant_folding=True)
    return path


def reference_logits(model: Any, input_ids: np.ndarray) -> np.ndarray:
    """transformers' own logits for a batch of unpadded sequences (the parity oracle)."""
    with torch.no_grad():
        return model(torch.from_numpy(input_ids)).logits.float().numpy()


def check_parity(session: Any, model: Any, input_ids: np.ndarray, split: int,
                 shape: DecoderShape, atol: float = 1e-3) -> dict[str, float]:
    """Run `input_ids` through the graph as a prefill of `split` tokens then the rest as
    decode steps through the KV cache; compare every position's logits with transformers'."""
    from trtflow.llm.generate import OrtDecoder

    expected = reference_logits(model, input_ids)
    decoder = OrtDecoder(session, shape)
    got = decoder.logits_stepwise(input_ids, split)
    err = np.abs(got - expected)
    worst = float(err.max())
    agree = float((got.argmax(-1) == expected.argmax(-1)).mean())
    if not worst <= atol * max(1.0, float(np.abs(expected).max())):
        pos = np.unravel_index(int(err.argmax()), err.shape)
        raise ParityError(f"KV-cache graph logits differ from transformers': max abs error "
                          f"{worst:.3g} at (batch, position, token) {tuple(int(p) for p in pos)}"
                          f", tolerance {atol} x max |logit|")
    return {"max_abs_error": worst, "argmax_agreement": agree}
