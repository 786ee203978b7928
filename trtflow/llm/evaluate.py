"""Judging a decoder engine: perplexity on the evaluation text, top-1 agreement with
the float model on the same windows, greedy-generation agreement over fixed prompts,
and prefill / decode tokens per second.

Perplexity is exp(mean next-token NLL) over non-overlapping windows (each scored from
its own start, past length 0), the same windows for every engine. Tokens per second
are medians over repeats after one untimed warm-up generation; prefill counts prompt
tokens (batch x prompt length) over the prefill call, decode counts the tokens after
the first over the decode loop.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trtflow.llm.generate import OrtDecoder

# fixed prompts for the greedy-agreement check (short, varied, English)
PROMPTS = (
    "The capital of France is",
    "In Python, a list comprehension",
    "The assert statement is used to",
    "Once upon a time, there was a",
    "To open a file for reading, you",
    "The three primary colours are",
    "A function that returns nothing returns",
    "The quick brown fox",
)

# logits [B, S, V] for token windows [B, S], scored from position 0 (no past)
LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class TextScore:
    perplexity: float
    tokens: int
    top1_agreement: float | None  # argmax equal to the reference's, per position


@dataclass
class Speed:
    batch: int
    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_ms_per_step: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def score_text(logits_fn: LogitsFn, windows: np.ndarray, batch: int = 2,
               reference_argmax: np.ndarray | None = None) -> tuple[TextScore, np.ndarray]:
    """Perplexity over the windows and each position's argmax (for agreement checks)."""
    nll, count, argmax = 0.0, 0, []
    for start in range(0, len(windows), batch):
        chunk = windows[start:start + batch]
        logits = logits_fn(chunk)[:, :-1].astype(np.float64)
        logp = _log_softmax(logits)
        target = chunk[:, 1:]
        nll -= float(np.take_along_axis(logp, target[..., None], -1).sum())
        count += target.size
        argmax.append(logits.argmax(-1))
    top1 = np.concatenate(argmax)
    agreement = None if reference_argmax is None else float((top1 == reference_argmax).mean())
    return TextScore(perplexity=float(np.exp(nll / count)), tokens=count,
                     top1_agreement=agreement), top1


def ort_logits(decoder: OrtDecoder) -> LogitsFn:
    def run(ids: np.ndarray) -> np.ndarray:
        batch, seq = ids.shape
        logits, _ = decoder.step(ids, np.ones((batch, seq), np.int64),
                                 np.tile(np.arange(seq), (batch, 1)), decoder.empty_past(batch))
        return np.asarray(logits.numpy())
    return run


def torch_logits(model: Any) -> LogitsFn:
    import torch

    def run(ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(ids)).logits.float().numpy()
    return run


def greedy_agreement(tokens: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Mean fraction of each reference continuation reproduced before the first
    differing token (1.0: every prompt's greedy continuation is identical)."""
    fractions = []
    for got, ref in zip(tokens, reference, strict=True):
        n = min(len(got), len(ref))
        differ = np.nonzero(got[:n] != ref[:n])[0]
        fractions.append((differ[0] if len(differ) else n) / len(ref))
    return float(np.mean(fractions))


def encode_prompts(tokenizer: Any, prompts: tuple[str, ...] = PROMPTS) -> list[np.ndarray]:
    return [np.asarray(tokenizer(p, add_special_tokens=False)["input_ids"], np.int64)
            for p in prompts]


def ort_continuations(decoder: OrtDecoder, prompts: list[np.ndarray], new_tokens: int
                      ) -> list[np.ndarray]:
    return [decoder.generate(p[None], new_tokens).tokens[0] for p in prompts]


def measure_ort(decoder: OrtDecoder, prompt: np.ndarray, new_tokens: int, repeats: int = 3
                ) -> Speed:
    """Prefill and decode speed of greedy generation from `prompt` [B, S]."""
    decoder.generate(prompt, 4)  # warm-up: first-run allocations and kernel selection
    prefill, decode = [], []
    for _ in range(repeats):
        g = decoder.generate(prompt, new_tokens)
        prefill.append(g.prefill_seconds)
        decode.append(g.decode_seconds)
    return _speed(prompt.shape, new_tokens, prefill, decode)


def measure_torch(model: Any, prompt: np.ndarray, new_tokens: int, repeats: int = 3) -> Speed:
    """PyTorch eager with transformers' `generate` (greedy, its own KV cache): prefill
    is one forward over the prompt; decode is generate(new) minus generate(1)."""
    import torch

    ids = torch.from_numpy(prompt)
    kwargs = {"do_sample": False, "pad_token_id": 0}

    def run(n: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        return time.perf_counter() - start

    run(4)
    prefill, decode = [], []
    for _ in range(repeats):
        first = run(1)
        prefill.append(first)
        decode.append(max(run(new_tokens) - first, 1e-9))
    return _speed(prompt.shape, new_tokens, prefill, decode)


def _speed(shape: tuple[int, ...], new_tokens: int, prefill: list[float],
           decode: list[float]) -> Speed:
    batch, seq = shape
    p, d = statistics.median(prefill), statistics.median(decode)
    return Speed(batch=batch, prompt_tokens=seq, new_tokens=new_tokens,
                 prefill_tokens_per_s=batch * seq / p,
                 decode_tokens_per_s=batch * (new_tokens - 1) / d,
                 decode_ms_per_step=1000 * d / (new_tokens - 1))
