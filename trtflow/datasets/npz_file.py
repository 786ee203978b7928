"""Opening an `.npz` data file only after every member's `.npy` header is checked.

`np.load(allow_pickle=False)` already refuses object arrays, but only when a member
is read, as a bare `ValueError`; and it allocates what a member's header declares
before reading its bytes, so a 200-byte file can ask for terabytes. Here each
member's header is read first (numpy's own header parser) and checked: a known,
plain dtype (no Python objects: those need pickle), a declared size that matches the
bytes the member holds, and a size within the memory budget (`trtflow.budget`).
Errors name the file, the member and the problem.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from trtflow.budget import human, memory_budget, nbytes
from trtflow.errors import DataError

_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _what_it_is(head: bytes) -> str:
    """What a file that is not a zip archive looks like, for the error message."""
    if head.startswith(npy_format.MAGIC_PREFIX):
        return ("a bare .npy array, not an .npz archive; save the named arrays with "
                "np.savez(path, image=..., label=...)")
    if head.startswith(_PICKLE_MAGIC):
        return "a Python pickle, not an .npz archive; pickle is refused (it runs code)"
    return ("not a zip archive (expected an .npz written by np.savez, keys = the model's "
            "input names); the other data forms: images: FOLDER, text: FILE.txt or .jsonl "
            "with tokenizer: FOLDER, function: 'module:function' (e.g. one that reads a CSV)")


def check_npz(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of a checked `.npz`; DataError on any bad member."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataError(f"data file {path} cannot be read ({exc.strerror})") from None
    if not zipfile.is_zipfile(path):
        raise DataError(f"data file {path} is not a readable .npz: it is {_what_it_is(head)}")
    budget = memory_budget()
    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                name = info.filename.removesuffix(".npy")
                found[name] = _check_member(path, archive, info, name, budget)
    except zipfile.BadZipFile as exc:
        raise DataError(f"data file {path} is not a readable .npz: {exc}") from None
    return found


def _check_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str,
                  budget: int) -> tuple[tuple[int, ...], np.dtype]:
    where = f"data file {path}: array '{name}'"
    with archive.open(info) as member:
        try:
            version = npy_format.read_magic(member)
            reader = (npy_format.read_array_header_1_0 if version == (1, 0)
                      else npy_format.read_array_header_2_0)
            shape, _, dtype = reader(member)
        except ValueError as exc:
            raise DataError(f"{where} has no valid .npy header ({exc})") from None
        header = member.tell() if hasattr(member, "tell") else 0
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (dtype {dtype}), which only pickle can "
                        "load; pickle is refused: save plain numeric arrays")
    declared = nbytes(shape, dtype.itemsize)
    held = info.file_size - header
    if declared != held:
        raise DataError(f"{where}: its header declares shape {list(shape)} {dtype} "
                        f"({human(declared)}) but the member holds {human(held)}; the file is "
                        "corrupt or was not written by numpy")
    if declared > budget:
        raise DataError(f"{where} is {human(declared)} (shape {list(shape)} {dtype}), over the "
                        f"memory budget of {human(budget)} for one array; split it, or raise "
                        "$TRTFLOW_MEMORY_BUDGET")
    return tuple(shape), dtype


def read_member(path: Path, f: Any, name: str) -> np.ndarray:
    """`f[name]` of an open NpzFile, with zip/CRC errors named."""
    try:
        return f[name]  # type: ignore[no-any-return]
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"data file {path}: array '{name}' cannot be read "
                        f"({type(exc).__name__}: {exc})") from None
