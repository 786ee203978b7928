"""Validate the decoder engines of one params file side by side: perplexity and top-1
agreement on the evaluation text, greedy agreement with the FP32 engine over fixed
prompts, prefill/decode tokens per second per batch size, engine size, and the gates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import GateError
from trtflow.llm.compile import LlmCompiler, host
from trtflow.llm.config import LlmTarget
from trtflow.llm.evaluate import (
    encode_prompts,
    greedy_agreement,
    measure_ort,
    ort_continuations,
    ort_logits,
    score_text,
)
from trtflow.llm.generate import OrtDecoder, session_for
from trtflow.llm.quantize import token_windows


def speed_prompt(windows: np.ndarray, batch: int, tokens: int) -> np.ndarray:
    """`batch` prompts of `tokens` evaluation-text tokens (the same for every engine)."""
    flat = windows.reshape(-1)
    return flat[: batch * tokens].reshape(batch, tokens)


def validate(compiler: LlmCompiler, targets: dict[str, LlmTarget], measure_speed: bool = True,
             progress: Any = print) -> dict[str, Any]:
    """Build every target, score it against the FP32 engine; returns the report dict."""
    e = compiler.params.evaluation
    _, tokenizer = compiler.model()
    shape = compiler.shape()
    windows = token_windows(tokenizer, compiler.evaluation_text, e.window, e.windows)
    prompts = encode_prompts(tokenizer)
    reference = OrtDecoder(session_for(compiler.build(LlmTarget(precision="fp32")),
                                       e.threads), shape)
    ref_score, ref_argmax = score_text(ort_logits(reference), windows)
    ref_tokens = ort_continuations(reference, prompts, e.agreement_tokens)
    report: dict[str, Any] = {"host": host(), "model": compiler.params.model.name,
                              "shape": shape.as_dict(), "evaluation_tokens": ref_score.tokens,
                              "targets": {}}
    failures = []
    for name, target in targets.items():
        engine = compiler.build(target)
        decoder = reference if target.precision == "fp32" else \
            OrtDecoder(session_for(engine, e.threads), shape)
        score, _ = score_text(ort_logits(decoder), windows, reference_argmax=ref_argmax)
        tokens = ort_continuations(decoder, prompts, e.agreement_tokens)
        row: dict[str, Any] = {
            "precision": target.precision, "engine": str(engine),
            "engine_mb": round(Path(engine).stat().st_size / 2**20, 1),
            "perplexity": score.perplexity,
            "perplexity_increase": score.perplexity / ref_score.perplexity - 1,
            "top1_agreement": score.top1_agreement,
            "greedy_agreement": greedy_agreement(tokens, ref_tokens),
            "settings": target.model_dump(exclude={"gates"}),
        }
        if measure_speed:
            row["speed"] = [measure_ort(decoder, speed_prompt(windows, b, e.prompt_tokens),
                                        e.new_tokens, e.repeats).as_dict()
                            for b in e.batch_sizes]
        row["gates"] = gate_verdicts(row, target)
        failures += [f"{name}: {v['why']}" for v in row["gates"].values() if not v["passed"]]
        report["targets"][name] = row
        progress(f"{name}: perplexity {score.perplexity:.3f} "
                 f"({100 * row['perplexity_increase']:+.2f} %), greedy agreement "
                 f"{row['greedy_agreement']:.3f}")
    report["gate_failures"] = failures
    return report


def gate_verdicts(row: dict[str, Any], target: LlmTarget) -> dict[str, dict[str, Any]]:
    g = target.gates
    out: dict[str, dict[str, Any]] = {}
    if g.max_perplexity_increase is not None:
        ok = row["perplexity_increase"] <= g.max_perplexity_increase
        out["max_perplexity_increase"] = {"passed": ok, "why": (
            f"perplexity +{100 * row['perplexity_increase']:.2f} % vs FP32, limit "
            f"{100 * g.max_perplexity_increase:.1f} %")}
    if g.min_greedy_agreement is not None:
        ok = row["greedy_agreement"] >= g.min_greedy_agreement
        out["min_greedy_agreement"] = {"passed": ok, "why": (
            f"greedy agreement {row['greedy_agreement']:.3f}, floor {g.min_greedy_agreement}")}
    return out


def raise_on_gates(report: dict[str, Any]) -> None:
    if report["gate_failures"]:
        raise GateError("gates failed: " + "; ".join(report["gate_failures"]))
