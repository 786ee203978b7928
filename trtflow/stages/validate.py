"""validate: accuracy and agreement vs the FP32 reference, latency side by side, gates.

The reference is PyTorch eager (FP32) when the source is a torch model, or ONNX
Runtime FP32 on the source graph when the source is ONNX-only; the report says
which. Latency of the engine and of that baseline is measured in the same
process, in alternating blocks, with the same thread count and batch, within
`validate.budget_s` for every batch size together (a big model gets fewer calls, not
minutes); each p50 carries its noise interval, each speed-up the two combined. The
reference's outputs on the evaluation data are computed once and reused for the Q/DQ
graph's quality.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from trtflow.errors import GateError
from trtflow.latency import LatencyStats, combined_noise_pct, measure_side_by_side
from trtflow.params import Gates, ValidateConfig
from trtflow.preflight import check_rows as check_rows
from trtflow.preflight import static_batch as static_batch
from trtflow.stages.validation_report import (
    GateDecision,
    GateVerdict,
    Latency,
    Metric,
    QdqModelQuality,
    Quality,
    ValidationReport,
)

if TYPE_CHECKING:
    from trtflow.backends import Engine

VERSION = "validate-3"  # 3: latency within validate.budget_s, engine/baseline interleaved
PLOT_FILE = "latency.png"

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
Progress = Callable[[str], None]


def at_batch(runner: Runner, batch: int, who: str) -> Runner:
    """`runner` for a model with a static batch: the inputs in chunks of exactly `batch`
    rows (the last one padded by repeating its rows), the outputs joined and the padding
    dropped."""
    from trtflow.datasets import tile_batch

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(inputs.values())))
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, rows, batch):
            chunk = {k: v[start:start + batch] for k, v in inputs.items()}
            out = runner(tile_batch(chunk, batch))
            check_rows(out, batch, who)
            parts.append({k: v[:min(batch, rows - start)] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return run


class RecordedReference:
    """The reference runner, its outputs kept in call order on the first pass over the
    evaluation data and replayed on the next (the Q/DQ graph's quality), so the FP32
    model runs over the data once. A replay checks the batch has the rows recorded;
    outputs beyond `limit_bytes` in all are not kept (the reference runs again)."""

    def __init__(self, reference: Runner, record: bool = True,
                 limit_bytes: int = 512 << 20) -> None:
        self.reference, self.record, self.limit_bytes = reference, record, limit_bytes
        self.outputs: list[dict[str, np.ndarray]] = []
        self.kept_bytes = 0
        self.replaying: int | None = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.replaying is None:
            out = self.reference(inputs)
            size = sum(v.nbytes for v in out.values())
            if self.record and self.kept_bytes + size <= self.limit_bytes:
                self.outputs.append(out)
                self.kept_bytes += size
            else:
                self.record = False  # replay stops where the record does
            return out
        rows = len(next(iter(inputs.values())))
        i, self.replaying = self.replaying, self.replaying + 1
        if i < len(self.outputs) and len(next(iter(self.outputs[i].values()))) == rows:
            return self.outputs[i]
        return self.reference(inputs)  # the data changed between passes: compute it

    def replay(self) -> RecordedReference:
        self.replaying = 0
        return self


def accuracy_and_agreement(engine: Runner, reference: Runner, batches: Iterable[Any],
                           metric: str, progress: Progress | None = None,
                           total: int | None = None) -> Quality:
    """Stream the evaluation data through both; top-1 or cosine agreement, errors, accuracy.
    Each batch's outputs must keep its rows, and the labels match them (`check_rows`).
    `progress` gets the samples done so far (of `total`, with the time left) per batch."""
    from trtflow.progress_estimate import time_left

    n = correct_eng = correct_ref = agree = labelled_n = 0
    label_counts: Counter[int] = Counter()
    cos_sum, max_abs, abs_sum, numel = 0.0, 0.0, 0.0, 0
    start = time.monotonic()
    for batch in batches:
        if progress is not None and n:
            elapsed = time.monotonic() - start
            left = time_left(elapsed, n, total) if total else ""
            progress(f"{n}/{total} samples, {left}" if left else
                     f"{n} samples, {elapsed:.0f} s")
        eng, ref = engine(batch.inputs), reference(batch.inputs)
        rows = len(next(iter(batch.inputs.values())))
        check_rows(eng, rows, "the engine's", batch.labels)
        check_rows(ref, rows, "the reference's", batch.labels)
        first = next(iter(ref))
        for name, r in ref.items():
            diff = np.abs(eng[name].astype(np.float64) - r)
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            abs_sum += float(diff.sum())
            numel += diff.size
        e, r = eng[first].reshape(len(eng[first]), -1), ref[first].reshape(len(ref[first]), -1)
        n += len(r)
        if metric == "top1":
            agree += int((e.argmax(1) == r.argmax(1)).sum())
            if batch.labels is not None:
                labelled_n += len(batch.labels)
                label_counts.update(np.asarray(batch.labels).tolist())
                correct_eng += int((e.argmax(1) == batch.labels).sum())
                correct_ref += int((r.argmax(1) == batch.labels).sum())
        else:
            cos = (e * r).sum(1) / np.maximum(np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1),
                                              1e-12)
            cos_sum += float(cos.sum())
    labelled = labelled_n == n > 0
    return Quality(
        samples=n, metric=cast(Metric, metric), max_abs_error=max_abs,
        mean_abs_error=abs_sum / max(numel, 1),
        agreement=(agree / n) if metric == "top1" else cos_sum / n, labelled=labelled,
        accuracy=correct_eng / n if labelled else None,
        reference_accuracy=correct_ref / n if labelled else None,
        majority_fraction=max(label_counts.values()) / n if labelled else None)  # chance floor


def check_gates(quality: Quality, speedup: float | None, gates: Gates,
                speedup_noise_pct: float = 0.0) -> GateVerdict:
    """Decide each gate on given numbers; the report keeps measured vs allowed.

    A speed-up short of `min_speedup` by less than its noise (the engine's and the
    baseline's p50 intervals combined) is no evidence of a slow engine: the gate is
    not failed, and its decision says "too noisy to compare (±x %)".
    """
    decisions = []
    floor = accuracy_floor(quality, gates)
    if floor is not None and quality.accuracy is not None:
        decisions.append(GateDecision(gate="min_accuracy", measured=quality.accuracy,
                                      allowed=floor, passed=quality.accuracy >= floor,
                                      reference_accuracy=quality.reference_accuracy))
    drop = quality.accuracy_drop
    if quality.labelled and drop is not None:
        decisions.append(GateDecision(gate="max_accuracy_drop", measured=drop,
                                      allowed=gates.max_accuracy_drop,
                                      passed=drop <= gates.max_accuracy_drop + 1e-12))
    decisions.append(GateDecision(gate="min_agreement", measured=quality.agreement,
                                  allowed=gates.min_agreement,
                                  passed=quality.agreement >= gates.min_agreement))
    if gates.min_speedup is not None:
        passed = speedup is not None and speedup >= gates.min_speedup
        note = None
        if speedup is not None and not passed and \
                speedup * (1 + speedup_noise_pct / 100) >= gates.min_speedup:
            passed, note = True, f"too noisy to compare (±{speedup_noise_pct:.1f} %)"
        decisions.append(GateDecision(gate="min_speedup", measured=speedup,
                                      allowed=gates.min_speedup, noise_pct=speedup_noise_pct,
                                      passed=passed, note=note))
    return GateVerdict(passed=all(d.passed for d in decisions), decisions=decisions)


CHANCE_MARGIN = 0.2  # the default floor: this fraction of the way from chance to 1


def accuracy_floor(quality: Quality, gates: Gates) -> float | None:
    """The absolute accuracy floor (labelled data only): `gates.min_accuracy`, or by
    default the accuracy of always answering the most common label plus CHANCE_MARGIN
    of the way to 1. Relative gates compare the engine with its FP32 reference; an
    untrained model passes them by agreeing with itself, never this one."""
    if not quality.labelled:
        return None
    if gates.min_accuracy is not None:
        return gates.min_accuracy or None  # 0 turns the gate off
    chance = quality.majority_fraction or 0.0
    return chance + CHANCE_MARGIN * (1 - chance)


def gate_error(report: ValidationReport, target: str) -> GateError:
    reasons = "; ".join(d.describe() for d in report.gates.failed)
    return GateError(f"target '{target}' failed validation: {reasons}. The engine is not "
                     "promoted or registered.")


def latency_side_by_side(engine: Runner, baseline: Runner, make_inputs: Callable[[int], dict],
                         cfg: ValidateConfig, progress: Progress | None = None) -> Latency:
    """Engine and baseline at each batch size, in alternating blocks, within
    `cfg.budget_s` for all of it: each batch size gets an equal share (capped by
    `max_seconds` per series), each series `iterations` calls at most."""
    from trtflow.progress_estimate import StepEstimate

    engine_rows: list[LatencyStats] = []
    baseline_rows: list[LatencyStats] = []
    share = cfg.budget_s / len(cfg.batch_sizes)
    estimate = StepEstimate(progress, "validate latency", total=len(cfg.batch_sizes))
    start = time.monotonic()
    for bs in cfg.batch_sizes:
        inputs = make_inputs(bs)
        estimate.step(f"batch {bs}, engine and baseline side by side")
        eng, base = measure_side_by_side(
            [functools.partial(engine, inputs), functools.partial(baseline, inputs)], bs,
            cfg.warmup, cfg.iterations, min(share, 2 * cfg.max_seconds))
        engine_rows.append(eng)
        baseline_rows.append(base)
        if progress is not None:
            progress(f"validate latency batch {bs}: engine p50 {eng.p50_ms:.3g} ms "
                     f"±{eng.noise_pct:.1f} % ({eng.iterations} calls), baseline "
                     f"{base.p50_ms:.3g} ms ±{base.noise_pct:.1f} % ({base.iterations}); "
                     f"speed-up {base.p50_ms / eng.p50_ms:.2f}x "
                     f"±{combined_noise_pct(eng.noise_pct, base.noise_pct):.1f} %")
    return Latency(engine=engine_rows, baseline=baseline_rows, budget_s=cfg.budget_s,
                   seconds=time.monotonic() - start)


def sample_count(batches: Any) -> int | None:
    """How many samples the evaluation data holds, where it says without running a model:
    the datasets' streams count samples, a list of batches its rows."""
    if isinstance(batches, list | tuple):
        return sum(len(next(iter(b.inputs.values()))) for b in batches)
    try:
        return len(batches)
    except TypeError:
        return None


def qdq_model_quality(qdq_path: Path, reference: Runner, eval_batches: Any, metric: str,
                      progress: Progress | None = None,
                      total: int | None = None) -> QdqModelQuality:
    """Accuracy/agreement of the Q/DQ graph TensorRT is handed, run by ONNX Runtime at its
    basic level (no QDQ fusion: it computes what the Q/DQ says), as TensorRT's stand-in."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(qdq_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, session.run(outputs, {n: inputs[n] for n in names}),
                        strict=True))

    quality = accuracy_and_agreement(run, reference, eval_batches, metric, progress, total)
    return QdqModelQuality(file=qdq_path.name, **quality.model_dump())


def validate(engine: Engine, reference: Runner, baseline_label: str, eval_batches: Any,
             make_inputs: Callable[[int], dict], cfg: ValidateConfig, metric: str,
             target: str, out_dir: Path, qdq_model: Path | None = None,
             batch: int | None = None, progress: Progress | None = None) -> ValidationReport:
    """Write validation.json and latency.png; the caller raises `gate_error` if not passed.

    `qdq_model`: the Q/DQ graph TensorRT gets for a quantized target; its accuracy is
    reported beside the engine's (`qdq_model`), not gated. `batch`: the model's static
    batch size (`static_batch`): evaluation runs in chunks of it, latency only at it.
    `progress`: a line per phase (quality, the Q/DQ graph, each batch size's latency,
    with the time left)."""
    import torch  # inference mode for a PyTorch reference; its thread count is reported

    def say(phase: str) -> Progress | None:
        return None if progress is None else (lambda msg: progress(f"{phase}: {msg}"))

    recorded = RecordedReference(reference, record=qdq_model is not None
                                 and qdq_model.is_file())
    reference = recorded
    engine_run: Runner = engine.run
    if batch is not None:
        engine_run = at_batch(engine.run, batch, "the engine's")
        reference = at_batch(reference, batch, "the reference's")
        cfg = cfg.model_copy(update={"batch_sizes": [batch]})
    if progress is not None:
        progress(f"validate: {target} engine vs {baseline_label} on the evaluation data")
    total = sample_count(eval_batches) if progress is not None else None
    quality = accuracy_and_agreement(engine_run, reference, eval_batches, metric,
                                     say("validate quality"), total)
    qdq_quality = None
    if qdq_model is not None and qdq_model.is_file():
        if progress is not None:
            progress(f"validate: the Q/DQ graph {qdq_model.name} (ONNX Runtime, unfused)")
        recorded.replay()
        qdq_quality = qdq_model_quality(qdq_model, reference, eval_batches, metric,
                                        say("validate Q/DQ graph"), total)
    # an engine that cannot run here (`latency_note`) is timed never: its stand-in's
    # latency would be another engine's number
    latency_note = getattr(engine, "latency_note", None)
    latency = Latency(engine=[], baseline=[])
    if latency_note is None:
        with torch.inference_mode():
            latency = latency_side_by_side(engine.run, recorded.reference, make_inputs, cfg,
                                           progress)
    speedups = {row.batch_size: base.p50_ms / row.p50_ms for row, base in latency.pairs()}
    noise = {row.batch_size: combined_noise_pct(row.noise_pct, base.noise_pct)
             for row, base in latency.pairs()}
    first = latency.pairs()[:1]
    report = ValidationReport(
        target=target, baseline=baseline_label, quality=quality, latency=latency,
        speedup_p50=speedups, speedup_noise_pct=noise,
        gates=check_gates(quality, speedups.get(first[0][0].batch_size) if first else None,
                          cfg.gates, noise[first[0][0].batch_size] if first else 0.0),
        threads=torch.get_num_threads(),
        engine_ran=getattr(engine, "ran", None), latency_note=latency_note,
        qdq_model=qdq_quality)
    report.write(out_dir)
    plot_latency(report, out_dir / PLOT_FILE)
    return report


def plot_latency(report: ValidationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if not report.latency.engine:  # an engine that cannot run here: say so, plot nothing
        ax.text(0.5, 0.5, f"{report.target}: latency {report.latency_note or 'not measured'}",
                ha="center", va="center", wrap=True)
        ax.set_axis_off()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return
    for name, rows in ((f"{report.target} engine", report.latency.engine),
                       (report.baseline, report.latency.baseline)):
        xs = [r.batch_size for r in rows]
        ax.plot(xs, [r.p50_ms for r in rows], marker="o", label=f"{name} p50")
        ax.fill_between(xs, [r.p50_ms for r in rows], [r.p99_ms for r in rows], alpha=0.2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency (ms, p50; band to p99)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
