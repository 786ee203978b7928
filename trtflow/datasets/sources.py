"""Data sources besides .npz: image folders, text/JSONL with a tokenizer, a user function.

Each streams batches without loading the set whole, and each batch is checked
against the model's input specs (dtype kind, rank, fixed dims) with an error that
names the file and the input.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trtflow.errors import DataError
from trtflow.params import DataSource, ImagePreprocess, TensorSpec

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class _Batcher:
    """Collects per-sample dicts into batches of `batch_size`, checked against specs."""

    where: str
    inputs: list[TensorSpec]
    batch_size: int
    limit: int | None

    def batches(self, samples: Iterator[tuple[dict[str, np.ndarray], int | None]]
                ) -> Iterator[Any]:
        from trtflow.datasets.batch import Batch, check_array

        buf: list[tuple[dict[str, np.ndarray], int | None]] = []
        n = 0
        for sample in samples:
            if self.limit is not None and n >= self.limit:
                break
            buf.append(sample)
            n += 1
            if len(buf) == self.batch_size:
                yield self._stack(buf, Batch, check_array)
                buf = []
        if buf:
            yield self._stack(buf, Batch, check_array)

    def _stack(self, buf: list, batch_cls: Any, check: Any) -> Any:
        inputs = {}
        for spec in self.inputs:
            try:
                arr = np.stack([s[spec.name] for s, _ in buf])
            except KeyError:
                raise DataError(f"{self.where}: no value for model input '{spec.name}' "
                                f"(sample keys: {sorted(buf[0][0])})") from None
            except ValueError:
                shapes = sorted({str(list(np.shape(s[spec.name]))) for s, _ in buf})
                raise DataError(f"{self.where}: samples for model input '{spec.name}' have "
                                f"different shapes ({', '.join(shapes[:4])}); one batch needs "
                                "one shape (images: set preprocess.resize and crop)") from None
            check(self.where, spec, arr)
            inputs[spec.name] = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
        labels = [lbl for _, lbl in buf]
        has = [lbl is not None for lbl in labels]
        if any(has) and not all(has):
            raise DataError(f"{self.where}: some samples have labels and some do not")
        return batch_cls(inputs, np.asarray(labels, np.int64) if all(has) else None)


class ImageFolderStream:
    """`root/<class>/<image>` (labels = sorted class folders) or a flat folder (no labels)."""

    def __init__(self, folder: Path, source: DataSource, inputs: list[TensorSpec],
                 batch_size: int) -> None:
        if not folder.is_dir():
            raise DataError(f"image folder {folder} does not exist")
        if len(inputs) != 1:
            raise DataError(f"image folder {folder}: the model has {len(inputs)} inputs; "
                            "an image folder feeds exactly one")
        self.folder, self.pre, self.spec = folder, source.preprocess, inputs[0]
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
        self.classes = classes
        files = (sorted(p for c in classes for p in (folder / c).iterdir() if p.is_file())
                 if classes else sorted(p for p in folder.iterdir() if p.is_file()))
        bad = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if bad:
            raise DataError(f"image folder {folder}: {bad[0].relative_to(folder)} is not an "
                            f"image (expected one of {sorted(IMAGE_SUFFIXES)})")
        if not files:
            raise DataError(f"image folder {folder} holds no images")
        self.files = files
        self.labels_key = "folders" if classes else None
        self.batcher = _Batcher(str(folder), inputs, batch_size, source.limit)

    def __len__(self) -> int:
        return min(len(self.files), self.batcher.limit or len(self.files))

    def __iter__(self) -> Iterator[Any]:
        return self.batcher.batches(self._samples())

    def _samples(self) -> Iterator[tuple[dict[str, np.ndarray], int | None]]:
        for path in self.files:
            label = self.classes.index(path.parent.name) if self.classes else None
            yield {self.spec.name: load_image(path, self.pre)}, label


def load_image(path: Path, pre: ImagePreprocess) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            _check_pixels(path, opened.size)
            img = opened.convert("L" if pre.channels == "L" else "RGB")
            if pre.resize:
                w, h = img.size
                s = pre.resize / min(w, h)
                img = img.resize((max(1, round(w * s)), max(1, round(h * s))),
                                 Image.Resampling.BILINEAR)
            if pre.crop:
                w, h = img.size
                left, top = (w - pre.crop) // 2, (h - pre.crop) // 2
                img = img.crop((left, top, left + pre.crop, top + pre.crop))
            arr = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image {path} cannot be read: {exc}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pre.channels == "BGR":
        arr = arr[:, :, ::-1]
    c = arr.shape[2]
    mean = np.asarray(pre.mean[:c], np.float32)
    std = np.asarray(pre.std[:c], np.float32)
    arr = (arr * pre.scale - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1) if pre.layout == "NCHW" else arr)


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """A header's declared width x height, against the memory budget, before decoding."""
    from trtflow.budget import human, memory_budget

    need = size[0] * size[1] * 3 * 4  # RGB float32, the largest form it takes here
    if need > memory_budget():
        raise DataError(f"image {path} declares {size[0]}x{size[1]} pixels ({human(need)} "
                        f"decoded), over the memory budget of {human(memory_budget())}")


class TextStream:
    """Sentences from .txt (one per line) or .jsonl, tokenized offline in batches."""

    def __init__(self, path: Path, source: DataSource, inputs: list[TensorSpec],
                 batch_size: int, root: Path) -> None:
        if not path.is_file():
            raise DataError(f"text file {path} does not exist")
        tok_path = Path(source.tokenizer or "")
        tok_path = tok_path if tok_path.is_absolute() else root / tok_path
        if not tok_path.is_dir():
            raise DataError(f"data.tokenizer: {tok_path} is not a local tokenizer folder")
        self.path, self.source, self.inputs = path, source, inputs
        self.tok_path, self.batch_size = tok_path, batch_size
        self.labels_key = source.labels
        self.records = list(self._records())
        if not self.records:
            raise DataError(f"text file {path} holds no sentences")

    def _records(self) -> Iterator[tuple[str, int | None]]:
        jsonl = self.path.suffix == ".jsonl"
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"text file {self.path}: not UTF-8 text (byte {exc.start})") \
                from None
        except OSError as exc:
            raise DataError(f"text file {self.path} cannot be read ({exc.strerror})") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if not jsonl:
                yield line, None
                continue
            try:
                rec = json.loads(line)
                sentence = rec["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{self.path}:{lineno}: expected a JSON object with a 'text' "
                                "field") from None
            if not isinstance(sentence, str):
                raise DataError(f"{self.path}:{lineno}: 'text' must be a string, got "
                                f"{type(sentence).__name__}")
            label = rec.get(self.source.labels) if self.source.labels else None
            if self.source.labels and (not isinstance(label, int) or isinstance(label, bool)
                                       or label < 0):
                raise DataError(f"{self.path}:{lineno}: label field '{self.source.labels}' "
                                f"must be an integer class id (>= 0), got {label!r}")
            yield sentence, label

    def __len__(self) -> int:
        return min(len(self.records), self.source.limit or len(self.records))

    def __iter__(self) -> Iterator[Any]:
        from transformers import AutoTokenizer

        from trtflow.datasets.batch import Batch

        try:
            tok = AutoTokenizer.from_pretrained(str(self.tok_path))
        except Exception as exc:  # transformers raises OSError, ValueError, JSON errors...
            raise DataError(f"data.tokenizer: {self.tok_path} is not a loadable tokenizer "
                            f"folder ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
                            ) from None
        records = self.records[: len(self)]
        for start in range(0, len(records), self.batch_size):
            chunk = records[start:start + self.batch_size]
            enc = tok([t for t, _ in chunk], padding="max_length", truncation=True,
                      max_length=self.source.max_length, return_tensors="np")
            missing = [s.name for s in self.inputs if s.name not in enc]
            if missing:
                raise DataError(f"{self.path}: the tokenizer gives {sorted(enc)}, not the "
                                f"model input(s) {missing}")
            labels = [lbl for _, lbl in chunk]
            yield Batch({s.name: np.asarray(enc[s.name], dtype=s.dtype) for s in self.inputs},
                        np.asarray(labels, np.int64) if self.labels_key else None)


class FunctionStream:
    """`module:function` returning an iterable of {input: array, optional 'label': int}."""

    def __init__(self, ref: str, source: DataSource, inputs: list[TensorSpec],
                 batch_size: int) -> None:
        module, _, name = ref.partition(":")
        try:
            self.fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise DataError(f"data.function '{ref}' is not importable: {exc}") from None
        self.ref = ref
        self.labels_key = "label" if source.labels else None
        self.batcher = _Batcher(f"data.function '{ref}'", inputs, batch_size, source.limit)
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(b.size for b in self)
        return self._len

    def __iter__(self) -> Iterator[Any]:
        def samples() -> Iterator[tuple[dict[str, np.ndarray], int | None]]:
            for item in self._items():
                if not isinstance(item, dict):
                    raise DataError(f"data.function '{self.ref}' yielded "
                                    f"{type(item).__name__}, expected a dict of arrays")
                label = item.get("label") if self.labels_key else None
                yield {k: np.asarray(v) for k, v in item.items() if k != "label"}, label

        return self.batcher.batches(samples())

    def _items(self) -> Iterator[Any]:
        """The user function's items; its own exceptions become one DataError naming it."""
        try:
            yield from self.fn()
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"data.function '{self.ref}' raised {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}") from None
