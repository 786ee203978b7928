"""Quantize a whole decoder: capture calibration activations, fold AWQ scales, search
clipping, and store the result as an artefact (codes, scales, zero points, settings).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import CalibrationError
from trtflow.llm.export import PROJECTIONS, DecoderShape
from trtflow.llm.gptq import gptq_quantize, hessian
from trtflow.llm.weight_only import (
    CLIP_RATIOS,
    QuantizedDecoder,
    QuantizedWeight,
    WeightOnlyConfig,
    check_group,
    quantize_groups,
    search_clip,
    search_scale,
    split_columns,
)

# the module whose input each captured tensor is: the input of q/k/v, o, gate/up, down
CAPTURED = ("q_proj", "o_proj", "gate_proj", "down_proj")
HESSIAN = "/hessian"  # capture_inputs' key suffix of a block's input Hessian


def token_windows(tokenizer: Any, text: str, window: int, count: int | None = None
                  ) -> np.ndarray:
    """Consecutive, non-overlapping windows [n, window] of the text's token ids."""
    if window < 1 or (count is not None and count < 1):
        raise CalibrationError(f"{count} windows of {window} tokens: expected at least one "
                               "window of at least one token")
    ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
    n = len(ids) // window if count is None else min(count, len(ids) // window)
    if n == 0:
        raise CalibrationError(f"the text has {len(ids)} tokens, fewer than one window of "
                               f"{window}; expected more text")
    return ids[: n * window].reshape(n, window)


def capture_inputs(model: Any, windows: np.ndarray, rows: int, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """Sampled input rows of every projection block and of lm_head, from the float model,
    and each block's Hessian X^T X / tokens over every calibration token (key
    `BLOCK + HESSIAN`: GPTQ needs all tokens; 512 sampled rows of a 1536-wide input
    cost SmolLM2 twice the perplexity increase)."""
    import torch

    seen: dict[str, list[np.ndarray]] = {}
    grams: dict[str, Any] = {}
    tokens: dict[str, int] = {}
    hooks = []
    layers = model.model.layers

    def hook(key: str) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            seen.setdefault(key, []).append(x.numpy())
            if key != "lm_head":
                gram = (x.T @ x).double()
                grams[key] = grams[key] + gram if key in grams else gram
                tokens[key] = tokens.get(key, 0) + len(x)
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
    for key, gram in grams.items():
        out[key + HESSIAN] = (gram / tokens[key]).float().numpy()
    return out


# projections quantized together: they read the same input (one Hessian, one GPTQ pass)
BLOCKS = (("q_proj", ("q_proj", "k_proj", "v_proj")), ("o_proj", ("o_proj",)),
          ("gate_proj", ("gate_proj", "up_proj")), ("down_proj", ("down_proj",)))


def _quantize_block(ws: list[np.ndarray], x: np.ndarray | None, h: np.ndarray | None,
                    cfg: WeightOnlyConfig, bits: int, name: str) -> list[QuantizedWeight]:
    """Projections sharing the input rows `x` (Hessian `h`, else X^T X of the rows),
    quantized at `bits` by cfg's rounding."""
    if x is None or cfg.method == "rtn":
        return [quantize_groups(w, bits, cfg.group_size, cfg.symmetric) for w in ws]
    if cfg.method == "awq":
        return [search_clip(w, x, bits, cfg.group_size, cfg.symmetric) for w in ws]
    h = hessian(x) if h is None else h
    joined = gptq_quantize(np.concatenate(ws, axis=1), h, bits, cfg.group_size,
                           cfg.symmetric, act_order=cfg.act_order,
                           clip_ratios=CLIP_RATIOS if cfg.clip_search else (1.0,), name=name)
    return split_columns(joined, [w.shape[1] for w in ws])


def quantize_decoder(weights: dict[str, np.ndarray], shape: DecoderShape,
                     cfg: WeightOnlyConfig, inputs: dict[str, np.ndarray] | None = None
                     ) -> QuantizedDecoder:
    """Quantize every projection (and lm_head at `cfg.lm_head_bits`); with AWQ, fold the
    searched scales into the norms/projections of the returned float weights first.
    Projections cfg.int8_projections names (or picks) stay at INT8 (group
    cfg.int8_group_size)."""
    for p in PROJECTIONS:
        check_group(f"layers.0.{p}", weights[f"layers.0.{p}"].shape[0], cfg.group_size)
    if cfg.method != "rtn" and not inputs:
        raise CalibrationError(f"method {cfg.method} needs calibration activations; none "
                               "were given")
    w = {k: v.astype(np.float32).copy() for k, v in weights.items()}
    x = dict(inputs or {})
    alphas: dict[str, float] = {}
    if cfg.method in ("awq", "awq+gptq"):
        for i in range(shape.layers):
            alphas.update(_fold_layer(w, x, i, shape, cfg))
    wide = int8_keys(cfg, shape)
    for key in sorted(wide):
        check_group(f"{key} (int8_projections)", w[key].shape[0], cfg.int8_group_size)
    quantized: dict[str, QuantizedWeight] = {}
    for i in range(shape.layers):
        for source, members in BLOCKS:
            keys = [f"layers.{i}.{p}" for p in members]
            bits = 8 if keys[0] in wide else cfg.bits
            sub = cfg if bits == cfg.bits else replace(cfg, group_size=cfg.int8_group_size)
            src = f"layers.{i}.{source}"
            done = _quantize_block([w[k] for k in keys], x.get(src), x.get(src + HESSIAN),
                                   sub, bits, "+".join(keys))
            quantized.update(zip(keys, done, strict=True))
    if cfg.lm_head_bits:
        check_group("lm_head", w["lm_head"].shape[0], cfg.lm_head_group_size)
        quantized["lm_head"] = quantize_groups(w["lm_head"], cfg.lm_head_bits,
                                               cfg.lm_head_group_size, cfg.symmetric)
    return QuantizedDecoder(config=cfg, weights=quantized, float_weights=w, awq_alphas=alphas)


def int8_keys(cfg: WeightOnlyConfig, shape: DecoderShape) -> set[str]:
    """The projections kept at INT8: cfg.int8_projections entries are a projection
    ('down_proj': every layer's), a layer ('layers.0'; 'layers.-1' is the last) or one
    tensor ('layers.29.down_proj'). Projections that share an input go together (q/k/v,
    gate/up: the engine packs each into one MatMulNBits of one setting)."""
    if cfg.bits == 8:
        return set()
    keys = {f"layers.{i}.{p}" for i in range(shape.layers) for p in PROJECTIONS}
    chosen = set()
    for given in cfg.int8_projections:
        entry = _from_the_end(given, shape.layers)
        hit = {k for k in keys if k == entry or k.endswith(f".{entry}")
               or k.startswith(f"{entry}.")}
        if not hit:
            raise CalibrationError(f"int8_projections entry {given!r} names no projection; "
                                   f"expected one of {list(PROJECTIONS)}, 'layers.N' (0 <= N "
                                   f"< {shape.layers}, or -{shape.layers} <= N < 0 counting "
                                   "from the last) or 'layers.N.PROJECTION'")
        chosen |= hit
    for key in list(chosen):
        layer, name = key.rsplit(".", 1)
        chosen |= {f"{layer}.{p}" for _, members in BLOCKS if name in members for p in members}
    return chosen


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
    _divide_inputs(x, f"{L}.down_proj", s)
    s, alphas[f"{L}.gate_up"] = search_scale(
        x[f"{L}.gate_proj"], [w[f"{L}.gate_proj"], w[f"{L}.up_proj"]], *args)
    w[f"{L}.gate_proj"] *= s[:, None]
    w[f"{L}.up_proj"] *= s[:, None]
    w[f"{L}.post_norm"] /= s
    _divide_inputs(x, f"{L}.gate_proj", s)
    if shape.heads == shape.kv_heads:  # o's input channels map 1:1 onto v's outputs
        s, alphas[f"{L}.o_proj"] = search_scale(x[f"{L}.o_proj"], [w[f"{L}.o_proj"]], *args)
        w[f"{L}.o_proj"] *= s[:, None]
        w[f"{L}.v_proj"] /= s[None, :]
        _divide_inputs(x, f"{L}.o_proj", s)
    qkv = [w[f"{L}.{p}"] for p in ("q_proj", "k_proj", "v_proj")]
    s, alphas[f"{L}.qkv"] = search_scale(x[f"{L}.q_proj"], qkv, *args)
    for p in ("q_proj", "k_proj", "v_proj"):
        w[f"{L}.{p}"] *= s[:, None]
    w[f"{L}.input_norm"] /= s
    _divide_inputs(x, f"{L}.q_proj", s)
    return alphas


def _from_the_end(entry: str, layers: int) -> str:
    """'layers.-1...' -> 'layers.{layers - 1}...' (other entries unchanged)."""
    parts = entry.split(".")
    if len(parts) >= 2 and parts[0] == "layers" and parts[1].startswith("-") \
            and parts[1][1:].isdigit() and 0 < int(parts[1][1:]) <= layers:
        parts[1] = str(layers + int(parts[1]))
    return ".".join(parts)


def _divide_inputs(x: dict[str, np.ndarray], key: str, s: np.ndarray) -> None:
    """The captured rows (and Hessian) of an input divided channel-wise by AWQ's scale."""
    x[key] = x[key] / s
    if key + HESSIAN in x:
        x[key + HESSIAN] = x[key + HESSIAN] / s[:, None] / s[None, :]


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
    config = dict(settings["config"])
    config["int8_projections"] = tuple(config.get("int8_projections", ()))
    return QuantizedDecoder(config=WeightOnlyConfig(**config), weights=weights,
                            float_weights=norms, awq_alphas=settings["awq_alphas"])
