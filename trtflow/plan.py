"""The stage plan, declared once: five steps and the DAG they form for a set of targets.

    export -> cleanup -> [calibrate] -> build[target] -> validate[target]

A model source kind may declare a plan of its own (`SourceKindBase.plan`): the decoder
kind's steps (trtflow/llm/stages.py) form export -> calibrate[target] -> build[target] ->
validate[target] under the same stage names, so the flow, the store, MLflow logging and
the registry treat its results as any others. `steps_for(params)` picks the steps.

Each `Step` below names its upstream stages, the params sections it reads and
the libraries whose versions shape its output; `trtflow.stage` derives the
cache key from that. The stages' work lives in `trtflow/stages/` (each module's `run`
is its step's function); this module holds the declarations and the runner.
`plan(params, targets)` orders the nodes; the Prefect flow
(`flows/compile.py`), `trtflow stage` for DVC (`trtflow/dvc_stage.py`), `store gc`
and the publish path all walk it, so the DAG is not written anywhere else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtflow.context import Context, data_digest
from trtflow.errors import ParamsError
from trtflow.params import Params
from trtflow.preflight import QUANTIZED as QUANTIZED
from trtflow.preflight import needs_calibration as needs_calibration
from trtflow.stage import StageResult, Step, Upstream
from trtflow.stages import build as build_stage
from trtflow.stages import calibrate as calibrate_stage
from trtflow.stages import cleanup as cleanup_stage
from trtflow.stages import export as export_stage
from trtflow.stages import validate as validate_stage
from trtflow.stages.build import selects as selects
from trtflow.stages.cleanup import CLEAN_FILE as CLEAN_FILE
from trtflow.stages.cleanup import CLEANUP_REPORT as CLEANUP_REPORT

EXPORT = Step(
    "export", export_stage.VERSION, export_stage.run,
    reads=("model", "export"),
    libraries=("torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "transformers",
               "polygraphy"),  # the parity report (Polygraphy runner + Comparator)
    facts=lambda ctx, target: {"source": ctx.source_digest()},
)

CLEANUP = Step(
    "cleanup", cleanup_stage.VERSION, cleanup_stage.run,
    inputs=(Upstream("export"),),
    reads=("cleanup", "export.samples"),
    libraries=("onnx", "onnxslim", "onnxscript", "onnx-ir", "onnxruntime", "numpy",
               "polygraphy"),
)

CALIBRATE = Step(
    "calibrate", calibrate_stage.VERSION, calibrate_stage.run,
    inputs=(Upstream("cleanup"),),
    reads=("calibration", "data.calibration", "data.batch_size"),
    libraries=("onnx", "onnxruntime", "onnx-ir", "numpy"),
    facts=calibrate_stage.facts,
)

BUILD = Step(
    "build", build_stage.VERSION, build_stage.run,
    inputs=(Upstream("cleanup"), Upstream("calibrate", when=needs_calibration)),
    reads=("targets.{target}",),
    libraries=("onnx",),  # the backend adds its own (backend_fingerprint)
    facts=build_stage.facts,
    per_target=True,
    reusable=build_stage.reusable,
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
                                   lambda bs: tile_batch(pool, bs), cfg, ctx.metric(), name, out,
                                   qdq_model=Path(engine_art.path) / TENSORRT_QDQ_FILE,
                                   batch=validate_stage.static_batch(ctx.input_specs()),
                                   progress=ctx.progress).as_dict()


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


def steps_for(params: Params) -> dict[str, Step]:
    """The steps of this model's plan: its source kind's own, else the five above."""
    import importlib

    from trtflow.sources import source_kind

    declared = getattr(source_kind(params.model.source), "plan", None)
    if declared is None:
        return STEPS
    module, _, attr = str(declared).partition(":")
    steps: dict[str, Step] = getattr(importlib.import_module(module), attr)
    return steps


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
    model: tuple[Node, ...] = ()  # per-model stages every target uses (export, cleanup)

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
                if n.target == target or n.step.name == "calibrate"]

    def model_nodes(self) -> list[Node]:
        """The per-model stages the compile run itself logs (export, cleanup)."""
        return list(self.model)


def plan(params: Params, targets: list[str]) -> Plan:
    """The DAG of compiling `targets` (names from params.targets), export first."""
    nodes: dict[tuple[str, str | None], Node] = {}
    steps = steps_for(params)

    def node_for(stage: str, target: str | None) -> Node:
        step = steps[stage]
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
    conditional = {u.stage for s in steps.values() for u in s.inputs if u.when}
    model = [node_for(s.name, None) for s in steps.values()
             if not s.per_target and s.name not in conditional]
    calibrate = steps.get("calibrate")
    if not targets and calibrate is not None and not calibrate.per_target and any(
            needs_calibration(t) for t in params.targets.values()):
        node_for("calibrate", None)  # no target named: the calibration they would share
    for name in targets:
        node_for("validate", name)
    return Plan(tuple(nodes.values()), tuple(targets), tuple(model))


def run_up_to(ctx: Context, stage: str, target: str | None = None) -> list[StageResult]:
    """Run (or find cached) every stage up to `stage`, without an orchestrator: what
    `trtflow stage` (DVC) and `trtflow publish` use. Same plan, same keys as the flow."""
    from trtflow.stage import run_step

    steps = steps_for(ctx.params)
    if stage not in steps:
        raise ParamsError(f"unknown stage '{stage}'; expected one of {', '.join(steps)}")
    if steps[stage].per_target and not target:
        raise ParamsError(f"stage '{stage}' needs --target (one of "
                          f"{sorted(ctx.params.targets)})")
    if target and not steps[stage].per_target:
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
    calibrates = any(n.step.name == "calibrate" for n in nodes)
    preflight(ctx, ([target] if target else None) if calibrates else [])  # bad inputs fail
    # before any stage stores an artifact
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
