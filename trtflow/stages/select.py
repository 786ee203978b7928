"""`precision: best`: build the candidate engines, time them on this host, keep the fastest
that passes the accuracy gate.

TensorRT's builder times each layer's kernels in every allowed precision and keeps
the fastest; trtflow does the same one level up. The candidates are every CPU
backend of the policy in FP32, BF16 (where the CPU has it) and INT8 from the one
calibration, plus INT8 with each class of layers INT8 tends to slow (depthwise
convolutions, MatMul/Gemm) kept in float, OpenVINO INT8 in its other schemes
(TensorRT's Q/DQ placement; dynamic per-token activations) and INT8 after
SmoothQuant at each alpha of the policy. Accuracy is judged on the *selection*
split (the calibration data, never the evaluation data validate reports on) as
agreement with the FP32 graph; latency in a race (``trtflow.latency_race``):
interleaved rounds at the smallest and largest validated batch sizes, compared round
by round, until the leader is ahead beyond the noise, the others are proven tied
(the simpler engine is kept: FP32 before BF16 before INT8), or ``select.budget_s``
runs out. An undecided race keeps the previous production choice where there is one
and says it is no decision (``selection.json``: ``decided: false``).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.backends import Calibration, build_engine, load_engine, registered, selectable
from trtflow.errors import BuildError, CalibrationError, ModelError
from trtflow.latency_race import RacePolicy, RaceVerdict, run_race
from trtflow.params import CalibrationConfig, SelectPolicy, Target

SELECTION_FILE = "selection.json"
CANDIDATES_DIR = "candidates"
_SIMPLICITY = {"fp32": 0, "bf16": 1, "int8": 2}  # the preference inside a proven tie


@dataclass
class Candidate:
    name: str
    target: Target
    float_ops: tuple[str, ...] = ()  # op classes kept float on top of the calibration's
    smooth_alpha: float | None = None  # SmoothQuant first, then re-calibrated
    agreement: float | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)
    noise_pct: dict[int, float] = field(default_factory=dict)
    passed: bool = False
    error: str | None = None

    def score(self) -> float:
        """Geometric mean of p50 over the batch sizes."""
        values = list(self.p50_ms.values())
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.inf

    def noise(self) -> float:
        values = list(self.noise_pct.values())
        return math.sqrt(sum(v * v for v in values) / len(values)) if values else 0.0

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.model_dump(mode="json", exclude={"select", "gates"})
        out["p50_ms"] = {str(k): v for k, v in self.p50_ms.items()}
        out["noise_pct"] = {str(k): v for k, v in self.noise_pct.items()}
        out["score_ms"] = self.score() if self.p50_ms else None
        return out


def has_bf16() -> bool:
    from trtflow.backends.openvino_backend import BF16_FLAGS
    from trtflow.latency import cpu_flags

    return bool(set(cpu_flags()) & set(BF16_FLAGS))


def float_op_classes(model_path: Path) -> dict[str, list[str]]:
    """Node labels per op class INT8 may slow: depthwise convs (group == channels > 1)
    and MatMul/Gemm. Empty classes are left out."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    classes: dict[str, list[str]] = {"depthwise_conv": [], "matmul": []}
    for node in model.graph.node:  # labelled as `skip` matches them: name, else first output
        label = node.name or (node.output[0] if node.output else node.op_type)
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group > 1:
                classes["depthwise_conv"].append(label)
        elif node.op_type in ("MatMul", "Gemm"):
            classes["matmul"].append(label)
    return {k: v for k, v in classes.items() if v}


def candidates(target: Target, model_path: Path | None, calibrated: bool) -> list[Candidate]:
    """The candidate engines of a `best` target; without `model_path`, the float-block
    variants (which need the graph) are left out."""
    policy = target.select
    out: list[Candidate] = []
    for backend in policy.backends if policy.backends is not None else selectable("cpu"):
        found = registered(backend, "cpu")
        if found is None:
            continue
        for precision in policy.precisions:
            if precision == "int8" and not calibrated:
                continue
            if precision not in found.precisions or (precision == "bf16" and not has_bf16()):
                continue
            concrete = target.but(backend=backend, device="cpu", precision=precision)
            out.append(Candidate(f"{backend}-{precision}", concrete))
            if precision == "int8" and model_path is not None:
                out += _int8_variants(policy, concrete, float_op_classes(model_path))
    if not out:
        raise BuildError("precision 'best': the select policy leaves no candidate on this CPU "
                         f"(backends {policy.backends or selectable('cpu')}, precisions "
                         f"{policy.precisions})")
    return out


def _int8_variants(policy: SelectPolicy, target: Target, classes: dict[str, list[str]]
                   ) -> list[Candidate]:
    """The int8 candidates besides the plain one: float blocks, OpenVINO's other schemes,
    SmoothQuant (where the graph has MatMul/Gemm weights to take the outliers)."""
    name = f"{target.backend}-int8"
    out = [Candidate(f"{name}-{cls}-float", target, (cls,))
           for cls in (classes if policy.float_blocks else ())]
    if target.backend == "openvino" and policy.int8_schemes:
        schemes = ["static-tensorrt"] + (["dynamic"] if "matmul" in classes else [])
        out += [Candidate(f"{name}-{scheme}", target.but(options={"int8_scheme": scheme}))
                for scheme in schemes]
    if "matmul" in classes:
        out += [Candidate(f"{name}-smoothquant{alpha:g}", target, smooth_alpha=alpha)
                for alpha in policy.smoothquant_alpha]
    return out


def race_order(pool: list[Candidate]) -> list[Candidate]:
    """Simplest first (FP32, BF16, INT8; fewer float blocks): the preference in a tie."""
    return sorted(pool, key=lambda c: (_SIMPLICITY[c.target.precision], len(c.float_ops)))


def race_batch_sizes(policy: SelectPolicy, validated: Sequence[int] | None) -> list[int]:
    """`select.batch_sizes`, else the smallest and largest validated, else 1 and 8."""
    if policy.batch_sizes:
        return sorted(set(policy.batch_sizes))
    if validated:
        return sorted({min(validated), max(validated)})
    return [1, 8]


def passed_candidates(pool: list[Candidate]) -> list[Candidate]:
    """The candidates that built and passed the accuracy gate; none is a clear error."""
    passed = [c for c in pool if c.passed]
    if not passed:
        raise BuildError("precision 'best': no candidate passed the accuracy gate on the "
                         "selection split: " + "; ".join(
                             f"{c.name}: {c.error or f'agreement {c.agreement:.4f}'}"
                             for c in pool))
    return passed


def decide(pool: list[Candidate], verdict: RaceVerdict) -> tuple[Candidate, str]:
    """The race's winner among the candidates that passed, and why (the race's reason,
    and the candidates that failed the gate or the build)."""
    passed = passed_candidates(pool)
    winner = next(c for c in passed if c.name == verdict.winner)
    why = (f"{winner.name}: {winner.score():.3f} ms (geometric mean p50, "
           f"±{winner.noise():.1f}%); {verdict.reason}")
    failed = [c.name for c in pool if not c.passed]
    if failed:
        why += f"; failed the accuracy gate or the build: {', '.join(failed)}"
    return winner, why


def select_engine(model_path: Path, target: Target, out_dir: Path,
                  calibration: Calibration | None, selection: dict[str, np.ndarray],
                  metric: str, min_agreement: float, threads: int | None,
                  calibration_config: CalibrationConfig | None = None,
                  previous: str | None = None,
                  validated_batch_sizes: Sequence[int] | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build and check every candidate, race those that pass; copy the winner's engine
    into `out_dir` (its manifest names the backend that really built it) and write
    selection.json. `previous`: the production choice's candidate name, kept when the
    race cannot decide."""
    from trtflow.backends.onnxruntime_backend import OrtEngine
    from trtflow.datasets.batch import Batch
    from trtflow.stages.validate import accuracy_and_agreement

    pool = candidates(target, model_path, calibration is not None)
    calibration_config = calibration_config or CalibrationConfig()
    reference = OrtEngine.from_model(model_path, threads, spinning=False).run(selection)
    work = out_dir / CANDIDATES_DIR
    engines: dict[str, Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    for cand in pool:
        cand_dir = work / cand.name
        cand_dir.mkdir(parents=True)
        try:
            calib, source = calibration, model_path
            if cand.float_ops and calibration is not None:
                calib = _with_float_ops(calibration, model_path, cand.float_ops, cand_dir)
            if cand.smooth_alpha is not None and calibration is not None:
                source, calib = smoothed_calibration(model_path, calibration_config,
                                                     cand.smooth_alpha, selection, metric,
                                                     threads, cand_dir)
            reports[cand.name] = build_engine(source, cand.target, cand_dir, calib)
            engine = load_engine(cand_dir, threads, spinning=False)
            cand.agreement = float(accuracy_and_agreement(
                engine.run, lambda _: reference, [Batch(selection)], metric).agreement)
            cand.passed = cand.agreement >= min_agreement
            if cand.passed:  # only the candidates that race stay loaded
                engines[cand.name] = engine
        except (BuildError, CalibrationError, ModelError) as exc:  # this candidate only
            cand.error = str(exc)[:300]
    from trtflow.datasets import tile_batch

    racing = race_order(passed_candidates(pool))
    sizes = race_batch_sizes(target.select, validated_batch_sizes)
    inputs = {bs: tile_batch(selection, bs) for bs in sizes}
    policy = target.select
    verdict = run_race(
        {c.name: {bs: functools.partial(engines[c.name].run, inputs[bs]) for bs in sizes}
         for c in racing},
        RacePolicy(budget_s=policy.budget_s, min_rounds=min(8, policy.rounds),
                   max_rounds=policy.rounds, margin_pct=policy.margin_pct),
        previous=previous, order=[c.name for c in racing], progress=progress)
    for cand in racing:
        cand.p50_ms = verdict.p50_ms.get(cand.name, {})
        cand.noise_pct = verdict.noise_pct.get(cand.name, {})
    winner, why = decide(pool, verdict)
    engines.clear()
    for item in (work / winner.name).iterdir():
        shutil.move(str(item), out_dir / item.name)
    shutil.rmtree(work)
    selection_report = {"winner": winner.name, "why": why, "metric": metric,
                        "min_agreement": min_agreement, "decided": verdict.decided,
                        "race": verdict.as_dict(), "candidates": [c.row() for c in pool]}
    (out_dir / SELECTION_FILE).write_text(json.dumps(selection_report, indent=2))
    return {**reports[winner.name], "selection": selection_report}


def _with_float_ops(calibration: Calibration, model_path: Path, classes: tuple[str, ...],
                    cand_dir: Path) -> Calibration:
    """A copy of the calibration whose float fallback also keeps `classes` in float."""
    extra = [label for cls in classes for label in float_op_classes(model_path)[cls]]
    return calibration.with_float_layers(extra, cand_dir / "calibration")


SMOOTH_FILE = "model.smooth.onnx"
SMOOTH_REPORT = "smoothquant.json"


def smoothed_calibration(model_path: Path, cfg: CalibrationConfig, alpha: float,
                         selection: dict[str, np.ndarray], metric: str, threads: int | None,
                         cand_dir: Path) -> tuple[Path, Calibration]:
    """SmoothQuant at `alpha`, then the calibrate stage's own `calibrate` on the smoothed
    graph over the selection split (the calibration data), with the params' calibration
    settings and `method: auto`: every layer int8 unless that misses the fallback budget,
    in which case its fallback keeps the most sensitive layers float. Returns the graph and
    a calibration that fit each other (the smoothed tensors have new amax)."""
    import onnx

    from trtflow.quant.smoothquant import channel_amax, smooth, smoothable
    from trtflow.stages.calibrate import calibrate

    workers = threads or 1
    model = onnx.load(str(model_path))
    smoothed, report = smooth(model, channel_amax(model, smoothable(model), [selection],
                                                  workers), alpha)
    onnx.save_model(smoothed, str(cand_dir / SMOOTH_FILE))
    samples = len(next(iter(selection.values())))
    settings = cfg.model_copy(update={"method": "auto", "sensitivity": False,
                                      "max_samples": None, "min_samples": 1,
                                      "selection_samples": samples})
    copy = cand_dir / "calibration"
    copy.mkdir()
    result = calibrate(cand_dir / SMOOTH_FILE, iter([selection]), settings, workers, copy,
                       metric=metric, selection=iter([selection]),
                       batches_again=lambda: iter([selection]))
    method = str(result["method"])
    scores = result.get("method_scores") or {}
    (cand_dir / SMOOTH_REPORT).write_text(json.dumps(
        {**report.as_dict(), "method": method,
         "agreement": (scores.get(method) or {}).get("agreement"),
         "float_layers": result.get("float_layers", [])}, indent=2))
    return cand_dir / SMOOTH_FILE, Calibration(copy)
