"""The stage plan, declared once: five steps and the DAG they form for a set of targets.

    export -> cleanup -> [calibrate] -> build[target] -> validate[target]

Each `Step` below names its upstream stages, the params sections it reads and
the libraries whose versions shape its output; `trtflow.stage` derives the
cache key from that. `plan(params, targets)` orders the nodes; the Prefect flow
(`flows/compile.py`), `trtflow stage` for DVC (`trtflow/dvc_stage.py`), `store gc`
and the publish path all walk it, so the DAG is not written anywhere else.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtflow.context import Context, data_digest
from trtflow.errors import ParamsError
from trtflow.params import Params, Target
from trtflow.stage import StageResult, Step, Upstream
from trtflow.stages import calibrate as calibrate_stage
from trtflow.stages import export as export_stage
from trtflow.stages import validate as validate_stage

CLEAN_FILE = "model.clean.onnx"
CLEANUP_REPORT = "cleanup_report.json"
QUANTIZED = ("int8", "fp8")


def needs_calibration(target: Target) -> bool:
    """Quantized targets, and `best` on the CPU when its candidates include int8."""
    return target.precision in QUANTIZED or (
        target.precision == "best" and target.device == "cpu"
        and "int8" in target.select.precisions)


def metric(ctx: Context) -> str:
    """The agreement metric validate reports and calibration's accuracy search uses."""
    cfg = ctx.params.validate_
    if cfg.metric != "auto":
        return cfg.metric
    ev = ctx.params.data.evaluation
    return "top1" if ev is not None and ev.labels else "cosine"


# --- export ------------------------------------------------------------------

def _export(ctx: Context, target: str | None, out: Path) -> dict[str, Any]:
    sample = ctx.sample_inputs(ctx.params.export.samples)
    report = export_stage.export_model(ctx.model(), ctx.params.export, sample, out)
    _check_labels(ctx, out / export_stage.MODEL_FILE)
    return report


def _check_labels(ctx: Context, exported: Path) -> None:
    """Labels vs the classes of a model whose class count only its export shows (factory,
    `.pt2`, MLflow sources; preflight checks ONNX and builtin sources): raised here, the
    export artifact is never committed, so bad labels leave the store as it was."""
    import onnx

    from trtflow.datasets import open_data
    from trtflow.preflight import output_classes

    ev = ctx.params.data.evaluation
    if ev is None or not ev.labels:
        return
    classes = output_classes(onnx.load(str(exported), load_external_data=False))
    if classes is not None:  # npz labels and image class folders are checked on open
        open_data(ev, ctx.input_specs(), ctx.root, ctx.params.data.batch_size, classes)


EXPORT = Step(
    "export", export_stage.VERSION, _export,
    reads=("model", "export"),
    libraries=("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "transformers",
               "polygraphy"),  # the parity report (Polygraphy runner + Comparator)
    facts=lambda ctx, target: {"source": ctx.source_digest()},
)


# --- cleanup -----------------------------------------------------------------

def _cleanup(ctx: Context, target: str | None, out: Path, exported: StageResult
             ) -> dict[str, Any]:
    import onnx

    from trtflow.graph import cleanup as cleanup_mod
    from trtflow.graph.parity import compare, ort_run

    raw_path = exported.file(export_stage.MODEL_FILE)
    passes = tuple(cleanup_mod.PASSES[name] for name in ctx.params.cleanup.passes)
    cleaned, report = cleanup_mod.cleanup(onnx.load(str(raw_path)), passes)
    onnx.save_model(cleaned, str(out / CLEAN_FILE))
    sample = ctx.sample_inputs(ctx.params.export.samples)
    parity = compare(ort_run(raw_path, sample), ort_run(out / CLEAN_FILE, sample),
                     ctx.params.cleanup.atol, ctx.params.cleanup.rtol,
                     "cleanup parity (cleaned vs exported graph)")
    report["parity"] = parity.as_dict()
    (out / CLEANUP_REPORT).write_text(json.dumps(report, indent=2))
    return report


CLEANUP = Step(
    "cleanup", "cleanup-2", _cleanup,
    inputs=(Upstream("export"),),
    reads=("cleanup", "export.samples"),
    libraries=("onnx", "onnxslim", "onnxscript", "onnx-ir", "onnxruntime", "numpy",
               "polygraphy"),
)


# --- calibrate ---------------------------------------------------------------

def _calibrate_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    cal = ctx.params.data.calibration
    return {"metric": metric(ctx), "calibration_data": data_digest(ctx.root, cal) if cal else None}


def _calibrate(ctx: Context, target: str | None, out: Path, cleaned: StageResult
               ) -> dict[str, Any]:
    from trtflow.datasets import open_data
    from trtflow.ort_session import default_threads

    cal = ctx.params.data.calibration
    if cal is None:
        raise ParamsError("an int8 target needs data.calibration (an .npz of representative "
                          "inputs) in params")
    stream = open_data(cal, ctx.input_specs(), ctx.root, ctx.params.data.batch_size)
    total = min(len(stream), ctx.params.calibration.max_samples or len(stream))
    done = 0

    def progress(n: int) -> None:
        nonlocal done
        done += n
        if ctx.progress:
            ctx.progress(f"calibrate: {done}/{total} samples")

    return calibrate_stage.calibrate(
        cleaned.file(CLEAN_FILE), (b.inputs for b in stream), ctx.params.calibration,
        default_threads(), out, progress, metric=metric(ctx),
        selection=(b.inputs for b in stream), status=ctx.progress,
        batches_again=lambda: (b.inputs for b in stream))


CALIBRATE = Step(
    "calibrate", calibrate_stage.VERSION, _calibrate,
    inputs=(Upstream("cleanup"),),
    reads=("calibration", "data.calibration", "data.batch_size"),
    libraries=("onnx", "onnxruntime", "onnx-ir", "numpy"),
    facts=_calibrate_facts,
)


# --- build -------------------------------------------------------------------

def selects(target: Target) -> bool:
    """`precision: best` on the CPU: candidates are built and timed (trtflow.select)."""
    return target.precision == "best" and target.device == "cpu"


def _build_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    from trtflow.backends import backend_fingerprint

    spec = ctx.target(str(target))
    if not selects(spec):
        return backend_fingerprint(spec)
    from trtflow.latency import host_fingerprint
    from trtflow.select import candidates

    # the choice is a measurement on this host, of every candidate backend; SmoothQuant
    # candidates re-calibrate with the calibration settings
    facts = {"host": host_fingerprint(), "metric": metric(ctx), "candidates": {
        c.name: backend_fingerprint(c.target) for c in candidates(spec, None, True)}}
    if spec.select.smoothquant_alpha:
        facts["calibration"] = ctx.params.section_digest("calibration")
    return facts


def _build(ctx: Context, target: str | None, out: Path, cleaned: StageResult,
           *calibrated: StageResult) -> dict[str, Any]:
    from trtflow.backends import Calibration, build_engine

    calibration = Calibration(Path(calibrated[0].path)) if calibrated else None
    spec = ctx.target(str(target))
    if selects(spec):
        return _select(ctx, spec, cleaned.file(CLEAN_FILE), out, calibration)
    return build_engine(cleaned.file(CLEAN_FILE), spec, out, calibration)


def _select(ctx: Context, spec: Target, model: Path, out: Path,
            calibration: Any) -> dict[str, Any]:
    from trtflow.datasets import open_data
    from trtflow.select import select_engine

    cal = ctx.params.data.calibration
    if cal is not None:  # the selection split: calibration data, never the evaluation data
        selection = next(iter(open_data(cal, ctx.input_specs(), ctx.root,
                                        ctx.params.data.batch_size))).inputs
    else:
        selection = ctx.sample_inputs(ctx.params.data.batch_size)
    gates = spec.gates or ctx.params.validate_.gates
    if ctx.progress:
        ctx.progress("build: timing the candidate engines (precision best)")
    return select_engine(model, spec, out, calibration, selection, metric(ctx),
                         spec.select.min_agreement or gates.min_agreement, spec.threads,
                         ctx.params.calibration)


BUILD = Step(
    "build", "build-5", _build,  # 3: the Q/DQ graph TensorRT gets kept beside the engine;
    # 4: targets key their backend options under `options`; 5: SmoothQuant candidates
    # re-calibrate through the calibrate stage's own function
    inputs=(Upstream("cleanup"), Upstream("calibrate", when=needs_calibration)),
    reads=("targets.{target}",),
    libraries=("onnx",),  # the backend adds its own (backend_fingerprint)
    facts=_build_facts,
    per_target=True,
)


# --- validate ----------------------------------------------------------------

def _validate_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    from trtflow.backends import backend_fingerprint
    from trtflow.latency import host_fingerprint
    from trtflow.ort_session import default_threads

    ev = ctx.params.data.evaluation
    parts: dict[str, Any] = {
        "source": ctx.source_digest(),
        "target": target,
        "host": host_fingerprint(),  # latency is a measurement of this machine
        "threads": default_threads(),
        **backend_fingerprint(ctx.target(str(target))),
    }
    if ev is not None:
        parts["evaluation_data"] = data_digest(ctx.root, ev)
    if ctx.remeasure:
        parts["remeasure"] = time.time_ns()
    return parts


def _validate(ctx: Context, target: str | None, out: Path, engine_art: StageResult,
              cleaned: StageResult) -> dict[str, Any]:
    from trtflow.backends import load_engine
    from trtflow.datasets import open_data, tile_batch
    from trtflow.ort_session import default_threads
    from trtflow.reference import reference_runner

    name = str(target)
    threads = ctx.target(name).threads or default_threads()
    engine = load_engine(Path(engine_art.path), threads=threads)
    # an engine this host cannot run (a TensorRT-RTX plan: its stand-in runs on the CPU) is
    # compared with the CPU reference
    device = "cpu" if getattr(engine, "latency_note", None) else ctx.target(name).device
    reference, label = reference_runner(ctx, threads, device)
    ev = ctx.params.data.evaluation
    if ev is not None:
        num_classes = _num_classes(reference, ctx)
        batches: Any = open_data(ev, ctx.input_specs(), ctx.root, ctx.params.data.batch_size,
                                 num_classes if ev.labels else None)
    else:
        batches = [_SyntheticBatch(ctx.sample_inputs(ctx.params.data.batch_size))]
    pool = next(iter(batches)).inputs
    cfg = ctx.params.validate_
    gates = ctx.target(name).gates
    if gates is not None:
        cfg = cfg.model_copy(update={"gates": gates})
    from trtflow.backends.onnxruntime_backend import TENSORRT_QDQ_FILE

    return validate_stage.validate(engine, reference, label, batches,
                                   lambda bs: tile_batch(pool, bs), cfg, metric(ctx), name, out,
                                   qdq_model=Path(engine_art.path) / TENSORRT_QDQ_FILE).as_dict()


@dataclass
class _SyntheticBatch:
    inputs: dict[str, Any]
    labels: None = None


def _num_classes(reference: Any, ctx: Context) -> int:
    first = next(iter(reference(ctx.sample_inputs(1)).values()))
    return int(first.reshape(1, -1).shape[1])


VALIDATE = Step(
    "validate", validate_stage.VERSION, _validate,
    inputs=(Upstream("build"), Upstream("cleanup")),
    reads=("validate", "data.evaluation", "data.batch_size", "model", "targets.{target}"),
    libraries=("onnxruntime", "torch", "numpy"),
    facts=_validate_facts,
    per_target=True,
)

STEPS: dict[str, Step] = {s.name: s for s in (EXPORT, CLEANUP, CALIBRATE, BUILD, VALIDATE)}


# --- the plan ----------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """One stage run: a step, for a target if the step is per target, and its inputs."""

    step: Step
    target: str | None
    upstream: tuple[Node, ...]

    @property
    def label(self) -> str:
        return f"{self.step.name} [{self.target}]" if self.target else self.step.name


@dataclass(frozen=True)
class Plan:
    """The nodes of one compile in dependency order (a per-model node appears once)."""

    nodes: tuple[Node, ...]
    targets: tuple[str, ...]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def node(self, stage: str, target: str | None = None) -> Node:
        for node in self.nodes:
            if node.step.name == stage and (node.target == target or not node.step.per_target):
                return node
        raise ParamsError(f"stage '{stage}' is not part of this plan"
                          + (f" for target '{target}'" if target else ""))

    def up_to(self, stage: str, target: str | None = None) -> list[Node]:
        """The node and every node it depends on, in dependency order."""
        wanted: set[Node] = set()

        def visit(node: Node) -> None:
            if node not in wanted:
                wanted.add(node)
                for up in node.upstream:
                    visit(up)

        visit(self.node(stage, target))
        return [n for n in self.nodes if n in wanted]

    def users(self, node: Node) -> list[str]:
        """The targets whose validation depends on `node`."""
        return [t for t in self.targets if node in self.up_to("validate", t)]

    def shown_as(self, node: Node) -> str:
        """The target a progress line names: its own, or the ones a per-model stage that
        not every target needs (the calibration) serves."""
        if node.target:
            return node.target
        users = self.users(node)
        return ", ".join(users) if len(users) < len(self.targets) or any(
            u.when for n in self.nodes for u in n.step.inputs
            if u.stage == node.step.name) else ""

    def of_target(self, target: str) -> list[Node]:
        """The per-target nodes of `target`, with the calibration it uses: what one
        target's nested MLflow run logs."""
        return [n for n in self.up_to("validate", target)
                if n.target == target or n.step is CALIBRATE]


def plan(params: Params, targets: list[str]) -> Plan:
    """The DAG of compiling `targets` (names from params.targets), export first."""
    nodes: dict[tuple[str, str | None], Node] = {}

    def node_for(stage: str, target: str | None) -> Node:
        step = STEPS[stage]
        owner = target if step.per_target else None
        if (stage, owner) not in nodes:
            spec = params.targets[target] if target is not None else None
            ups = tuple(node_for(u.stage, target) for u in step.inputs if u.needed(spec))
            nodes[(stage, owner)] = Node(step, owner, ups)
        return nodes[(stage, owner)]

    for name in targets:
        if name not in params.targets:
            raise ParamsError(f"target '{name}' is not defined in params.targets "
                              f"(defined: {sorted(params.targets)})")
    node_for("cleanup", None)
    if not targets and any(needs_calibration(t) for t in params.targets.values()):
        node_for("calibrate", None)  # no target named: the calibration they would share
    for name in targets:
        node_for("validate", name)
    return Plan(tuple(nodes.values()), tuple(targets))


def run_up_to(ctx: Context, stage: str, target: str | None = None) -> list[StageResult]:
    """Run (or find cached) every stage up to `stage`, without an orchestrator: what
    `trtflow stage` (DVC) and `trtflow publish` use. Same plan, same keys as the flow."""
    from trtflow.stage import run_step

    if stage not in STEPS:
        raise ParamsError(f"unknown stage '{stage}'; expected one of {', '.join(STEPS)}")
    if STEPS[stage].per_target and not target:
        raise ParamsError(f"stage '{stage}' needs --target (one of "
                          f"{sorted(ctx.params.targets)})")
    if target and not STEPS[stage].per_target:
        if stage == "calibrate" and not needs_calibration(ctx.target(target)):
            raise ParamsError(f"stage 'calibrate' serves quantized targets; target '{target}' "
                              f"has precision '{ctx.target(target).precision}'")
    wanted = plan(ctx.params, [target] if target else [])
    nodes = wanted.up_to(stage, target)
    check_data(ctx, nodes)
    from trtflow.context import preflight

    if target and needs_calibration(ctx.target(target)) and ctx.params.data.calibration is None:
        raise ParamsError(f"target '{target}': an int8 target needs data.calibration (an .npz "
                          "of representative inputs) in params")
    preflight(ctx)  # bad inputs fail before any stage stores an artifact
    done: dict[Node, StageResult] = {}
    for node in nodes:
        done[node] = run_step(node.step, ctx, node.target, [done[u] for u in node.upstream])
    return list(done.values())


def check_data(ctx: Context, nodes: list[Node]) -> None:
    """Fail before any work when a data file a node's key reads is missing (a fresh clone
    has only the `.dvc` pointers): the error names the file and says `dvc pull`."""
    data = ctx.params.data
    stages = {n.step.name for n in nodes}
    for source in (data.calibration if "calibrate" in stages else None,
                   data.evaluation if "validate" in stages else None):
        if source is not None:
            data_digest(ctx.root, source)
