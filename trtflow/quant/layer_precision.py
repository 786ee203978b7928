"""Per-layer precision: after the class-level INT8 pick, which layer groups to keep float.

`precision: best` picks among whole-graph candidates (INT8, INT8 with every depthwise conv
or every MatMul in float, ...). TensorRT chooses a precision per layer, and ModelOpt's
AutoQuantize searches per layer: it scores each layer's sensitivity to quantization and
its cost, and spends a budget greedily on the layers that buy the most accuracy per unit
of cost. This module does the same one measured step at a time:

1. ``layer_groups``: the quantized layers, cut into groups along the exporter's module
   paths (``/layer1/layer1.0/conv1/Conv`` belongs to ``/layer1/layer1.0``), at the depth
   that gives about ``target`` groups (blocks of a CNN, attention / FFN halves of a
   transformer layer); nameless layers are each their own group. Each group's cost is
   the multiply-accumulates float leaves to its layers (weight elements x output
   positions per sample): what keeping it float may cost in time.
2. ``rank_groups``: each group kept float alone on top of the current float set, in the
   fake-quantized graph (``accuracy.Evaluator``: one ONNX Runtime pass over the selection
   split per group); its gain is the drop of output error, its priority gain per cost
   (a cost floor of 1 % of the graph's MACs, so a free group is not infinitely good).
3. ``greedy_search``: the groups in that order, each tried on the *real* engine (built,
   its agreement measured on the selection split), one at a time:
   - ``gate`` mode (the engine misses the accuracy gate): a group is kept when agreement
     rises; the search stops as soon as the gate is met: the fewest float layers the
     ranking reaches it with;
   - ``free`` mode (the engine passes): the trial races the current engine
     (``trtflow.latency_race``, its noise interval); a group is kept when the trial is
     faster beyond the noise, or proven tied and more accurate: accuracy that costs no
     speed. A slower or undecided trial is dropped.
   The search stops at ``max_steps`` trials or when ``budget_s`` of wall time is spent.

The search itself is pure logic over the callbacks it is given (build-and-measure, race),
so it is tested on given numbers; ``trtflow.stages.select`` supplies real engines.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import onnx

from trtflow.quant.group_sensitivity import LayerScorer

COST_FLOOR = 0.01  # of the graph's MACs: the least cost a group is charged in the ranking
Mode = Literal["gate", "free"]


@dataclass(frozen=True)
class LayerGroup:
    name: str
    nodes: tuple[str, ...]
    macs: float  # per sample, of its layers


def _label(node: onnx.NodeProto) -> str:
    """How ``insert_qdq``'s ``skip`` names a node: its name, else its first output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def layer_costs(model: onnx.ModelProto) -> dict[str, float]:
    """MACs per sample of each Conv/ConvTranspose/Gemm/MatMul: weight elements x output
    positions (a conv's output pixels, a MatMul's rows per sample); 1 where unknown."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot read: costs from weights alone
        inferred = model
    graph = inferred.graph
    shapes: dict[str, list[int | None]] = {}
    for vi in (*graph.value_info, *graph.output, *graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    inits = {i.name: list(i.dims) for i in graph.initializer}
    out: dict[str, float] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        weight = next((inits[i] for i in node.input[1:2] if i in inits), None)
        if weight is None:  # activation x activation (attention scores): its second input
            weight = [d or 1 for d in shapes.get(node.input[1], [])[-2:]] or [1]
        shape = shapes.get(node.output[0], [])
        spatial = shape[2:] if node.op_type.startswith("Conv") else shape[1:-1]
        positions = math.prod(d or 1 for d in spatial) if spatial else 1
        out[_label(node)] = float(math.prod(weight) * positions)
    return out


def _path(label: str) -> list[str]:
    parts = [p for p in label.split("/") if p]
    return parts[:-1] if len(parts) > 1 else [label]


def layer_groups(model: onnx.ModelProto, quantized: Sequence[str], target: int = 16
                 ) -> list[LayerGroup]:
    """`quantized` (graph order) cut into runs of neighbours that share a module path
    prefix, at the prefix depth whose group count is nearest `target` (geometrically)."""
    if not quantized:
        return []
    costs = layer_costs(model)
    paths = {n: _path(n) for n in quantized}
    deepest = max(len(p) for p in paths.values())

    def runs(depth: int) -> list[tuple[str, list[str]]]:
        out: list[tuple[str, list[str]]] = []
        for node in quantized:
            key = "/" + "/".join(paths[node][:depth]) if "/" in node else node
            if out and out[-1][0] == key:
                out[-1][1].append(node)
            else:
                out.append((key, [node]))
        return out

    options = [runs(d) for d in range(1, deepest + 1)]
    best = min(options, key=lambda r: abs(math.log(len(r) / max(1, target))))
    seen: dict[str, int] = {}
    groups = []
    for key, nodes in best:
        seen[key] = seen.get(key, 0) + 1  # a path met again later in the graph: its own run
        name = key if seen[key] == 1 else f"{key}#{seen[key]}"
        groups.append(LayerGroup(name, tuple(nodes), sum(costs.get(n, 1.0) for n in nodes)))
    return groups


@dataclass
class GroupScore:
    group: str
    layers: int
    cost_fraction: float  # of the quantized layers' MACs
    relative_error: float  # of the fake-quantized graph with this group float too
    agreement: float
    gain: float  # base relative error minus this one
    priority: float  # gain / max(cost_fraction, COST_FLOOR)


def rank_groups(scorer: LayerScorer, amax: Mapping[str, float], groups: Sequence[LayerGroup],
                skip: Iterable[str] = (), progress: Callable[[str], None] | None = None
                ) -> tuple[dict[str, float], list[GroupScore]]:
    """The fake-quantized graph's score with `skip` float, and each group's score with it
    float too, the groups that gain ranked by gain per cost (best first)."""
    base_skip = list(skip)
    base = scorer.score(amax, base_skip)
    total = sum(g.macs for g in groups) or 1.0
    rows = []
    for i, group in enumerate(groups):
        if progress:
            progress(f"per-layer precision: scoring group {i + 1}/{len(groups)}")
        score = scorer.score(amax, base_skip + [n for n in group.nodes if n not in base_skip])
        gain = base["relative_error"] - score["relative_error"]
        cost = group.macs / total
        rows.append(GroupScore(group.name, len(group.nodes), cost, score["relative_error"],
                               score["agreement"], gain, gain / max(cost, COST_FLOOR)))
    ranked = sorted((r for r in rows if r.gain > 0), key=lambda r: -r.priority)
    return base, ranked


@dataclass
class Step:
    """One measured trial: a group added to the float set."""

    group: str
    float_layers: int  # in the trial, all groups kept so far included
    agreement: float | None
    kept: bool
    why: str
    race: dict[str, Any] | None = None  # the trial vs the current engine (free mode)
    seconds: float = 0.0


@dataclass
class SearchResult:
    mode: Mode
    start_agreement: float
    agreement: float  # of the engine kept at the end
    kept_groups: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)  # added to the calibration's own
    steps: list[Step] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0

    @property
    def met(self) -> bool | None:
        """gate mode: whether the gate was reached."""
        return None if self.mode == "free" else self.stopped == "gate met"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["met"] = self.met
        return out


@dataclass(frozen=True)
class RaceOutcome:
    """What a race of the trial against the current engine said (``RaceVerdict``)."""

    winner: Literal["current", "trial"]
    status: str  # decided / tied / undecided
    ratio: float  # trial time / current time (median paired ratio)
    report: dict[str, Any]


Measure = Callable[[list[str]], float | None]  # float layers -> agreement (None: no build)
Race = Callable[[float], RaceOutcome]  # the race's time budget -> outcome


def greedy_search(ranked: Sequence[GroupScore], groups: Mapping[str, LayerGroup],
                  start_agreement: float, min_agreement: float, measure: Measure,
                  race: Race | None, on_keep: Callable[[bool], None] | None = None,
                  budget_s: float = 120.0, max_steps: int = 8,
                  clock: Callable[[], float] = time.monotonic,
                  progress: Callable[[str], None] | None = None) -> SearchResult:
    """Try the `ranked` groups one at a time on the real engine (see the module doc).

    ``measure(float_layers)`` builds the engine with those layers float (on top of the
    calibration's) and returns its agreement; ``race(budget)`` races that trial against
    the current engine; ``on_keep(kept)`` tells the caller whether the trial replaced the
    current engine (so it can drop the one it no longer needs: one engine pair loaded at
    a time). Without ``race`` the free mode keeps nothing."""
    mode: Mode = "gate" if start_agreement < min_agreement else "free"
    result = SearchResult(mode, start_agreement, start_agreement)
    start = clock()
    current = start_agreement
    for row in ranked:
        elapsed = clock() - start
        if len(result.steps) >= max_steps:
            result.stopped = f"{max_steps} trials (the most a search makes)"
            break
        if elapsed >= budget_s:
            result.stopped = f"budget: {elapsed:.0f} of {budget_s:.0f} s spent"
            break
        if mode == "free" and race is None:
            result.stopped = "no race to judge speed"
            break
        t0 = clock()
        layers = result.float_layers + list(groups[row.group].nodes)
        if progress:
            progress(f"per-layer precision: trying {row.group} float ({len(layers)} layers)")
        agreement = measure(layers)
        step = Step(row.group, len(layers), agreement, False, "")
        if agreement is None:
            step.why = "the trial did not build"
        elif mode == "gate":
            step.kept = agreement > current
            step.why = (f"agreement {current:.4f} -> {agreement:.4f}"
                        + ("" if step.kept else ": no gain, dropped"))
        elif agreement < min_agreement:
            step.why = f"agreement {agreement:.4f} misses the gate {min_agreement:.4f}"
        elif race is not None:
            outcome = race(max(1.0, min(budget_s - (clock() - start), budget_s / 3)))
            step.race = outcome.report
            faster = outcome.winner == "trial" and outcome.status == "decided"
            tied_better = outcome.status == "tied" and agreement > current
            step.kept = faster or tied_better
            step.why = (f"{outcome.ratio:.2f}x the time ({outcome.status}), agreement "
                        f"{current:.4f} -> {agreement:.4f}: "
                        + ("faster beyond the noise" if faster else
                           "tied and more accurate" if tied_better else
                           "no faster and no more accurate at equal speed, dropped"))
        step.seconds = clock() - t0
        result.steps.append(step)
        if on_keep is not None:
            on_keep(step.kept)
        if step.kept:
            assert agreement is not None
            current = agreement
            result.kept_groups.append(row.group)
            result.float_layers = layers
            if mode == "gate" and current >= min_agreement:
                result.stopped = "gate met"
                break
    else:
        result.stopped = result.stopped or "every group that gains was tried"
    result.agreement = current
    result.seconds = clock() - start
    return result
