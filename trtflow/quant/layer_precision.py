"""Per-layer precision: after the class-level INT8 pick, which layer groups to keep float.

`precision: best` picks among whole-graph candidates (INT8, INT8 with every depthwise conv
or every MatMul in float, ...). TensorRT chooses a precision per layer, and ModelOpt's
AutoQuantize searches per layer: it scores each layer's sensitivity to quantization and
its cost, and spends a budget greedily on the layers that buy the most accuracy per unit
of cost. This module does the same one measured step at a time:

1. ``layer_groups``: the quantized layers, cut into blocks where the data flows through
   one tensor again (``block_cuts``: after a residual sum, a squeeze-excite block, an
   attention or FFN half; exporters' node names carry no module path to group by). Each
   group's cost is the multiply-accumulates float leaves to its layers (weight elements x
   output positions per sample): what keeping it float may cost in time.
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
     faster beyond the noise and the margin (the upper end of its time ratio's interval
     below ``1 / (1 + margin_pct)``), or more accurate and, at the race's confidence, no
     slower than ``margin_pct``: accuracy that costs no speed. Anything else is dropped,
     and a trial whose engine is byte for byte the current one is not raced.
   The search stops when ``budget_s`` of wall time is spent, in free mode also after
   ``max_steps`` trials.

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


_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_METADATA = ("Shape", "Size")  # their outputs describe a tensor, they do not carry it


def block_cuts(model: onnx.ModelProto) -> list[int]:
    """Indices of the nodes after which a single tensor carries everything the rest of the
    graph computes from the data: the end of each residual block, squeeze-excite block,
    attention or FFN half (where the residual stream is one tensor again). Tensors that
    no Conv/Gemm/MatMul output flows into (an attention mask's preprocessing, shapes)
    are side inputs and do not count, nor do tensors made by Shape/Size."""
    graph = model.graph
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    for out in graph.output:
        consumers[out.name] = consumers.get(out.name, 0) + 1
    # a graph input read by a Conv/Gemm/MatMul itself is data (an image); one read only
    # through other ops first (token ids, an attention mask) is not, until a layer reads it
    heavy = {i.name for i in graph.input
             if any(n.op_type in _COMPUTE and i.name in n.input for n in graph.node)}
    live = {name: consumers[name] for name in heavy if consumers.get(name)}
    cuts = []
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name in live:
                live[name] -= 1
                if live[name] == 0:
                    del live[name]
        carries = node.op_type not in _METADATA and (
            node.op_type in _COMPUTE or any(n in heavy for n in node.input))
        if carries:
            for out in node.output:
                heavy.add(out)
                if consumers.get(out):
                    live[out] = consumers[out]
        if len(live) == 1 and carries:
            cuts.append(i)
    return cuts


def layer_groups(model: onnx.ModelProto, quantized: Sequence[str], target: int = 16
                 ) -> list[LayerGroup]:
    """`quantized` (labels, graph order) cut into blocks at ``block_cuts``, neighbouring
    blocks merged (the smallest pair first) down to `target` groups; where the cuts give
    fewer than ``target / 2`` (a graph with long skip connections), runs of
    ``len(quantized) / target`` neighbours instead."""
    if not quantized:
        return []
    costs = layer_costs(model)
    wanted = set(quantized)
    cuts = set(block_cuts(model))
    blocks: list[list[str]] = [[]]
    for i, node in enumerate(model.graph.node):
        if _label(node) in wanted:
            blocks[-1].append(_label(node))
        if i in cuts and blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    placed = {n for b in blocks for n in b}
    if len(blocks) < min(len(quantized), target) / 2 or placed != wanted:
        size = max(1, math.ceil(len(quantized) / target))
        blocks = [list(quantized[i:i + size]) for i in range(0, len(quantized), size)]
    while len(blocks) > max(1, target):  # a chain cuts after every layer: merge neighbours,
        i = min(range(len(blocks) - 1),  # the smallest pair first
                key=lambda k: (len(blocks[k]) + len(blocks[k + 1]), k))
        blocks[i:i + 2] = [blocks[i] + blocks[i + 1]]
    return [LayerGroup(b[0] if len(b) == 1 else f"{b[0]}..{b[-1]}", tuple(b),
                       sum(costs.get(n, 1.0) for n in b)) for b in blocks]


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
    start: str
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
    high: float  # the upper end of that ratio's interval (the race's confidence)
    report: dict[str, Any]


Measure = Callable[[list[str]], float | None]  # float layers -> agreement (None: no build)
Race = Callable[[float], RaceOutcome]  # the race's time budget -> outcome


def greedy_search(ranked: Sequence[GroupScore], groups: Mapping[str, LayerGroup],
                  start: str, start_agreement: float, min_agreement: float, measure: Measure,
                  race: Race | None, on_keep: Callable[[bool], None] | None = None,
                  budget_s: float = 120.0, max_steps: int = 8, margin_pct: float = 3.0,
                  race_budget_s: float | None = None,
                  unchanged: Callable[[], bool] | None = None,
                  clock: Callable[[], float] = time.monotonic,
                  progress: Callable[[str], None] | None = None) -> SearchResult:
    """Try the `ranked` groups one at a time on the real engine (see the module doc).

    ``measure(float_layers)`` builds the engine with those layers float (on top of the
    calibration's) and returns its agreement; ``race(budget)`` races that trial against
    the current engine; ``unchanged()`` says whether the trial's engine is the current one
    (its files the same: a backend that leaves those layers float anyway); ``on_keep(kept)``
    tells the caller whether the trial replaced the
    current engine (so it can drop the one it no longer needs: one engine pair loaded at
    a time). Without ``race`` the free mode keeps nothing."""
    mode: Mode = "gate" if start_agreement < min_agreement else "free"
    # each race gets a third of the budget even when less is left (a race cut to a few
    # rounds proves nothing); the search then stops: budget_s plus one trial at most
    step_race_s = max(1.0, race_budget_s or budget_s / 3)
    result = SearchResult(start, mode, start_agreement, start_agreement)
    began = clock()
    current = start_agreement
    for row in ranked:
        elapsed = clock() - began
        if mode == "free" and len(result.steps) >= max_steps:
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
        elif unchanged is not None and unchanged():
            step.why = ("the engine built is the current one (its backend does not quantize "
                        "these layers): dropped unraced")
        elif mode == "gate":
            step.kept = agreement > current
            step.why = (f"agreement {current:.4f} -> {agreement:.4f}"
                        + ("" if step.kept else ": no gain, dropped"))
        elif agreement < min_agreement:
            step.why = f"agreement {agreement:.4f} misses the gate {min_agreement:.4f}"
        elif race is not None:
            outcome = race(step_race_s)
            step.race = outcome.report
            # faster beyond the margin too: the race's repeated looks under a drifting load
            # once found two byte-identical engines 0.92x apart (interval up to 0.98x)
            faster = (outcome.winner == "trial" and outcome.status == "decided"
                      and outcome.high < 1 / (1 + margin_pct / 100))
            no_slower = outcome.high <= 1 + margin_pct / 100
            better = no_slower and agreement > current
            step.kept = faster or better
            step.why = (f"{outcome.ratio:.2f}x the time (at most {outcome.high:.2f}x; "
                        f"{outcome.status}), agreement {current:.4f} -> {agreement:.4f}: "
                        + ("faster beyond the noise" if faster else
                           f"more accurate and no slower than +{margin_pct:g}%" if better else
                           "not proven faster, nor more accurate at no cost in time: dropped"))
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
    result.seconds = clock() - began
    return result
