"""Layer sensitivity from one evaluation per *group* of layers, refined only where it counts.

``accuracy.sensitivity`` quantizes each layer alone and runs the fake-quantized graph
over the selection split: one ONNX Runtime session and pass per layer (62-91 layers on
the unseen CNNs of issue 26: 600-2000 s). What the float fallback needs is the few most
sensitive layers in the right order, so this module

1. cuts the quantized layers (graph order) into groups of ``group_size`` neighbours and
   scores each group quantized alone (one pass a group);
2. best first: takes the worst-scoring set left; a set of several layers is split in
   halves, each scored alone; a single layer is the next in the ranking, since it hurts
   more than any set left and, quantizing part of a set rarely hurting more than all of
   it, more than any layer in them;
3. yields layers in that order, lazily: the float fallback stops asking once agreement
   is met (usually after one to three layers), so the rest is never scored.

Where errors are monotone (a subset of layers costs no more than the set), the top
``top`` layers and their order are exactly the per-layer ones (the tests check it on
given numbers and on a conv chain against ``accuracy.sensitivity``). Cost:
``ceil(n / group_size)`` + about ``2 log2(group_size)`` passes per ranked layer, fewer
where sensitivity is concentrated in a few layers (as it is in the CNNs measured).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from trtflow.progress_estimate import StepEstimate


class LayerScorer(Protocol):
    """What ``accuracy.Evaluator`` offers: the quantized layers and a score with a skip list."""

    def quantized_nodes(self, amax: Mapping[str, float]) -> list[str]: ...

    def score(self, amax: Mapping[str, float], skip: Any = ()) -> dict[str, float]: ...


def sensitive_layers(ev: LayerScorer, amax: Mapping[str, float], group_size: int = 8,
                     progress: Callable[[str], None] | None = None
                     ) -> Iterator[dict[str, Any]]:
    """The quantized layers, most sensitive first, each scored alone (``{node, agreement,
    relative_error}``), found lazily: the float fallback takes only as many as it needs."""
    nodes = ev.quantized_nodes(amax)
    estimate = StepEstimate(progress, "sensitivity evaluation")

    def alone(members: tuple[str, ...]) -> dict[str, float]:
        estimate.step(f"{len(members)} of {len(nodes)} layers quantized")
        keep = set(members)
        return ev.score(amax, skip=[n for n in nodes if n not in keep])

    size = max(1, group_size)
    # best first: the worst-scoring set is popped; a single layer popped is worse than
    # every set left (so than each of their layers, where errors are monotone): next in
    # the ranking. A set popped is split in two halves, each scored alone.
    heap: list[tuple[float, int, tuple[str, ...], dict[str, float]]] = []
    for i in range(0, len(nodes), size):
        group = tuple(nodes[i:i + size])
        score = alone(group)
        heapq.heappush(heap, (-score["relative_error"], i, group, score))
    while heap:
        _, first, members, score = heapq.heappop(heap)
        if len(members) == 1:
            yield {"node": members[0], **score}
            continue
        half = (len(members) + 1) // 2
        for offset, part in ((0, members[:half]), (half, members[half:])):
            part_score = alone(part)
            heapq.heappush(heap, (-part_score["relative_error"], first + offset, part,
                                  part_score))


def grouped_sensitivity(ev: LayerScorer, amax: Mapping[str, float], top: int = 8,
                        group_size: int = 8,
                        progress: Callable[[str], None] | None = None
                        ) -> list[dict[str, Any]]:
    """The first ``top`` of :func:`sensitive_layers`: the most sensitive layers in order."""
    return list(itertools.islice(sensitive_layers(ev, amax, group_size, progress), top))


def lazy_fallback(ev: LayerScorer, amax: Mapping[str, float], min_agreement: float,
                  max_layers: int, group_size: int = 8,
                  progress: Callable[[str], None] | None = None
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``accuracy.fallback``'s result, with the ranking found only as far as it is used:
    the whole graph quantized is scored first (one pass), and only if it misses
    `min_agreement` are the most sensitive layers found, one at a time, and kept float
    until it is met. Returns the fallback and the sensitivity rows it computed."""
    skip: list[str] = []
    score = ev.score(amax)
    steps = [{"float_layers": 0, **score}]
    rows: list[dict[str, Any]] = []
    if score["agreement"] < min_agreement and max_layers > 0:
        for row in sensitive_layers(ev, amax, group_size, progress):
            rows.append(row)
            skip.append(row["node"])
            score = ev.score(amax, skip)
            steps.append({"float_layers": len(skip), **score})
            if score["agreement"] >= min_agreement or len(skip) >= max_layers:
                break
    return ({"skip": skip, "met": score["agreement"] >= min_agreement,
             "min_agreement": min_agreement, "final": score, "steps": steps}, rows)
