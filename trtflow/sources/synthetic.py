"""Synthetic inputs for parity and latency when a model has no data: shapes checked
against the memory budget before anything is allocated, and integer ids drawn only
from a range the model states (an embedding/Gather table) or params give.
"""

from __future__ import annotations

import numpy as np

from trtflow.errors import DataError, ParamsError
from trtflow.graph.feeds import gather_ranges
from trtflow.params import TensorSpec

__all__ = ["gather_ranges", "synthetic_inputs", "synthetic_shapes"]


def synthetic_shapes(specs: list[TensorSpec], batch: int, dynamic_size: int = 16
                     ) -> dict[str, list[int]]:
    """Each input's concrete shape (dynamic dims: batch, then `dynamic_size`), checked
    against the memory budget before anything is allocated; the error names the input,
    its shape and its largest dim."""
    from trtflow.budget import human, memory_budget, nbytes

    budget, shapes = memory_budget(), {}
    for spec in specs:
        shape = [d if isinstance(d, int) else (batch if i == 0 else dynamic_size)
                 for i, d in enumerate(spec.shape)]
        need = nbytes(shape, np.dtype(spec.dtype).itemsize)
        if need > budget:
            axis = max(range(len(shape)), key=lambda a: shape[a])
            dim = spec.shape[axis]
            named = f"{dim} = {shape[axis]}" if isinstance(dim, str) else str(dim)
            raise DataError(f"synthetic input '{spec.name}' would be {shape} {spec.dtype} = "
                            f"{human(need)}, over the memory budget of {human(budget)} (axis "
                            f"{axis}: {named}, declared by the model); give "
                            "data.calibration/data.evaluation with real inputs, set "
                            "model.inputs with smaller dims, or raise $TRTFLOW_MEMORY_BUDGET")
        if spec.dtype in ("int64", "int32") and spec.range is None:
            raise ParamsError(f"model input '{spec.name}' is {spec.dtype}, and nothing in the "
                              "model says which values are valid (no embedding/Gather table "
                              "reads it directly): set its range in model.inputs, e.g. "
                              f"{{name: {spec.name}, dtype: {spec.dtype}, shape: "
                              f"{list(spec.shape)}, range: [0, 999]}}")
        shapes[spec.name] = shape
    return shapes


def synthetic_inputs(specs: list[TensorSpec], batch: int, seed: int = 0,
                     dynamic_size: int = 16) -> dict[str, np.ndarray]:
    """Random inputs inside each spec's value range (integers: the inclusive `range`, which
    a graph gives from its embedding table or params must); within the memory budget."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape = synthetic_shapes([spec], batch, dynamic_size)[spec.name]
        lo, hi = spec.range or ((0, 1) if spec.dtype == "bool" else (-1.0, 1.0))
        if spec.dtype in ("int64", "int32", "bool"):
            out[spec.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(spec.dtype)
        else:
            out[spec.name] = rng.uniform(lo, hi, size=shape).astype(spec.dtype)
    return out
