"""The build report, typed where every backend agrees: which backend built the engine,
its file and size, its ops, and (for `precision: best`) the selection among candidates.

Backends add fields of their own (session settings, FP8 notes, the TensorRT Q/DQ
graph's file); those stay in the report as extra fields. MLflow logging, the CLI,
`trtflow report` and bench read the shared fields here as attributes. The JSON form
(the build artifact's stored report, `selection.json`) is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from trtflow.errors import StoreError

if TYPE_CHECKING:
    from trtflow.stage import StageResult


class _Open(BaseModel):
    # fields a backend or the selection adds later are kept, not refused
    model_config = ConfigDict(extra="allow", frozen=True)


class CandidateRow(_Open):
    """One candidate engine of `precision: best`: its accuracy on the selection split and
    its p50 per batch size (alternating rounds), or why it dropped out."""

    name: str
    target: dict[str, Any]
    float_ops: list[str] = []
    smooth_alpha: float | None = None
    agreement: float | None = None
    p50_ms: dict[int, float] = {}
    noise_pct: dict[int, float] = {}
    passed: bool = False
    error: str | None = None
    score_ms: float | None = None
    float_groups: list[str] = []  # per-layer precision: the layer groups kept float
    float_layers: list[str] = []  # ... and their layers (quant/layer_precision.py)


class SelectionReport(_Open):
    """Which candidate won, and why (the decision, in words)."""

    winner: str
    why: str
    metric: str
    min_agreement: float
    candidates: list[CandidateRow]
    decided: bool = True  # False: the race ended inside the noise (kept previous or simplest)
    class_level: str | None = None  # the race's pick before the per-layer search
    layer_precision: list[dict[str, Any]] = []  # each per-layer search: ranking, steps, why


class BuildReport(_Open):
    backend: str = ""  # the backend that really built the engine (its manifest's name)
    engine_file: str | None = None
    engine_bytes: int
    engine_ops: dict[str, int] | None = None  # op type -> count, where the backend knows
    selection: SelectionReport | None = None  # precision best only

    @property
    def engine(self) -> str:
        """The engine in a few words: the winning candidate, else the backend."""
        return self.selection.winner if self.selection else self.backend

    @classmethod
    def from_dict(cls, data: Any, source: str = "build report") -> BuildReport:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise StoreError(f"{source}: field '{where}': {first['msg']} (expected trtflow's "
                             "build report)") from None

    @classmethod
    def of(cls, result: StageResult) -> BuildReport:
        if result.stage != "build":
            raise ValueError(f"a '{result.stage}' result has no build report")
        return cls.from_dict(result.report, f"build artifact {result.path}")
