"""How many samples one calibration run may take, from the memory budget.

The histogram pass exposes every float activation as a graph output, so one ONNX
Runtime run returns all of them at once: per sample that is the sum of the
activations' sizes (resnet18 at 224x224: ~85 MB; a GPT-2-shaped decoder at sequence
512: far more). Running a fixed 8 samples at a time OOM-killed a GPT-2-shaped model at
6.5 GB with no message first (issue 26). The first run of a pass takes one sample, its
outputs' bytes are measured, and the rest run as many samples at a time as fit
``$TRTFLOW_MEMORY_BUDGET`` (``trtflow.budget``) at most ``ceiling``; a single sample over
the budget is refused with the numbers, before the pass goes on.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from trtflow.budget import ENV, human, memory_budget
from trtflow.errors import CalibrationError

# Outputs of a run are alive together with the histogram threads' per-chunk scratch and
# ORT's own arena: the outputs may take this fraction of the budget.
OUTPUT_SHARE = 0.5


def output_bytes(outputs: Iterable[np.ndarray]) -> int:
    return sum(int(np.asarray(o).nbytes) for o in outputs)


def samples_per_run(bytes_per_sample: int, ceiling: int, budget: int | None = None) -> int:
    """Samples a run may take so its exposed activations stay within the budget's share;
    at least 1, at most `ceiling`. Refuses when one sample alone exceeds the budget."""
    budget = memory_budget() if budget is None else budget
    allowed = int(budget * OUTPUT_SHARE)
    if bytes_per_sample > budget:
        raise CalibrationError(
            f"calibration: one sample's activations take {human(bytes_per_sample)}, more "
            f"than the memory budget {human(budget)} (${ENV}); raise the budget, or shorten "
            "the inputs (sequence length, image size) of the calibration data")
    if bytes_per_sample <= 0:
        return ceiling
    return max(1, min(ceiling, allowed // bytes_per_sample))
