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

Then per-layer precision (``trtflow.quant.layer_precision``, where ``select.float_blocks``
is on and there is a calibration). Where an INT8 candidate missed the accuracy gate, the
most accurate of them gets layer groups kept float, ranked by the accuracy the
fake-quantized graph gains per MAC kept float, one at a time on the real engine, until it
meets the gate (the fewest the ranking reaches it with); it then races the winner (before
the race when no candidate passed at all). Where the winner is a class-level INT8 pick,
its groups are tried float one at a time, each trial raced against the current engine: a
group stays float only where it is faster beyond the noise, or more accurate and no slower
than ``select.margin_pct``. Each search takes at most ``select.budget_s`` plus one trial;
one trial engine is loaded beside the current one at a time. ``selection.json`` records
``class_level`` (the race's pick) and ``layer_precision`` (each search: the ranking and
every step, with its agreement, race and why it was kept or dropped).
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.backends import Calibration, build_engine, load_engine, registered, selectable
from trtflow.errors import BuildError, CalibrationError, ModelError
from trtflow.latency_race import RacePolicy, RaceVerdict, run_race
from trtflow.params import CalibrationConfig, SelectPolicy, Target
from trtflow.quant.layer_precision import RaceOutcome, SearchResult

SELECTION_FILE = "selection.json"
RANKING_SAMPLES = 4  # of the selection split, for the fake-quantized ranking of groups
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
    # per-layer precision: the layer groups (and their layers) kept float on top
    float_groups: tuple[str, ...] = ()
    float_layers: tuple[str, ...] = ()

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
    """Build and check every candidate, race those that pass, then try per-layer
    precision on the INT8 pick; copy the winner's engine into `out_dir` (its manifest
    names the backend that really built it) and write selection.json. `previous`: the
    production choice's candidate name, kept when the race cannot decide."""
    from trtflow.backends.onnxruntime_backend import OrtEngine

    pool = candidates(target, model_path, calibration is not None)
    calibration_config = calibration_config or CalibrationConfig()
    reference = OrtEngine.from_model(model_path, threads, spinning=False).run(selection)
    work = out_dir / CANDIDATES_DIR
    engines: dict[str, Any] = {}
    reports: dict[str, dict[str, Any]] = {}
    made: dict[str, tuple[Path, Calibration | None]] = {}  # the graph and calibration built
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
            made[cand.name] = (source, calib)
            reports[cand.name] = build_engine(source, cand.target, cand_dir, calib)
            engine = load_engine(cand_dir, threads, spinning=False)
            cand.agreement = _agreement(engine, selection, reference, metric)
            cand.passed = cand.agreement >= min_agreement
            if cand.passed:  # only the candidates that race stay loaded
                engines[cand.name] = engine
        except (BuildError, CalibrationError, ModelError) as exc:  # this candidate only
            cand.error = str(exc)[:300]
    from trtflow.datasets import tile_batch

    policy = target.select
    sizes = race_batch_sizes(policy, validated_batch_sizes)
    inputs = {bs: tile_batch(selection, bs) for bs in sizes}
    search = _LayerSearch(work, selection, reference, metric, min_agreement, threads, policy,
                          inputs, progress) if policy.float_blocks and calibration else None
    layer: tuple[Candidate, SearchResult] | None = None
    start = _gate_start(pool)
    if search is not None and start is not None and not any(c.passed for c in pool):
        layer = search.run(start, *made[start.name])  # no candidate passed: reach the gate
        if layer[0].passed:
            pool.append(layer[0])
            engines[layer[0].name] = load_engine(work / layer[0].name, threads,
                                                 spinning=False)
    try:
        racing = race_order(passed_candidates(pool))
    except BuildError as exc:  # say how far per-layer precision got, within its budget
        if search is None or layer is None:
            raise
        raise BuildError(f"{exc}; {search.summary(layer[1], layer[1].start)}") from None
    verdict = run_race(
        {c.name: {bs: functools.partial(engines[c.name].run, inputs[bs]) for bs in sizes}
         for c in racing},
        RacePolicy(budget_s=policy.budget_s, min_rounds=min(8, policy.rounds),
                   max_rounds=policy.rounds, margin_pct=policy.margin_pct),
        previous=_as_raced(previous, [c.name for c in racing]),
        order=[c.name for c in racing], progress=progress)
    for cand in racing:
        cand.p50_ms = verdict.p50_ms.get(cand.name, {})
        cand.noise_pct = verdict.noise_pct.get(cand.name, {})
    winner, why = decide(pool, verdict)
    engines.clear()  # per-layer precision loads its own, one pair at a time
    class_level, decided = winner.name, verdict.decided
    if search is not None and layer is not None:  # no candidate passed: the gate came first
        why += f" (first, {search.summary(layer[1], layer[1].start)})"
    elif search is not None:
        if start is not None:  # an int8 candidate missed the gate: reach it, race the winner
            layer = search.run(start, *made[start.name])
            why += f"; then {search.summary(layer[1], start.name)}"
            if layer[0].passed:
                pool.append(layer[0])
                won, race_why, settled = search.race_against(winner, layer[0])
                why += f"; {race_why}"
                winner, decided = won, decided and settled
        if winner.target.precision == "int8" and winner.name in made:  # a class-level pick
            layer = search.run(winner, *made[winner.name])  # accuracy or speed at no cost
            why += f"; then {search.summary(layer[1], winner.name)}"
            if layer[0] is not winner:
                pool.append(layer[0])
                winner = layer[0]
    reports.update(search.reports if search else {})
    for item in (work / winner.name).iterdir():
        shutil.move(str(item), out_dir / item.name)
    shutil.rmtree(work)
    selection_report = {"winner": winner.name, "why": why, "metric": metric,
                        "min_agreement": min_agreement, "decided": decided,
                        "race": verdict.as_dict(), "class_level": class_level,
                        "candidates": [c.row() for c in pool],
                        "layer_precision": search.searches if search else []}
    (out_dir / SELECTION_FILE).write_text(json.dumps(selection_report, indent=2))
    return {**reports[winner.name], "selection": selection_report}


def _as_raced(previous: str | None, names: list[str]) -> str | None:
    """The previous choice as the race knows it: a per-layer pick that is not in this race
    ("openvino-int8+float2") races as the candidate it started from."""
    if previous is None or previous in names:
        return previous
    return previous.split("+float")[0]


def _agreement(engine: Any, selection: dict[str, np.ndarray],
               reference: dict[str, np.ndarray], metric: str) -> float:
    """The engine's agreement with the FP32 graph on the selection split."""
    from trtflow.datasets.batch import Batch
    from trtflow.stages.validate import accuracy_and_agreement

    return float(accuracy_and_agreement(engine.run, lambda _: reference, [Batch(selection)],
                                        metric).agreement)


def _gate_start(pool: list[Candidate]) -> Candidate | None:
    """The INT8 candidate that built and missed the gate with the best agreement (the
    fewest float layers away from it), the simplest among equals; None if none did.
    Statically calibrated ones first: OpenVINO's dynamic scheme quantizes only MatMul/Gemm
    weights, so keeping a CNN's layers float changes nothing in it (mobilenet_v3_large:
    seven trials of the same engine)."""
    missed = [c for c in pool if c.target.precision == "int8" and not c.passed
              and c.agreement is not None]
    return max(missed, key=lambda c: (_options(c).get("int8_scheme") != "dynamic",
                                      c.agreement or 0.0, -len(c.float_ops)), default=None)


def _options(cand: Candidate) -> dict[str, Any]:
    options: dict[str, Any] = cand.target.options.model_dump()
    return options


class _LayerSearch:
    """Per-layer precision on real engines (``trtflow.quant.layer_precision``): builds the
    trials under `work`, measures them on the selection split, races them."""

    def __init__(self, work: Path, selection: dict[str, np.ndarray],
                 reference: dict[str, np.ndarray], metric: str, min_agreement: float,
                 threads: int | None, policy: SelectPolicy, inputs: dict[int, Any],
                 progress: Callable[[str], None] | None) -> None:
        self.work, self.selection, self.reference = work, selection, reference
        self.metric, self.min_agreement, self.threads = metric, min_agreement, threads
        self.policy, self.inputs, self.progress = policy, inputs, progress
        self.reports: dict[str, dict[str, Any]] = {}
        self.searches: list[dict[str, Any]] = []  # each search's ranking and steps, in order

    def _race(self, names: list[str], engines: list[Any], budget_s: float) -> RaceVerdict:
        return run_race(
            {n: {bs: functools.partial(e.run, x) for bs, x in self.inputs.items()}
             for n, e in zip(names, engines, strict=True)},
            RacePolicy(budget_s=budget_s, min_rounds=min(8, self.policy.rounds),
                       max_rounds=self.policy.rounds, margin_pct=self.policy.margin_pct),
            order=names)

    def run(self, start: Candidate, source: Path, calib: Calibration | None
            ) -> tuple[Candidate, SearchResult]:
        """The search from `start` (its graph and calibration): the candidate it ends with
        (`start` itself when no group was kept) and the search's record."""
        import onnx

        from trtflow.ort_session import default_threads
        from trtflow.quant.accuracy import Evaluator
        from trtflow.quant.layer_precision import greedy_search, layer_groups, rank_groups

        assert calib is not None and start.agreement is not None
        began = time.monotonic()
        model = onnx.load(str(source))
        amax, base = calib.amax(), calib.float_layers()
        few = {k: v[:RANKING_SAMPLES] for k, v in self.selection.items()}
        ev = Evaluator(model, [few], self.metric, self.threads or default_threads())
        groups = layer_groups(model, [n for n in ev.quantized_nodes(amax) if n not in base])
        fake, ranked = rank_groups(ev, amax, groups, base, self.progress)
        ranking = {"start": start.name, "groups": len(groups), "fake_quant": fake,
                   "ranked": [asdict(r) for r in ranked],
                   "ranking_seconds": time.monotonic() - began}
        by_name = {g.name: g for g in groups}
        loaded = {"current": None if start.agreement < self.min_agreement else
                  load_engine(self.work / start.name, self.threads, spinning=False)}
        names = {"current": start.name}
        trial_no = 0

        def measure(layers: list[str]) -> float | None:
            nonlocal trial_no
            trial_no += 1
            name = f"{start.name}+trial{trial_no}"
            trial_dir = self.work / name
            trial_dir.mkdir(parents=True)
            names["trial"] = name
            try:
                report = build_engine(source, start.target, trial_dir,
                                      calib.with_float_layers(layers, trial_dir / "calibration"))
                engine = load_engine(trial_dir, self.threads, spinning=False)
            except (BuildError, CalibrationError, ModelError):
                loaded["trial"] = None
                return None
            self.reports[name] = report
            loaded["trial"] = engine
            return _agreement(engine, self.selection, self.reference, self.metric)

        def race(budget_s: float) -> RaceOutcome:
            cur, trial = names["current"], names["trial"]
            verdict = self._race([cur, trial], [loaded["current"], loaded["trial"]], budget_s)
            ratio, high = _trial_ratio(verdict, cur, trial)
            return RaceOutcome("trial" if verdict.winner == trial else "current",
                               verdict.status, ratio, high, verdict.as_dict())

        def on_keep(kept: bool) -> None:
            trial = names.pop("trial")
            if kept:
                if names["current"] != start.name:
                    shutil.rmtree(self.work / names["current"], ignore_errors=True)
                names["current"], loaded["current"] = trial, loaded.pop("trial", None)
            else:
                loaded.pop("trial", None)
                shutil.rmtree(self.work / trial, ignore_errors=True)
                self.reports.pop(trial, None)

        def unchanged() -> bool:
            return _engine_digest(self.work / names["trial"]) == _engine_digest(
                self.work / names["current"])

        left = max(0.0, self.policy.budget_s - (time.monotonic() - began))
        result = greedy_search(ranked, by_name, start.name, start.agreement, self.min_agreement,
                               measure, race, on_keep, left, margin_pct=self.policy.margin_pct,
                               race_budget_s=self.policy.budget_s / 3, unchanged=unchanged,
                               progress=self.progress)
        loaded.clear()
        self.searches.append({**ranking, **result.as_dict()})
        if not result.kept_groups:
            self.searches[-1]["result"] = start.name
            return start, result
        name = f"{start.name}+float{len(result.kept_groups)}"
        (self.work / names["current"]).rename(self.work / name)
        self.reports[name] = self.reports.pop(names["current"])
        done = Candidate(name, start.target, start.float_ops, start.smooth_alpha,
                         agreement=result.agreement,
                         passed=result.agreement >= self.min_agreement,
                         float_groups=tuple(result.kept_groups),
                         float_layers=tuple(result.float_layers))
        done.p50_ms, done.noise_pct = _last_race_times(result, names["current"], name)
        self.searches[-1]["result"] = name
        return done, result

    def race_against(self, winner: Candidate, new: Candidate) -> tuple[Candidate, str, bool]:
        """`new` (which reached the gate) raced against the winner of the first race: the
        one kept, why, and whether the race decided (an undecided one keeps the winner
        and the selection is not a decision to cache)."""
        engines = [load_engine(self.work / c.name, self.threads, spinning=False)
                   for c in (winner, new)]
        verdict = self._race([winner.name, new.name], engines, self.policy.budget_s)
        engines.clear()
        for cand in (winner, new):
            cand.p50_ms = verdict.p50_ms.get(cand.name, cand.p50_ms)
            cand.noise_pct = verdict.noise_pct.get(cand.name, cand.noise_pct)
        won = new if verdict.winner == new.name and verdict.status == "decided" else winner
        return won, f"raced against {winner.name}: {verdict.reason}", verdict.decided

    def summary(self, result: SearchResult, start: str) -> str:
        """The search in a clause, for the selection's `why`."""
        if not result.kept_groups:
            return (f"per-layer precision kept no group of {start} float "
                    f"({len(result.steps)} tried; {result.stopped})")
        return (f"per-layer precision kept {len(result.kept_groups)} group(s) of "
                f"{start} float ({len(result.float_layers)} layers: "
                f"{', '.join(result.kept_groups)}), agreement {result.start_agreement:.4f} -> "
                f"{result.agreement:.4f} ({len(result.steps)} tried; {result.stopped})")



def _engine_digest(engine_dir: Path) -> str:
    """sha256 over the ONNX graphs an engine directory holds (the Q/DQ graph its backend
    compiled; its calibration copy left out): equal when two builds quantized the same
    layers. Compiled files are not compared: OpenVINO's IR and blob differ between two
    compiles of one graph (constant names). Without an ONNX graph: the directory's path."""
    import hashlib

    digest = hashlib.sha256()
    graphs = sorted(p for p in engine_dir.rglob("*.onnx")
                    if p.relative_to(engine_dir).parts[0] != "calibration")
    for path in graphs:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest() if graphs else str(engine_dir)


def _trial_ratio(verdict: RaceVerdict, current: str, trial: str) -> tuple[float, float]:
    """The trial's time over the current engine's (median paired ratio) and the upper end
    of its interval, from a race of the two."""
    for comp in verdict.comparisons:
        if comp.candidate == trial:  # the current engine leads
            return comp.ratio, comp.high
        if comp.candidate == current:  # the trial leads: invert current / trial
            return 1 / comp.ratio, 1 / comp.low if comp.low > 0 else math.inf
    pruned = verdict.pruned.get(trial) or verdict.pruned.get(current)
    if pruned is not None:
        low, high = pruned["interval"]
        if pruned["candidate"] == trial:
            return float(pruned["ratio_vs_leader"]), float(high)
        return 1 / float(pruned["ratio_vs_leader"]), 1 / low if low > 0 else math.inf
    return 1.0, math.inf


def _last_race_times(result: SearchResult, trial: str, name: str
                     ) -> tuple[dict[int, float], dict[int, float]]:
    """The kept trial's p50 and noise from the last race it ran (free mode), by batch size."""
    for step in reversed(result.steps):
        if step.kept and step.race is not None:
            p50 = step.race["p50_ms"].get(trial, {})
            noise = step.race["noise_pct"].get(trial, {})
            return ({int(b): v for b, v in p50.items()}, {int(b): v for b, v in noise.items()})
    return {}, {}


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
