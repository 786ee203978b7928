"""`trtflow init`: a sensible model name, data that exists (labels key found), weights said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from trtflow.errors import ParamsError
from trtflow.params import parse_params
from trtflow.sources.describe import _model_name, params_skeleton


@pytest.mark.parametrize(("arg", "name"), [
    ("examples/out/sensor.pt2", "sensor"),
    ("runs/resnet50/model.onnx", "resnet50"),
    ("build/model.onnx", "model"),  # nothing better without the project directory
    ("examples.train_sensor:make_model", "sensor"),
    ("mypkg.nets:build_churn_net", "churn"),
    ("models:/churn-classifier@production", "churn-classifier"),
    ("models:/churn/3", "churn"),
])
def test_init_names_the_model_after_what_it_is_not_the_file(arg: str, name: str) -> None:
    assert _model_name(arg) == name


def test_when_every_part_is_generic_the_project_directory_names_the_model(
        tmp_path: Path) -> None:
    root = tmp_path / "churn"
    assert _model_name("build/model.onnx", root) == "churn"
    assert _model_name("examples/out/sensor.pt2", root) == "sensor"


INFO = {"name": "sensor", "source": {"exported_program": "sensor.pt2"},
        "inputs": [{"name": "window", "dtype": "float32", "shape": ["batch", 3, 128]}]}


def test_given_data_files_are_written_with_their_labels_key(tmp_path: Path) -> None:
    x = np.zeros((4, 3, 128), np.float32)
    np.savez(tmp_path / "cal.npz", window=x)
    np.savez(tmp_path / "ev.npz", window=x, label=np.arange(4))
    doc = yaml.safe_load(params_skeleton(INFO, tmp_path, "cal.npz", "ev.npz"))
    assert doc["data"] == {"calibration": {"npz": "cal.npz"},
                           "evaluation": {"npz": "ev.npz", "labels": "label"}}
    assert set(doc["targets"]) == {"fp32", "int8"}
    parse_params(doc, "init")


def test_without_data_no_invented_paths_and_no_int8_target(tmp_path: Path) -> None:
    text = params_skeleton(INFO, tmp_path)
    doc = yaml.safe_load(text)
    assert "data" not in doc and set(doc["targets"]) == {"fp32"}
    assert "pass --calibration/--evaluation" in text and "dvc pull" not in text


def test_a_data_file_without_the_input_name_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", x=np.zeros((2, 3, 128), np.float32))
    with pytest.raises(ParamsError, match=r"--calibration cal.npz: no array named 'window'"):
        params_skeleton(INFO, tmp_path, "cal.npz")


def test_a_factory_says_its_weights() -> None:
    info = {"name": "sensor", "source": {"factory": "examples.train_sensor:make_model",
                                         "weights": "none"}, "inputs": INFO["inputs"]}
    doc = yaml.safe_load(params_skeleton(info, weights="out/sensor.safetensors"))
    assert doc["model"]["source"]["weights"] == "out/sensor.safetensors"
    text = params_skeleton(info)
    assert "weights: none" in text and "untrained" in text
