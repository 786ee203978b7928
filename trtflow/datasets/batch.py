"""One batch of named input arrays, and the check every reader applies to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtflow.errors import DataError
from trtflow.params import TensorSpec

_FLOAT = ("float32", "float16")
_INT = ("int64", "int32", "bool")


@dataclass
class Batch:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(next(iter(self.inputs.values())))


def check_array(path: Path | str, spec: TensorSpec, arr: np.ndarray) -> None:
    """dtype kind (float vs integer), rank and fixed dims of a batch vs a model input."""
    kind = "float" if arr.dtype.kind == "f" else "integer" if arr.dtype.kind in "iub" else None
    want = "float" if spec.dtype in _FLOAT else "integer"
    if kind != want:
        raise DataError(f"data file {path}: array '{spec.name}' has dtype {arr.dtype}, but "
                        f"model input '{spec.name}' expects {spec.dtype} ({want} data)")
    if arr.ndim != len(spec.shape):
        raise DataError(f"data file {path}: array '{spec.name}' has shape {list(arr.shape)}, "
                        f"model input expects rank {len(spec.shape)} {spec.shape}")
    for axis, (got, want_dim) in enumerate(zip(arr.shape, spec.shape, strict=True)):
        if isinstance(want_dim, int) and axis > 0 and got != want_dim:
            raise DataError(f"data file {path}: array '{spec.name}' has shape "
                            f"{list(arr.shape)}, model input expects {spec.shape} "
                            f"(axis {axis}: {got} != {want_dim})")
    if kind == "float":
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.argwhere(bad)[0][0])
            raise DataError(f"data file {path}: array '{spec.name}' holds {int(bad.sum())} "
                            f"NaN/Inf value(s) (first in sample {first}); calibration and "
                            "evaluation data must be finite numbers")
