"""The three demo models as model sources, plus their deterministic demo data.

`digits` is trained here on scikit-learn's bundled digits (seeded, one thread,
deterministic algorithms), so the same code version always yields the same
weights; the trained state dict is cached in the artifact store.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trtflow.atomic import atomic_file
from trtflow.params import TensorSpec
from trtflow.store import ArtifactStore, make_key

if TYPE_CHECKING:  # torch is imported by the functions that build or train a model
    import torch

    from trtflow.sources.models import DigitsCNN

DIGITS_TRAIN_VERSION = "digits-train-1"
DIGITS_SPLITS = {"train": 1197, "calibration": 240, "evaluation": 360}
MINILM_SEQ_LEN = 32

BUILTIN_INPUTS: dict[str, list[TensorSpec]] = {
    "digits": [TensorSpec(name="image", shape=["batch", 1, 8, 8], range=(0.0, 1.0))],
    "resnet18": [TensorSpec(name="image", shape=["batch", 3, 224, 224], range=(-2.0, 2.0))],
    "minilm": [
        TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"],
                   range=(0, 30521)),
        TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"],
                   range=(1, 1)),
    ],
}
BUILTIN_OUTPUTS = {"digits": ["logits"], "resnet18": ["logits"], "minilm": ["sentence_embedding"]}
BUILTIN_CLASSES = {"digits": 10, "resnet18": 1000}  # classifiers: logits per class


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """sklearn's 1797 digits, scaled to [0,1], shuffled with seed 0 into fixed splits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    out, start = {}, 0
    for name, n in DIGITS_SPLITS.items():
        idx = order[start:start + n]
        out[name] = (images[idx], labels[idx])
        start += n
    return out


def train_digits(images: np.ndarray, labels: np.ndarray, epochs: int = 30,
                 seed: int = 0) -> DigitsCNN:
    """Full-batch-shuffled Adam training; deterministic on CPU for a given seed."""
    import torch

    from trtflow.sources.models import DigitsCNN

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thread count changes float summation order
    try:
        with torch.random.fork_rng(), _deterministic():
            model = DigitsCNN()
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            x, y = torch.from_numpy(images), torch.from_numpy(labels)
            gen = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                model.train()
                for idx in torch.randperm(len(y), generator=gen).split(64):
                    opt.zero_grad()
                    loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                    loss.backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


class _deterministic:
    def __enter__(self) -> None:
        import torch

        self._was = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.use_deterministic_algorithms(self._was)


def builtin_module(name: str, store: ArtifactStore) -> torch.nn.Module:
    """Build a demo model; `digits` weights come from the store or are trained once."""
    import torch
    from safetensors.torch import load_file, save_file

    from trtflow.sources.models import DigitsCNN, MiniLMEncoder, resnet18_shaped

    if name == "resnet18":
        return resnet18_shaped(seed=0)
    if name == "minilm":
        return MiniLMEncoder().eval()
    key = make_key("train", DIGITS_TRAIN_VERSION, torch=torch.__version__)
    art = store.get("train", key)
    if art is None:
        train_x, train_y = digits_splits()["train"]
        model = train_digits(train_x, train_y)
        with store.writer("train", key, {"model": "digits"}) as tmp:
            save_file(model.state_dict(), str(tmp / "digits.safetensors"))
        art = store.get("train", key)
        assert art is not None
    model = DigitsCNN()
    model.load_state_dict(load_file(str(art.file("digits.safetensors"))))
    return model.eval()


def sample_inputs(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Representative inputs for the export parity check of a builtin model."""
    rng = np.random.default_rng(seed)
    if name == "digits":
        return {"image": digits_splits()["calibration"][0][:batch]}
    if name == "resnet18":
        return {"image": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
    ids, mask = tokenize_sentences(shipped_sentences()[:batch])
    return {"input_ids": ids, "attention_mask": mask}


def shipped_sentences() -> list[str]:
    path = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"
    return [s for s in path.read_text().splitlines() if s.strip()]


def tokenize_sentences(sentences: list[str], seq_len: int = MINILM_SEQ_LEN
                       ) -> tuple[np.ndarray, np.ndarray]:
    from transformers import AutoTokenizer

    from trtflow.sources.models import minilm_model_path

    tok = AutoTokenizer.from_pretrained(minilm_model_path())
    enc = tok(sentences, padding="max_length", truncation=True, max_length=seq_len,
              return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def write_demo_data(root: Path) -> list[Path]:
    """Write the demo data sets under `root/data/` (deterministic; atomic per file)."""
    written = []
    for name, (images, labels) in digits_splits().items():
        written.append(_save_npz(root / "data" / "digits" / f"{name}.npz",
                                 image=images, label=labels))
    sentences = shipped_sentences()
    ids, mask = tokenize_sentences(sentences)
    half = len(sentences) // 2
    written.append(_save_npz(root / "data" / "minilm" / "calibration.npz",
                             input_ids=ids[:half], attention_mask=mask[:half]))
    written.append(_save_npz(root / "data" / "minilm" / "evaluation.npz",
                             input_ids=ids[half:], attention_mask=mask[half:]))
    rng = np.random.default_rng(1)
    for split, n in (("calibration", 64), ("evaluation", 32)):
        images = rng.standard_normal((n, 3, 224, 224), dtype=np.float32)
        written.append(_save_npz(root / "data" / "resnet18" / f"{split}.npz", image=images))
    from trtflow.llm.data import write_llm_data  # the LLM demo's text (docs/llm.md)

    return written + write_llm_data(root)


def _save_npz(path: Path, **arrays: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path
