"""Quantize a whole decoder: capture calibration activations, fold AWQ scales, search
clipping, and store the result as an artefact (codes, scales, zero points, settings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import CalibrationError
from trtflow.llm.export import PROJECTIONS, DecoderShape
from trtflow.llm.weight_only import (
    QuantizedDecoder,
    QuantizedWeight,
    WeightOnlyConfig,
    check_group,
    quantize_groups,
    search_clip,
    search_scale,
)

# the module whose input each captured tensor is: the input of q/k/v, o, gate/up, down
CAPTURED = ("q_proj", "o_proj", "gate_proj", "down_proj")


def token_windows(tokenizer: Any, text: str, window: int, count: int | None = None
                  ) -> np.ndarray:
    """Consecutive, non-overlapping windows [n, window] of the text's token ids."""
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    n = len(ids) // window if count is None else min(count, len(ids) // window)
    if n == 0:
        raise CalibrationError(f"the text has {len(ids)} tokens, fewer than one window of "
                               f"{window}; expected more text")
    return ids[: n * window].reshape(n, window)


def capture_inputs(model: Any, windows: np.ndarray, rows: int, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """Sampled input rows of every projection block and of lm_head, from the float model."""
    import torch

    seen: dict[str, list[np.ndarray]] = {}
    hooks = []
    layers = model.model.layers

    def hook(key: str) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            seen.setdefault(key, []).append(args[0].detach().reshape(-1, args[0].shape[-1])
                                            .float().numpy())
        return record

    for i, layer in enumerate(layers):
        for p in CAPTURED:
            owner = layer.self_attn if p in ("q_proj", "o_proj") else layer.mlp
            hooks.append(getattr(owner, p).register_forward_pre_hook(hook(f"layers.{i}.{p}")))
    hooks.append(model.lm_head.register_forward_pre_hook(hook("lm_head")))
    try:
        with torch.no_grad():
            for window in windows:
                model(torch.from_numpy(window[None]))
    finally:
        for h in hooks:
            h.remove()
    rng = np.random.default_rng(seed)
    out = {}
    for key, chunks in seen.items():
        x = np.concatenate(chunks)
        out[key] = x[rng.choice(len(x), size=min(rows, len(x)), replace=False)]
    return out


def _quantize(w: np.ndarray, x: np.ndarray | None, cfg: WeightOnlyConfig) -> QuantizedWeight:
    if cfg.method == "awq" and x is not None:
        return search_clip(w, x, cfg.bits, cfg.group_size, cfg.symmetric)
    return quantize_groups(w, cfg.bits, cfg.group_size, cfg.symmetric)


def quantize_decoder(weights: dict[str, np.ndarray], shape: DecoderShape,
                     cfg: WeightOnlyConfig, inputs: dict[str, np.ndarray] | None = None
                     ) -> QuantizedDecoder:
    """Quantize every projection (and lm_head at `cfg.lm_head_bits`); with AWQ, fold the
    searched scales into the norms/projections of the returned float weights first."""
    for p in PROJECTIONS:
        check_group(f"layers.0.{p}", weights[f"layers.0.{p}"].shape[0], cfg.group_size)
    if cfg.method == "awq" and not inputs:
        raise CalibrationError("method awq needs calibration activations; none were given")
    w = {k: v.astype(np.float32).copy() for k, v in weights.items()}
    x = dict(inputs or {})
    alphas: dict[str, float] = {}
    if cfg.method == "awq":
        for i in range(shape.layers):
            alphas.update(_fold_layer(w, x, i, shape, cfg))
    quantized = {}
    for i in range(shape.layers):
        for p in PROJECTIONS:
            source = {"k_proj": "q_proj", "v_proj": "q_proj", "up_proj": "gate_proj"}.get(p, p)
            key = f"layers.{i}.{p}"
            quantized[key] = _quantize(w[key], x.get(f"layers.{i}.{source}"), cfg)
    if cfg.lm_head_bits:
        check_group("lm_head", w["lm_head"].shape[0], cfg.lm_head_group_size)
        quantized["lm_head"] = quantize_groups(w["lm_head"], cfg.lm_head_bits,
                                               cfg.lm_head_group_size, cfg.symmetric)
    return QuantizedDecoder(config=cfg, weights=quantized, float_weights=w, awq_alphas=alphas)


def _fold_layer(w: dict[str, np.ndarray], x: dict[str, np.ndarray], i: int,
                shape: DecoderShape, cfg: WeightOnlyConfig) -> dict[str, float]:
    """AWQ scales of layer i's blocks, folded into w (and the captured inputs divided)."""
    L = f"layers.{i}"
    args = (cfg.bits, cfg.group_size, cfg.symmetric)
    alphas = {}
    # down: its input is silu(gate) * up, so dividing up's output columns divides it
    s, alphas[f"{L}.down_proj"] = search_scale(x[f"{L}.down_proj"], [w[f"{L}.down_proj"]], *args)
    w[f"{L}.down_proj"] *= s[:, None]
    w[f"{L}.up_proj"] /= s[None, :]
    x[f"{L}.down_proj"] = x[f"{L}.down_proj"] / s
    s, alphas[f"{L}.gate_up"] = search_scale(
        x[f"{L}.gate_proj"], [w[f"{L}.gate_proj"], w[f"{L}.up_proj"]], *args)
    w[f"{L}.gate_proj"] *= s[:, None]
    w[f"{L}.up_proj"] *= s[:, None]
    w[f"{L}.post_norm"] /= s
    x[f"{L}.gate_proj"] = x[f"{L}.gate_proj"] / s
    if shape.heads == shape.kv_heads:  # o's input channels map 1:1 onto v's outputs
        s, alphas[f"{L}.o_proj"] = search_scale(x[f"{L}.o_proj"], [w[f"{L}.o_proj"]], *args)
        w[f"{L}.o_proj"] *= s[:, None]
        w[f"{L}.v_proj"] /= s[None, :]
        x[f"{L}.o_proj"] = x[f"{L}.o_proj"] / s
    qkv = [w[f"{L}.{p}"] for p in ("q_proj", "k_proj", "v_proj")]
    s, alphas[f"{L}.qkv"] = search_scale(x[f"{L}.q_proj"], qkv, *args)
    for p in ("q_proj", "k_proj", "v_proj"):
        w[f"{L}.{p}"] *= s[:, None]
    w[f"{L}.input_norm"] /= s
    x[f"{L}.q_proj"] = x[f"{L}.q_proj"] / s
    return alphas


def save_quantized(q: QuantizedDecoder, folder: Path) -> Path:
    """Write `weight_only.npz` (codes, scales, zero points, folded norms) and
    `weight_only.json` (settings, AWQ alphas, per-tensor shapes) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tensors = {}
    for name, qw in q.weights.items():
        arrays[f"{name}/codes"] = qw.codes
        arrays[f"{name}/scales"] = qw.scales
        arrays[f"{name}/zero_points"] = qw.zero_points
        tensors[name] = {"bits": qw.bits, "group_size": qw.group_size,
                         "symmetric": qw.symmetric, "in": qw.in_features,
                         "out": int(qw.codes.shape[0]),
                         "clip_ratio_mean": None if qw.clip_ratio is None
                         else float(qw.clip_ratio.mean())}
    for name, value in q.float_weights.items():
        if name.endswith("_norm") or name == "norm":
            arrays[f"{name}/float"] = value
    np.savez(folder / "weight_only.npz", **arrays)  # type: ignore[arg-type]
    settings = {"config": q.config.__dict__, "awq_alphas": q.awq_alphas, "tensors": tensors,
                "float": sorted(k for k in q.float_weights if k not in q.weights)}
    (folder / "weight_only.json").write_text(json.dumps(settings, indent=1))
    return folder


def load_quantized(folder: Path) -> QuantizedDecoder:
    """The artefact `save_quantized` wrote (the float weights: only the folded norms)."""
    settings = json.loads((folder / "weight_only.json").read_text())
    arrays = np.load(folder / "weight_only.npz")
    weights = {}
    for name, t in settings["tensors"].items():
        weights[name] = QuantizedWeight(
            codes=arrays[f"{name}/codes"], scales=arrays[f"{name}/scales"],
            zero_points=arrays[f"{name}/zero_points"], bits=t["bits"],
            group_size=t["group_size"], symmetric=t["symmetric"])
    norms = {k[: -len("/float")]: arrays[k] for k in arrays.files if k.endswith("/float")}
    return QuantizedDecoder(config=WeightOnlyConfig(**settings["config"]), weights=weights,
                            float_weights=norms, awq_alphas=settings["awq_alphas"])
