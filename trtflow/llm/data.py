"""LLM text data: the Python reference topics (`pydoc_data.topics`) split into
calibration and evaluation text, and the strict reader of such text files.

The topics ship with every CPython, so the demo needs no download. The split is by
topic, deterministic: the topics sorted by name, every fifth one to evaluation, so no
passage is in both. Which Python wrote the files is recorded next to them, since the
text changes between Python releases.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from trtflow.atomic import atomic_file
from trtflow.errors import DataError

EVALUATION_EVERY = 5  # every 5th topic (sorted by name) is evaluation text
SEPARATOR = "\n\n"


def topic_splits() -> dict[str, str]:
    """{'calibration': text, 'evaluation': text} from `pydoc_data.topics`."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    evaluation = [topics[n] for i, n in enumerate(names) if i % EVALUATION_EVERY == 0]
    calibration = [topics[n] for i, n in enumerate(names) if i % EVALUATION_EVERY != 0]
    return {"calibration": SEPARATOR.join(calibration), "evaluation": SEPARATOR.join(evaluation)}


def write_llm_data(root: Path) -> list[Path]:
    """Write data/llm/{calibration,evaluation}.txt and a manifest naming the Python that
    wrote them (atomic per file)."""
    folder = root / "data" / "llm"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, text in topic_splits().items():
        path = folder / f"{split}.txt"
        with atomic_file(path) as f:
            f.write(text.encode("utf-8"))
        written.append(path)
    manifest = folder / "source.json"
    with atomic_file(manifest, "w") as f:
        json.dump({"source": "pydoc_data.topics", "python": platform.python_version(),
                   "evaluation_every": EVALUATION_EVERY}, f, indent=1)
    written.append(manifest)
    return written


def read_text(path: Path) -> str:
    """A UTF-8 text file; DataError naming the file and the first bad byte otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: text data file not found (run `trtflow prepare` for the "
                        "demo text)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                        f"{exc.start}); expected UTF-8 encoded plain text") from None
    if not text.strip():
        raise DataError(f"{path}: empty text file; expected UTF-8 plain text to tokenize")
    return text


if __name__ == "__main__":  # `python -m trtflow.llm.data`: write the demo text (make demo-llm)
    for written in write_llm_data(Path(".").resolve()):
        print(f"  wrote {written.relative_to(Path('.').resolve())}")
