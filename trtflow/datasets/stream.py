"""Streaming batches from a data source, checked against the model's inputs.

A `DataStream` yields `Batch(inputs={name: array}, labels=array|None)`. Arrays of
an `.npz` are opened lazily and sliced per batch, so only one batch of each key
is converted at a time.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.datasets.batch import Batch, check_array
from trtflow.datasets.npz_file import check_npz, read_member
from trtflow.errors import DataError
from trtflow.params import DataSource, TensorSpec, project_path
from trtflow.store import file_digest


@dataclass
class DataStream:
    """A re-iterable, batched view of one data source."""

    path: Path
    inputs: list[TensorSpec]
    labels_key: str | None
    batch_size: int
    limit: int | None = None

    @property
    def digest(self) -> str:
        return file_digest(self.path)

    def __len__(self) -> int:
        n = check_npz(self.path)[self.inputs[0].name][0][0]
        return min(n, self.limit) if self.limit else n

    def __iter__(self) -> Iterator[Batch]:
        check_npz(self.path)  # the file may have changed since it was opened
        with np.load(self.path, allow_pickle=False) as f:
            arrays = {spec.name: read_member(self.path, f, spec.name) for spec in self.inputs}
            labels = read_member(self.path, f, self.labels_key) if self.labels_key else None
            n = len(self)
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                yield Batch(
                    {name: _as_dtype(a[start:stop], spec) for (name, a), spec
                     in zip(arrays.items(), self.inputs, strict=True)},
                    None if labels is None else labels[start:stop],
                )


def tile_batch(inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """A batch of exactly `batch_size` samples, repeating `inputs` along axis 0 as needed
    (latency is measured at batch sizes the data set may not fill)."""
    n = len(next(iter(inputs.values())))
    reps = -(-batch_size // n)
    return {k: np.ascontiguousarray(np.concatenate([v] * reps)[:batch_size])
            for k, v in inputs.items()}


def _as_dtype(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.dtype(spec.dtype))


def open_data(source: DataSource, inputs: list[TensorSpec], root: Path, batch_size: int,
              num_classes: int | None = None) -> Any:
    """Open `source` (any kind) and check it fits the model's inputs; a re-iterable stream."""
    from trtflow.datasets import sources

    if source.function:
        return sources.FunctionStream(source.function, source, inputs, batch_size)
    assert source.path is not None  # the schema guarantees one source kind
    kind = "npz" if source.npz else "images" if source.images else "text"
    path = project_path(source.path, root, f"data source '{kind}'")
    if source.images:
        stream: Any = sources.ImageFolderStream(path, source, inputs, batch_size)
        if num_classes is not None and stream.classes and len(stream.classes) > num_classes:
            raise DataError(f"image folder {path}: {len(stream.classes)} class folders but "
                            f"the model has {num_classes} outputs")
        return stream
    if source.text:
        return sources.TextStream(path, source, inputs, batch_size, root)
    return _open_npz(path, source, inputs, batch_size, num_classes)


def missing_data(path: Path) -> DataError:
    """The error for a data path that does not exist: `dvc pull` is suggested only where a
    `.dvc` file tracks the path or a folder above it, else the params field to check."""
    tracked = any(p.with_name(p.name + ".dvc").is_file() for p in (path, *path.parents)
                  if p.name)
    hint = ("it is tracked by DVC: run `dvc pull`, or `trtflow prepare` for the demo data"
            if tracked else "check the path given under data: in the params file; data paths "
            "are relative to the project directory: the current directory, or the one "
            "`--root` names")
    return DataError(f"data file {path} does not exist ({hint})")


def _open_npz(path: Path, source: DataSource, inputs: list[TensorSpec], batch_size: int,
              num_classes: int | None) -> DataStream:
    if not path.is_file():
        raise missing_data(path)
    members = check_npz(path)  # headers checked before anything is allocated
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"data file {path} is not a readable .npz: {exc}") from None
    with f:
        keys = set(members)
        wanted = {s.name for s in inputs}
        missing = sorted(wanted - keys - {source.labels})
        if missing:
            extra = sorted(keys - wanted - {source.labels})
            raise DataError(f"data file {path}: no array for model input(s) {missing}; "
                            f"arrays present: {sorted(keys)}"
                            + (f" (keys matching no model input: {extra})" if extra else ""))
        lengths = set()
        for spec in inputs:
            shape = members[spec.name][0]
            if len(shape) == 0 or shape[0] == 0:
                raise DataError(f"data file {path}: array '{spec.name}' holds no samples "
                                f"(shape {list(shape)}); expected at least one "
                                f"sample shaped {spec.shape}")
            arr = read_member(path, f, spec.name)
            check_array(path, spec, arr)
            lengths.add(len(arr))
        if source.labels:
            if source.labels not in keys:
                raise DataError(f"data file {path}: labels key '{source.labels}' not found; "
                                f"arrays present: {sorted(keys)}")
            labels = read_member(path, f, source.labels)
            lengths.add(len(labels))
            _check_labels(path, source.labels, labels, num_classes)
        if len(lengths) != 1:
            raise DataError(f"data file {path}: arrays have different lengths {sorted(lengths)}")
    return DataStream(path, inputs, source.labels, batch_size, source.limit)


def _check_labels(path: Path, key: str, labels: np.ndarray, num_classes: int | None) -> None:
    if labels.dtype.kind not in "iu":
        raise DataError(f"data file {path}: labels '{key}' must be integer class ids, "
                        f"got dtype {labels.dtype}")
    if labels.ndim != 1:
        raise DataError(f"data file {path}: labels '{key}' have shape {list(labels.shape)}; "
                        "expected one class id per sample (a 1-D array)")
    if len(labels) and labels.min() < 0:
        raise DataError(f"data file {path}: labels '{key}' include {labels.min()}; class ids "
                        "start at 0")
    if num_classes is not None and len(labels) and (labels.min() < 0
                                                    or labels.max() >= num_classes):
        raise DataError(f"data file {path}: labels '{key}' range "
                        f"[{labels.min()}, {labels.max()}] is outside [0, {num_classes - 1}] "
                        f"for a model with {num_classes} outputs")
