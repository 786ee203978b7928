"""One batch of named input arrays, and the check every reader applies to it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtflow.errors import DataCastWarning, DataError
from trtflow.params import TensorSpec

_FLOAT = ("float32", "float16")


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
    check_cast(path, spec, arr)


def check_cast(path: Path | str, spec: TensorSpec, arr: np.ndarray) -> None:
    """The documented rule for data whose dtype is not the input's (same kind):
    a cast that keeps every value (float16 -> float32, int64 ids that fit int32) is done
    with a warning naming both dtypes; one that would change values (float64 beyond
    float32's range, integers out of the target's range) is refused."""
    want = np.dtype(spec.dtype)
    if arr.dtype == want or arr.size == 0:
        return
    where = f"data file {path}: array '{spec.name}'"
    if want.kind == "f":
        limit = float(np.finfo(want).max)
        peak = float(np.abs(arr).max())
        if peak > limit:
            raise DataError(f"{where} has dtype {arr.dtype} with values up to {peak:.4g}, "
                            f"beyond {want}'s range (±{limit:.4g}) of model input "
                            f"'{spec.name}'; rescale the data or save it as {want}")
    elif want.kind in "iu" and arr.dtype.kind in "iu":
        info = np.iinfo(want)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise DataError(f"{where} has {arr.dtype} values in [{lo}, {hi}], outside "
                            f"{want} [{info.min}, {info.max}] of model input '{spec.name}'")
    rounded = ", rounded to its precision" if arr.dtype.itemsize > want.itemsize else ""
    warnings.warn(f"{where} has dtype {arr.dtype}; cast to {want} for model input "
                  f"'{spec.name}' (every value fits{rounded})", DataCastWarning, stacklevel=2)
