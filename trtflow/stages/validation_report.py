"""The validation report, typed: what `validate` measured and decided for one engine.

This module owns the report's shape. `trtflow.stages.validate` builds it; the
registry, MLflow logging, the release manifest, DVC metrics, the CLI, the flows and
bench read its attributes. On disk it is `validation.json` (and the `report` of the
validate artifact's meta), in the form trtflow has written since its first version:
reports from before the noise interval, the chance floor and the Q/DQ graph's block
(validate-1) read with those fields at their defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trtflow.errors import StoreError
from trtflow.latency import LatencyStats

if TYPE_CHECKING:
    from trtflow.stage import StageResult

REPORT_FILE = "validation.json"
Metric = Literal["top1", "cosine"]
GateName = Literal["min_accuracy", "max_accuracy_drop", "min_agreement", "min_speedup",
                   "max_perplexity_increase", "min_greedy_agreement"]  # the last two: decoders


def _absent(value: object) -> bool:
    return value is None


class _Report(BaseModel):
    # NaN (an engine that outputs NaN) stays NaN on disk, as json.dumps wrote it
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class Quality(_Report):
    """Accuracy and agreement of an engine vs the FP32 reference on the evaluation data."""

    samples: int
    metric: Metric
    max_abs_error: float
    mean_abs_error: float
    agreement: float = Field(description="top-1 agreement, or mean cosine, vs the reference")
    labelled: bool = Field(description="every evaluated sample had a label")
    # labelled data only (absent from the JSON otherwise)
    accuracy: float | None = Field(default=None, exclude_if=_absent)
    reference_accuracy: float | None = Field(default=None, exclude_if=_absent)
    majority_fraction: float | None = Field(
        default=None, exclude_if=_absent, description="share of the most common label: the "
        "chance level the default accuracy floor starts from")

    @property
    def accuracy_drop(self) -> float | None:
        """Reference accuracy minus the engine's (labelled data only)."""
        if self.accuracy is None or self.reference_accuracy is None:
            return None
        return self.reference_accuracy - self.accuracy

    def figures(self) -> dict[str, float]:
        """The numbers a tracker logs: accuracy (where labelled), agreement, errors."""
        named = {"accuracy": self.accuracy, "reference_accuracy": self.reference_accuracy,
                 "agreement": self.agreement, "max_abs_error": self.max_abs_error,
                 "mean_abs_error": self.mean_abs_error}
        return {k: v for k, v in named.items() if v is not None}


class QdqModelQuality(Quality):
    """The Q/DQ graph TensorRT is handed, run by ONNX Runtime without fusions: reported
    beside the engine's quality, not gated."""

    file: str


class GateDecision(_Report):
    """One gate: what was measured, what was allowed, and whether it passed."""

    gate: GateName
    measured: float | None  # None: a speed-up that was not measured
    allowed: float
    passed: bool
    noise_pct: float | None = Field(default=None, exclude_if=_absent)  # min_speedup
    reference_accuracy: float | None = Field(default=None, exclude_if=_absent)  # min_accuracy
    note: str | None = Field(default=None, exclude_if=_absent)  # e.g. "too noisy to compare"

    def describe(self) -> str:
        measured = "not measured" if self.measured is None else f"measured {self.measured:.4g}"
        return f"{self.gate}: {measured}, allowed {self.allowed:.4g}"


class GateVerdict(_Report):
    passed: bool
    decisions: list[GateDecision]

    @property
    def failed(self) -> list[GateDecision]:
        return [d for d in self.decisions if not d.passed]


class Latency(_Report):
    """p50/p95/p99, throughput and the p50 noise interval per batch size, for the engine
    and the baseline measured side by side in the same process."""

    engine: list[LatencyStats]
    baseline: list[LatencyStats]
    # validate-3 on: the time budget of the whole measurement and what it took
    budget_s: float | None = Field(default=None, exclude_if=_absent)
    seconds: float | None = Field(default=None, exclude_if=_absent)

    def rows(self, which: Literal["engine", "baseline"]) -> list[LatencyStats]:
        return self.engine if which == "engine" else self.baseline

    def pairs(self) -> list[tuple[LatencyStats, LatencyStats]]:
        """(engine, baseline) per batch size, in the order measured."""
        return list(zip(self.engine, self.baseline, strict=True))

    def engine_p50_ms(self) -> dict[int, float]:
        return {r.batch_size: r.p50_ms for r in self.engine}


class TokenSpeed(_Report):
    """Greedy generation speed at one batch size (medians over the timed repeats)."""

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


class DecoderQuality(_Report):
    """A decoder engine's text figures (trtflow/llm/stages.py): perplexity on the
    evaluation text beside the FP32 engine's, greedy agreement with the FP32 engine's
    continuations, and tokens per second of both."""

    tokens: int = Field(description="evaluation tokens scored (the same for every engine)")
    perplexity: float
    reference_perplexity: float = Field(description="the FP32 engine's, same windows")
    greedy_agreement: float = Field(description="mean fraction of the FP32 engine's greedy "
                                    "continuation reproduced before the first difference")
    speed: list[TokenSpeed]
    reference_speed: list[TokenSpeed]

    @property
    def perplexity_increase(self) -> float:
        """Relative to the FP32 engine (0.03 = +3 %)."""
        return self.perplexity / self.reference_perplexity - 1.0

    def figures(self) -> dict[str, float]:
        """The numbers a tracker logs."""
        named = {"perplexity": self.perplexity, "reference_perplexity": self.reference_perplexity,
                 "perplexity_increase": self.perplexity_increase,
                 "greedy_agreement": self.greedy_agreement}
        for label, rows in (("", self.speed), ("reference.", self.reference_speed)):
            for r in rows:
                named[f"{label}prefill_tokens_per_s.bs{r.batch_size}"] = r.prefill_tokens_per_s
                named[f"{label}decode_tokens_per_s.bs{r.batch_size}"] = r.decode_tokens_per_s
        return named


class ValidationReport(_Report):
    """One engine's validation: quality, latency, speed-up, gates (and the Q/DQ graph's
    quality for quantized targets)."""

    target: str
    baseline: str = Field(description="what the engine was compared with: PyTorch eager "
                          "FP32, or ONNX Runtime FP32 for an ONNX-only source")
    quality: Quality
    latency: Latency
    speedup_p50: dict[int, float] = Field(description="baseline p50 / engine p50, per batch "
                                          "size")
    speedup_noise_pct: dict[int, float] = Field(
        default_factory=dict, exclude_if=lambda v: not v,
        description="the speed-up's noise per batch size: the engine's "
        "and the baseline's p50 intervals combined (± %); absent before validate-3")
    gates: GateVerdict
    threads: int
    qdq_model: QdqModelQuality | None = Field(default=None, exclude_if=_absent)
    # an engine this host cannot run (a TensorRT-RTX plan without its GPU): what computed
    # `quality` instead, and why `latency` is empty
    engine_ran: str | None = Field(default=None, exclude_if=_absent)
    latency_note: str | None = Field(default=None, exclude_if=_absent)
    # a decoder: perplexity, greedy agreement, tokens/s (`quality` holds the top-1
    # agreement and logits error vs the FP32 engine; `latency`, the decode steps)
    decoder: DecoderQuality | None = Field(default=None, exclude_if=_absent)

    @property
    def passed(self) -> bool:
        return self.gates.passed

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (validation.json, the stage's stored report)."""
        return self.model_dump(mode="json")

    def write(self, out_dir: Path) -> Path:
        path = out_dir / REPORT_FILE
        path.write_text(json.dumps(self.as_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "validation report") -> ValidationReport:
        """Parse a stored report; a malformed one is named with the field at fault."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise StoreError(f"{source}: field '{where}': {first['msg']} (expected trtflow's "
                             "validation report; the artifact may be damaged or from "
                             "another tool)") from None

    @classmethod
    def read(cls, path: Path) -> ValidationReport:
        """`validation.json`, given the file or the validate artifact's directory."""
        path = path / REPORT_FILE if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: cannot read the validation report ({exc})") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def of(cls, result: StageResult) -> ValidationReport:
        """The report a validate stage result carries (from the run or the store)."""
        if result.stage != "validate":
            raise ValueError(f"a '{result.stage}' result has no validation report")
        return cls.from_dict(result.report, f"validate artifact {result.path}")
