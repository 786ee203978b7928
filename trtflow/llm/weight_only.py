"""Weight-only quantization of a decoder's projections: INT8 and INT4, grouped along the
input dimension, symmetric or asymmetric, with round-to-nearest (RTN) or AWQ-style
activation-aware scales from calibration text.

A weight W[in, out] is cut into groups of `group_size` input rows per output column;
each group has one scale (and, asymmetric, one zero point). Codes are unsigned
(`bits`-wide) with the zero point subtracted, the layout ONNX Runtime's `MatMulNBits`
reads. Symmetric groups use the zero point 2^(bits-1).

AWQ (Lin et al. 2023), as AutoAWQ applies it: per block of projections that share an
input, a per-input-channel scale s = mean|x|^alpha (alpha searched on a 0..1 grid)
multiplies the weight rows and divides the input, the division folded into the
preceding RMSNorm weight (q/k/v, gate/up) or the preceding projection's columns
(up -> down); o_proj is scaled only when every head has its own KV head (else its
input cannot be divided exactly). Then a per-group clipping ratio is searched on the
calibration activations. Everything is chosen by the output error ||X W - X' W_q||
on sampled calibration rows, never on evaluation text.

GPTQ (trtflow/llm/gptq.py; method "gptq", or "awq+gptq" after AWQ's scales) rounds
with second-order error compensation from the Hessian of every calibration token. On
SmolLM2-135M fine-tuned (16 evaluation windows, MatMulNBits engines) INT4 g32 asym
went from +20.2 % perplexity (RTN) to +5.5 % (GPTQ) and +3.9 % with down_proj at INT8.
`int8_projections` keeps chosen projections at INT8 (NNCF's mixed precision).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from trtflow.errors import CalibrationError

Method = Literal["rtn", "awq", "gptq", "awq+gptq"]
ALPHAS = tuple(i / 10 for i in range(11))
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


@dataclass(frozen=True)
class WeightOnlyConfig:
    bits: Literal[4, 8] = 4
    group_size: int = 32
    symmetric: bool = False
    method: Method = "gptq"
    # embeddings stay float; lm_head gets INT8 at this group size (NNCF keeps the same
    # layers at 8 bits by default); None keeps it float
    lm_head_bits: int | None = 8
    lm_head_group_size: int = 64
    # GPTQ: visit input rows by decreasing activation (groups' scales fixed beforehand)
    act_order: bool = False
    # GPTQ: search each group's clipping ratio on the Hessian-weighted error
    clip_search: bool = True
    # projections kept at INT8 in an INT4 decoder: 'down_proj', 'layers.0', 'layers.3.q_proj'
    int8_projections: tuple[str, ...] = ()
    int8_group_size: int = 64


@dataclass
class QuantizedWeight:
    """Codes [out, groups, group_size] (uint8, unpacked), scales and zero points
    [out, groups]."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    bits: int
    group_size: int
    symmetric: bool
    clip_ratio: np.ndarray | None = None  # [out, groups] where searched

    @property
    def in_features(self) -> int:
        return self.codes.shape[1] * self.group_size

    def dequantize(self) -> np.ndarray:
        """The float weight W[in, out] these codes stand for."""
        w = (self.codes.astype(np.float32) - self.zero_points[..., None]) * self.scales[..., None]
        return w.reshape(w.shape[0], -1).T.copy()


@dataclass
class QuantizedDecoder:
    """Every quantized projection, plus the float weights the AWQ folding changed."""

    config: WeightOnlyConfig
    weights: dict[str, QuantizedWeight]
    float_weights: dict[str, np.ndarray]  # the (folded) float weights of the whole decoder
    awq_alphas: dict[str, float] = field(default_factory=dict)


def split_columns(q: QuantizedWeight, widths: list[int]) -> list[QuantizedWeight]:
    """One QuantizedWeight per block of output columns (the inverse of concatenating
    weights along their outputs)."""
    edges = np.cumsum([0, *widths])
    return [QuantizedWeight(codes=q.codes[a:b], scales=q.scales[a:b],
                            zero_points=q.zero_points[a:b], bits=q.bits,
                            group_size=q.group_size, symmetric=q.symmetric,
                            clip_ratio=None if q.clip_ratio is None else q.clip_ratio[a:b])
            for a, b in zip(edges[:-1], edges[1:], strict=True)]


def check_group(name: str, rows: int, group_size: int) -> None:
    if group_size < 16 or group_size & (group_size - 1):
        raise CalibrationError(f"group_size {group_size}: expected a power of two >= 16 "
                               "(MatMulNBits block sizes)")
    if rows % group_size:
        raise CalibrationError(f"group_size {group_size} does not divide {name}'s input "
                               f"dimension {rows}; expected a group size that divides it "
                               f"(e.g. {_divisors(rows)})")


def _divisors(rows: int) -> list[int]:
    return [g for g in (16, 32, 64, 128, 256) if rows % g == 0]


def _grouped(w: np.ndarray, group_size: int) -> np.ndarray:
    """W[in, out] -> [out, groups, group_size]."""
    return w.T.reshape(w.shape[1], w.shape[0] // group_size, group_size)


def scale_zero(g_min: np.ndarray, g_max: np.ndarray, bits: int, symmetric: bool
               ) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point of groups with these (clipped) minima and maxima.

    Symmetric: zero point 2^(bits-1), scale max|w| / (2^(bits-1) - 1). Asymmetric: the
    range is widened to hold 0 and the zero point is an integer in [0, 2^bits - 1] (the
    uint zero point MatMulNBits reads)."""
    top = 2 ** bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        amax = np.maximum(np.abs(g_min), np.abs(g_max))
        scale = np.maximum(amax / (half - 1), 1e-10)
        return scale, np.full_like(scale, half)
    hi, lo = np.maximum(g_max, 0), np.minimum(g_min, 0)
    scale = np.maximum((hi - lo) / top, 1e-10)
    return scale, np.clip(np.round(-lo / scale), 0, top)


def grid_params(values: np.ndarray, gram: np.ndarray, bits: int, symmetric: bool,
                clip_ratios: tuple[float, ...] = (1.0,)
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One group's scale, zero point and clipping ratio per output column, for the group's
    rows `values` [k, out]: the ratio (of the range) with the least error d^T G d, G the
    group's input Gram matrix / Hessian block [k, k]."""
    g_min, g_max = values.min(0), values.max(0)
    best: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
    top = 2 ** bits - 1
    for ratio in clip_ratios:
        scale, zero = scale_zero(g_min * ratio, g_max * ratio, bits, symmetric)
        if len(clip_ratios) == 1:
            return scale, zero, np.full(scale.shape, ratio, np.float32)
        d = values - (np.clip(np.round(values / scale) + zero, 0, top) - zero) * scale
        err = ((gram @ d) * d).sum(0)
        if best is None:
            best = (err, scale, zero, np.full(scale.shape, ratio, np.float32))
            continue
        better = err < best[0]
        for held, new in zip(best, (err, scale, zero, ratio), strict=True):
            held[better] = new[better] if np.ndim(new) else new
    assert best is not None
    return best[1], best[2], best[3]


def quantize_groups(w: np.ndarray, bits: int, group_size: int, symmetric: bool,
                    clip: np.ndarray | float = 1.0) -> QuantizedWeight:
    """Round-to-nearest codes for W[in, out]; `clip` scales each group's range."""
    g = _grouped(w.astype(np.float32), group_size)
    top = 2 ** bits - 1
    clip = np.asarray(clip, np.float32)
    clip = clip[..., None] if clip.ndim else clip
    scale, zero = scale_zero(g.min(-1, keepdims=True) * clip, g.max(-1, keepdims=True) * clip,
                             bits, symmetric)
    codes = np.clip(np.round(g / scale) + zero, 0, top).astype(np.uint8)
    return QuantizedWeight(codes=codes, scales=scale[..., 0].astype(np.float32),
                           zero_points=zero[..., 0].astype(np.float32), bits=bits,
                           group_size=group_size, symmetric=symmetric)


def search_clip(w: np.ndarray, x: np.ndarray, bits: int, group_size: int, symmetric: bool
                ) -> QuantizedWeight:
    """Per-group clipping ratio minimising ||X_g (W_g - Q(W_g))||^2 on sampled rows.

    The error is d^T (X_g^T X_g) d per group and column: the Gram matrices are formed
    once, so each ratio costs groups x k^2 x out instead of rows x in x out."""
    rows, groups = x.shape[0], w.shape[0] // group_size
    xg = np.ascontiguousarray(x.reshape(rows, groups, group_size).transpose(1, 0, 2))
    gram = np.matmul(xg.transpose(0, 2, 1), xg)  # [groups, k, k]
    best_err = np.full((w.shape[1], groups), np.inf, np.float32)
    best_ratio = np.ones((w.shape[1], groups), np.float32)
    g = _grouped(w, group_size)
    for ratio in CLIP_RATIOS:
        q = quantize_groups(w, bits, group_size, symmetric, ratio)
        delta = g - (q.codes.astype(np.float32) - q.zero_points[..., None]) * q.scales[..., None]
        d = np.ascontiguousarray(delta.transpose(1, 2, 0))  # [groups, k, out]
        err = (np.matmul(gram, d) * d).sum(1).T  # [out, groups]
        better = err < best_err
        best_err[better], best_ratio[better] = err[better], ratio
    q = quantize_groups(w, bits, group_size, symmetric, best_ratio)
    q.clip_ratio = best_ratio
    return q


def _output_error(x: np.ndarray, reference: list[np.ndarray], weights: list[np.ndarray],
                  s: np.ndarray, bits: int, group_size: int, symmetric: bool) -> float:
    xs = x / s
    err = 0.0
    for w, y in zip(weights, reference, strict=True):
        deq = quantize_groups(w * s[:, None], bits, group_size, symmetric).dequantize()
        err += float(((y - xs @ deq) ** 2).mean())
    return err


def search_scale(x: np.ndarray, weights: list[np.ndarray], bits: int, group_size: int,
                 symmetric: bool) -> tuple[np.ndarray, float]:
    """AWQ's per-input-channel scale for projections sharing the input rows `x`."""
    mean_abs = np.abs(x).mean(0) + 1e-6
    reference = [x @ w for w in weights]
    best: tuple[float, np.ndarray, float] | None = None
    for alpha in ALPHAS:
        s = mean_abs ** alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        err = _output_error(x, reference, weights, s, bits, group_size, symmetric)
        if best is None or err < best[0]:
            best = (err, s, alpha)
    assert best is not None
    return best[1], best[2]
