"""Accuracy tools: per-layer sensitivity, `method: auto`, and the float fallback.

All three judge a fake-quantized graph (Q/DQ placed the TensorRT way, run by ONNX
Runtime without fusion, so it computes exactly what the Q/DQ says) against the FP32
graph on the *selection* split, the calibration data, never on the evaluation split
that validate reports. Agreement is top-1 agreement for classifiers, mean cosine
similarity otherwise; every output is compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from trtflow.ort_session import ort_session
from trtflow.quant.qdq import insert_qdq

Feeds = list[dict[str, np.ndarray]]


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    # basic only: no QDQ fusion, so the graph computes its fake-quantized arithmetic
    return ort_session(model, "basic", threads)


def run_outputs(model: onnx.ModelProto, feeds: Feeds, threads: int) -> list[list[np.ndarray]]:
    sess = _session(model, threads)
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: f[n] for n in names}) for f in feeds]


def agreement(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
              metric: str) -> float:
    """Top-1 agreement or mean cosine over all outputs and batches (1.0 = identical)."""
    scores, weights = [], []
    for ref_batch, cand_batch in zip(reference, candidate, strict=True):
        for ref, cand in zip(ref_batch, cand_batch, strict=True):
            r = ref.reshape(len(ref), -1).astype(np.float64)
            c = cand.reshape(len(cand), -1).astype(np.float64)
            if metric == "top1":
                scores.append(float((r.argmax(1) == c.argmax(1)).mean()))
            else:
                norm = np.maximum(np.linalg.norm(r, axis=1) * np.linalg.norm(c, axis=1), 1e-12)
                scores.append(float(((r * c).sum(1) / norm).mean()))
            weights.append(len(r))
    return float(np.average(scores, weights=weights))


def relative_error(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]
                   ) -> float:
    """||candidate - reference|| / ||reference|| over every output element."""
    num = den = 0.0
    for ref_batch, cand_batch in zip(reference, candidate, strict=True):
        for ref, cand in zip(ref_batch, cand_batch, strict=True):
            num += float(np.sum((cand.astype(np.float64) - ref) ** 2))
            den += float(np.sum(ref.astype(np.float64) ** 2))
    return (num / max(den, 1e-30)) ** 0.5


@dataclass
class Evaluator:
    """Runs fake-quantized variants of one graph on the selection feeds."""

    model: onnx.ModelProto
    feeds: Feeds
    metric: str
    threads: int
    reference: list[list[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        self.reference = run_outputs(self.model, self.feeds, self.threads)

    def quantized_nodes(self, amax: Mapping[str, float]) -> list[str]:
        _, report = insert_qdq(self.model, amax, "tensorrt")
        return list(report["quantized_nodes"])

    def score(self, amax: Mapping[str, float], skip: Iterable[str] = ()) -> dict[str, float]:
        qdq, _ = insert_qdq(self.model, amax, "tensorrt", skip=frozenset(skip))
        outputs = run_outputs(qdq, self.feeds, self.threads)
        return {"agreement": agreement(self.reference, outputs, self.metric),
                "relative_error": relative_error(self.reference, outputs)}


def sensitivity(ev: Evaluator, amax: Mapping[str, float],
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Each layer quantized alone (all others float): output error, most sensitive first."""
    nodes = ev.quantized_nodes(amax)
    rows = []
    for i, node in enumerate(nodes):
        if progress:
            progress(f"sensitivity {i + 1}/{len(nodes)}")
        score = ev.score(amax, skip=[n for n in nodes if n != node])
        rows.append({"node": node, **score})
    return sorted(rows, key=lambda r: -r["relative_error"])


def choose_method(ev: Evaluator, amax_by_method: Mapping[str, Mapping[str, float]]
                  ) -> tuple[str, dict[str, dict[str, float]]]:
    """`method: auto`: the method with the best agreement, then the lowest output error."""
    scores = {m: ev.score(a) for m, a in amax_by_method.items()}
    best = max(scores, key=lambda m: (round(scores[m]["agreement"], 6),
                                      -scores[m]["relative_error"]))
    return best, scores


def fallback(ev: Evaluator, amax: Mapping[str, float], ranked: list[dict[str, Any]],
             min_agreement: float, max_layers: int) -> dict[str, Any]:
    """Keep the fewest, most sensitive layers in float until agreement reaches the budget."""
    skip: list[str] = []
    score = ev.score(amax)
    steps = [{"float_layers": 0, **score}]
    for row in ranked[:max_layers]:
        if score["agreement"] >= min_agreement:
            break
        skip.append(row["node"])
        score = ev.score(amax, skip)
        steps.append({"float_layers": len(skip), **score})
    return {"skip": skip, "met": score["agreement"] >= min_agreement,
            "min_agreement": min_agreement, "final": score, "steps": steps}
