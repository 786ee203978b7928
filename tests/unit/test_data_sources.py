from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trtflow.datasets import open_data
from trtflow.errors import DataError, ParamsError
from trtflow.params import DataSource, TensorSpec, parse_params
from trtflow.sources.models import minilm_model_path

IMG = [TensorSpec(name="image", shape=["batch", 3, 8, 8])]


def _image_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_image_folder_streams_preprocessed_batches_with_folder_labels(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs")
    src = DataSource(images=str(folder), labels="folders",
                     preprocess={"resize": 8, "crop": 8, "mean": [0.5] * 3, "std": [0.25] * 3})
    stream = open_data(src, IMG, tmp_path, batch_size=5, num_classes=3)
    batches = list(stream)
    assert [b.size for b in batches] == [5, 5, 2] and len(stream) == 12
    assert batches[0].inputs["image"].shape == (5, 3, 8, 8)
    assert batches[0].inputs["image"].dtype == np.float32
    assert np.concatenate([b.labels for b in batches]).tolist() == [0] * 4 + [1] * 4 + [2] * 4
    x = batches[0].inputs["image"]
    assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (v/255 - .5)/.25


def test_image_folder_with_a_non_image_file(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs")
    (folder / "class_1" / "notes.txt").write_text("not a picture")
    with pytest.raises(DataError, match=r"class_1/notes\.txt is not an image"):
        open_data(DataSource(images=str(folder)), IMG, tmp_path, 4)


def test_image_folder_with_more_classes_than_outputs(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "imgs", classes=3)
    with pytest.raises(DataError, match="3 class folders but the model has 2 outputs"):
        open_data(DataSource(images=str(folder)), IMG, tmp_path, 4, num_classes=2)


def test_jsonl_text_with_labels_is_tokenized_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "y": i % 2}) for i, t in
                              enumerate(["a cat", "a dog runs", "hello there", "ok"])))
    specs = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
             TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"])]
    src = DataSource(text=str(path), tokenizer=minilm_model_path(), labels="y", max_length=16)
    batches = list(open_data(src, specs, tmp_path, batch_size=3))
    assert [b.size for b in batches] == [3, 1]
    assert batches[0].inputs["input_ids"].shape == (3, 16)
    assert batches[0].labels.tolist() == [0, 1, 0]


def test_text_needs_a_tokenizer_and_valid_jsonl(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="needs 'tokenizer'"):
        parse_params({"model": {"name": "m", "source": {"builtin": "minilm"}},
                      "data": {"calibration": {"text": "s.txt"}}})
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine"}\n{"words": "no text field"}\n')
    src = DataSource(text=str(path), tokenizer=minilm_model_path())
    with pytest.raises(DataError, match=r"s\.jsonl:2: expected a JSON object with a 'text'"):
        open_data(src, [], tmp_path, 2)


def samples() -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"image": rng.standard_normal((3, 8, 8)).astype(np.float32), "label": i % 3}
            for i in range(7)]


def wrong_dtype() -> list[dict]:
    return [{"image": np.ones((3, 8, 8), np.int64)}]


def test_function_source(tmp_path: Path) -> None:
    src = DataSource(function=f"{__name__}:samples", labels="label")
    stream = open_data(src, IMG, tmp_path, batch_size=4)
    assert len(stream) == 7
    assert [b.labels.tolist() for b in stream] == [[0, 1, 2, 0], [1, 2, 0]]
    with pytest.raises(DataError, match="'image' has dtype int64.*expects float32"):
        list(open_data(DataSource(function=f"{__name__}:wrong_dtype"), IMG, tmp_path, 4))
    with pytest.raises(DataError, match="'nope.mod:f' is not importable"):
        open_data(DataSource(function="nope.mod:f"), IMG, tmp_path, 4)
