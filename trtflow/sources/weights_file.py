"""Checking a weights file before a library reads it: safetensors headers, pickles in
disguise, and non-finite values.

safetensors' own loader rejects most bad headers, but as `SafetensorError: ...` with
no file named, and a header that lies about its length makes it read (and allocate)
what the header says. Here the 8-byte length and the JSON header are checked
against the file's size first, each tensor's dtype, shape and byte range against
each other, and a file that is really a pickle (a `torch.save` zip, or a raw pickle)
is named as such: pickle is refused.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any

from trtflow.errors import ModelError

# safetensors dtype -> bytes per element (the format's table)
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 << 20  # the format's own limit (100 MB)
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")

FIELD = "model.source.weights"


def _bad(path: Path, problem: str) -> ModelError:
    return ModelError(f"{FIELD}: {path} is not a valid .safetensors file: {problem}")


def pickle_kind(path: Path) -> str | None:
    """'a torch.save archive' / 'a Python pickle' when the bytes are one, else None."""
    with open(path, "rb") as f:
        head = f.read(8)
    if zipfile.is_zipfile(path):
        return "a torch.save archive (a zip holding a pickle)"
    if head.startswith(_PICKLE_MAGIC):
        return "a Python pickle"
    return None


def check_safetensors(path: Path) -> None:
    """Refuse a `.safetensors` file whose header does not describe its bytes exactly."""
    size = path.stat().st_size
    disguised = pickle_kind(path)
    if disguised:
        raise _bad(path, f"it is {disguised}; pickle is refused (it runs code when "
                   "loaded): save the weights with safetensors.torch.save_file")
    if size < 8:
        raise _bad(path, f"{size} bytes, shorter than the 8-byte header length")
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > min(size - 8, _MAX_HEADER):
            raise _bad(path, f"its header claims {length} bytes, but the file has {size - 8} "
                       "after the length field")
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(path, f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _bad(path, f"its header is a JSON {type(header).__name__}, expected an object")
    data_size = size - 8 - length
    for name, entry in header.items():
        if name != "__metadata__":
            _check_entry(path, name, entry, data_size)


def _check_entry(path: Path, name: str, entry: Any, data_size: int) -> None:
    if not isinstance(entry, dict) or set(entry) - {"dtype", "shape", "data_offsets"}:
        raise _bad(path, f"tensor '{name}' is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _ITEMSIZE:
        raise _bad(path, f"tensor '{name}' has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape):
        raise _bad(path, f"tensor '{name}' has shape {shape!r}, expected non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise _bad(path, f"tensor '{name}' has data_offsets {offsets!r}, expected [begin, end]")
    begin, end = offsets
    need = math.prod(shape) * _ITEMSIZE[dtype]
    if not 0 <= begin <= end <= data_size:
        raise _bad(path, f"tensor '{name}' claims bytes {begin}..{end}, but the data section "
                   f"holds {data_size} bytes")
    if end - begin != need:
        raise _bad(path, f"tensor '{name}' ({dtype} {shape}) needs {need} bytes, its offsets "
                   f"span {end - begin}")


def nonfinite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of floating-point tensors in a state dict holding NaN or Inf."""
    import torch

    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]
