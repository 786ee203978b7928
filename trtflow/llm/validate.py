"""Validate decoder engines: perplexity and top-1 agreement on the evaluation text,
greedy agreement with the FP32 engine over fixed prompts, prefill/decode tokens per
second per batch size, and the gates.

`validate_engine` is the decoder plan's validate stage (one engine, a
`ValidationReport`); `validate` judges every target of an LLM params file at once for
`bench/llm.py` (LlmCompiler's own stages, no MLflow).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trtflow.errors import CalibrationError, DataError, GateError
from trtflow.latency import LatencyStats, combined_noise_pct, median_interval
from trtflow.llm.config import LlmTarget
from trtflow.llm.evaluate import (
    LogitsFn,
    encode_prompts,
    greedy_agreement,
    measure_ort,
    ort_continuations,
    ort_logits,
    score_text,
)
from trtflow.llm.generate import OrtDecoder, session_for
from trtflow.llm.quantize import token_windows
from trtflow.params import DecoderValidation, Gates
from trtflow.stages.validation_report import (
    DecoderQuality,
    GateDecision,
    GateVerdict,
    Latency,
    Quality,
    TokenSpeed,
    ValidationReport,
)

if TYPE_CHECKING:
    from trtflow.llm.compile import LlmCompiler


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
    from trtflow.llm.compile import host

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


# --- the decoder plan's validate stage (trtflow/llm/stages.py) ----------------------


def validate_engine(engine: Path, reference: Path, shape: Any, tokenizer: Any, text: str,
                    text_file: Path, settings: DecoderValidation, batch_sizes: list[int],
                    gates: Gates, target: str, threads: int, out_dir: Path,
                    reference_is_engine: bool = False, progress: Any = print
                    ) -> ValidationReport:
    """Judge a decoder engine beside the FP32 KV-cache graph, in the shape every engine's
    validation has: `quality` (top-1 agreement and logits error vs FP32, per position of
    the evaluation windows), `latency` (decode steps, engine and FP32 side by side),
    `speedup_p50`, the gates, and `decoder` (perplexity, greedy agreement, tokens/s).
    Writes validation.json and latency.png into `out_dir`."""
    from trtflow.stages.validate import PLOT_FILE, check_gates, plot_latency

    try:
        windows = token_windows(tokenizer, text, settings.window, settings.windows)
    except CalibrationError as exc:
        raise DataError(f"{text_file}: {exc} (validate.decoder.window)") from None
    for batch in batch_sizes:
        if windows.size < batch * settings.prompt_tokens:
            raise DataError(f"{text_file}: {windows.size} tokens in the evaluation windows, "
                            f"fewer than the {batch} x {settings.prompt_tokens} prompt tokens "
                            f"of the batch-{batch} speed run; expected more text or fewer "
                            "validate.decoder.prompt_tokens")
    ref = OrtDecoder(session_for(reference, threads), shape)
    eng = ref if reference_is_engine else OrtDecoder(session_for(engine, threads), shape)
    progress(f"perplexity on {len(windows)} windows of {settings.window} tokens")
    scores = paired_scores(ort_logits(eng), ort_logits(ref), windows, reference_is_engine)
    prompts = encode_prompts(tokenizer)
    ref_tokens = ort_continuations(ref, prompts, settings.agreement_tokens)
    tokens = ref_tokens if reference_is_engine else \
        ort_continuations(eng, prompts, settings.agreement_tokens)
    engine_rows, ref_rows, speed, ref_speed = [], [], [], []
    for batch in batch_sizes:
        progress(f"tokens/s at batch {batch}: {settings.new_tokens} new tokens")
        prompt = speed_prompt(windows, batch, settings.prompt_tokens)
        row, tps = timed_generation(eng, prompt, settings.new_tokens, settings.repeats)
        base, base_tps = (row, tps) if reference_is_engine else \
            timed_generation(ref, prompt, settings.new_tokens, settings.repeats)
        engine_rows.append(row)
        ref_rows.append(base)
        speed.append(tps)
        ref_speed.append(base_tps)
    quality = Quality(samples=scores.tokens, metric="top1", max_abs_error=scores.max_abs_error,
                      mean_abs_error=scores.mean_abs_error, agreement=scores.top1_agreement,
                      labelled=False)
    decoder = DecoderQuality(tokens=scores.tokens, perplexity=scores.perplexity,
                             reference_perplexity=scores.reference_perplexity,
                             greedy_agreement=greedy_agreement(tokens, ref_tokens),
                             speed=speed, reference_speed=ref_speed)
    speedups = {r.batch_size: b.p50_ms / r.p50_ms for r, b in zip(engine_rows, ref_rows,
                                                                   strict=True)}
    first, first_base = engine_rows[0], ref_rows[0]
    verdict = check_gates(quality, speedups[first.batch_size], gates,
                          combined_noise_pct(first.noise_pct, first_base.noise_pct))
    verdict = GateVerdict(passed=False, decisions=[*verdict.decisions,
                                                   *decoder_gates(decoder, gates)])
    verdict = verdict.model_copy(update={"passed": all(d.passed for d in verdict.decisions)})
    report = ValidationReport(
        target=target, baseline="ONNX Runtime FP32 (the exported KV-cache graph), decode steps",
        quality=quality, latency=Latency(engine=engine_rows, baseline=ref_rows),
        speedup_p50=speedups, gates=verdict, threads=threads, decoder=decoder)
    report.write(out_dir)
    plot_latency(report, out_dir / PLOT_FILE)
    progress(f"perplexity {decoder.perplexity:.3f} ({100 * decoder.perplexity_increase:+.2f} "
             f"%), top-1 agreement {quality.agreement:.3f}, greedy agreement "
             f"{decoder.greedy_agreement:.3f}")
    return report


def decoder_gates(decoder: DecoderQuality, gates: Gates) -> list[GateDecision]:
    """The perplexity and greedy-agreement gates, where params set them."""
    out = []
    if gates.max_perplexity_increase is not None:
        out.append(GateDecision(gate="max_perplexity_increase",
                                measured=decoder.perplexity_increase,
                                allowed=gates.max_perplexity_increase,
                                passed=decoder.perplexity_increase
                                <= gates.max_perplexity_increase + 1e-12))
    if gates.min_greedy_agreement is not None:
        out.append(GateDecision(gate="min_greedy_agreement", measured=decoder.greedy_agreement,
                                allowed=gates.min_greedy_agreement,
                                passed=decoder.greedy_agreement >= gates.min_greedy_agreement))
    return out


@dataclass
class PairedScores:
    """An engine's and the FP32 engine's scores on the same windows."""

    tokens: int
    perplexity: float
    reference_perplexity: float
    top1_agreement: float
    max_abs_error: float
    mean_abs_error: float


def paired_scores(engine: LogitsFn, reference: LogitsFn, windows: np.ndarray,
                  same: bool = False, batch: int = 2) -> PairedScores:
    """Perplexity of both, the top-1 agreement and the logits error, one chunk of windows
    at a time (the logits of every window together would not fit in memory)."""
    nll = ref_nll = 0.0
    tokens = agree = 0
    max_abs, abs_sum, numel = 0.0, 0.0, 0
    for start in range(0, len(windows), batch):
        chunk = windows[start:start + batch]
        r = reference(chunk)
        e = r if same else engine(chunk)
        ref_score, ref_argmax = score_text(_given(r), chunk, len(chunk))
        score, argmax = score_text(_given(e), chunk, len(chunk))
        nll += math.log(score.perplexity) * score.tokens
        ref_nll += math.log(ref_score.perplexity) * ref_score.tokens
        tokens += score.tokens
        agree += int((argmax == ref_argmax).sum())
        diff = np.abs(e.astype(np.float64) - r)
        max_abs, abs_sum, numel = max(max_abs, float(diff.max())), abs_sum + float(diff.sum()), \
            numel + diff.size
    return PairedScores(tokens=tokens, perplexity=math.exp(nll / tokens),
                        reference_perplexity=math.exp(ref_nll / tokens),
                        top1_agreement=agree / tokens, max_abs_error=max_abs,
                        mean_abs_error=abs_sum / max(numel, 1))


def _given(logits: np.ndarray) -> LogitsFn:
    """A LogitsFn returning logits already computed for the chunk it is asked about."""
    return lambda _ids: logits


def timed_generation(decoder: OrtDecoder, prompt: np.ndarray, new_tokens: int, repeats: int
                     ) -> tuple[LatencyStats, TokenSpeed]:
    """Greedy generation from `prompt` [B, S] after one untimed warm-up: the decode steps'
    latency (every step of every repeat) and the median prefill/decode tokens per second."""
    decoder.generate(prompt, 4)
    steps: list[float] = []
    prefill, decode = [], []
    for _ in range(repeats):
        g = decoder.generate(prompt, new_tokens)
        steps += g.step_seconds
        prefill.append(g.prefill_seconds)
        decode.append(g.decode_seconds)
    batch, seq = prompt.shape
    ms = np.asarray(steps) * 1e3
    p50 = float(np.percentile(ms, 50))
    lo, hi = median_interval(ms)
    row = LatencyStats(batch, len(ms), p50, float(np.percentile(ms, 95)),
                       float(np.percentile(ms, 99)), float(ms.mean()),
                       float(batch / (ms.mean() / 1e3)), (lo, hi),
                       100.0 * (hi - lo) / 2.0 / p50 if p50 > 0 else 0.0)
    speed = TokenSpeed(batch_size=batch, prompt_tokens=seq, new_tokens=new_tokens,
                       prefill_tokens_per_s=batch * seq / statistics.median(prefill),
                       decode_tokens_per_s=batch * (new_tokens - 1) / statistics.median(decode))
    return row, speed
