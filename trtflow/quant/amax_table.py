"""The amax of every calibrated tensor by each method a calibration needs, on a few threads.

The calibrate stage used to compute all four methods for every tensor (the complete
cache names every float activation: 50 tensors in resnet18, ~250 in efficientnet-b0)
whatever the params asked for; MSE alone costs ~2x entropy a tensor. ``needed_methods``
names the ones a calibration reads (the chosen method, the input method, the fp8 method;
entropy and percentile for ``method: classwise``, the default; all three that ``auto``
compares for ``method: auto``), and ``amax_table`` computes just those.

Tensors run on a thread pool: each method is numpy on ~250k-element arrays, which
releases the GIL, so two cores give ~2x. Stacking tensors into one array per numpy call
(one gather of the shared KL group table for a whole stack) was measured too: 2-4x
*slower* on this host's 1 MiB L2, since a stack's temporaries (~2 MiB a tensor each) no
longer stay in cache; per-tensor calls it is. Each value is ``compute_amax``'s own, so
the exact-entropy and ModelOpt oracles hold unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from trtflow.quant.collector import HistogramCollector
from trtflow.quant.methods import METHODS, compute_amax

# What `method: auto` compares per tensor class (quant.method_search). MSE is left out:
# each method compared costs fake-quantized evaluations, and MSE's amax costs about twice
# entropy's a tensor; it stays available by name.
AUTO_METHODS = ("entropy", "max", "percentile")
# What `method: classwise` reads (quant.class_table's table: entropy on linear-layer
# outputs, percentile elsewhere); both come from the one histogram pass.
CLASSWISE_METHODS = ("entropy", "percentile")


def needed_methods(method: str, input_method: str, fp8_method: str,
                   extra: Iterable[str] = ()) -> list[str]:
    """The methods whose amax a calibration reads, in ``METHODS`` order: the chosen method
    (``auto``: those its search compares, ``AUTO_METHODS``; ``classwise``: those its table
    names, ``CLASSWISE_METHODS``), the graph inputs' (``same``: the chosen one), the fp8
    targets', and ``extra`` (a report that compares methods)."""
    groups = {"auto": AUTO_METHODS, "classwise": CLASSWISE_METHODS}
    chosen = set(groups.get(method, (method,)))
    wanted = chosen | {fp8_method, *extra} | ({input_method} if input_method != "same"
                                              else set())
    return [m for m in METHODS if m in wanted]


def amax_table(collector: HistogramCollector, tensors: Sequence[str], methods: Sequence[str],
               options: Mapping[str, Mapping[str, Any]] | None = None, threads: int = 1
               ) -> dict[str, dict[str, float]]:
    """``{method: {tensor: amax}}`` for `methods` (each with ``options[method]``), the
    tensors spread over `threads` threads."""
    opts = options or {}

    def row(tensor: str) -> list[float]:
        hist = collector[tensor]
        return [compute_amax(hist, m, **opts.get(m, {})) for m in methods]

    if threads > 1 and len(tensors) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            rows = list(pool.map(row, tensors))
    else:
        rows = [row(t) for t in tensors]
    return {m: {t: r[j] for t, r in zip(tensors, rows, strict=True)}
            for j, m in enumerate(methods)}
