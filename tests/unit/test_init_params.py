"""`trtflow init`: a sensible model name, data that exists (labels key found), weights said."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from trtflow.errors import ParamsError
from trtflow.params import parse_params
from trtflow.sources.describe import model_name_for, params_skeleton


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
    assert model_name_for(arg) == name


def test_when_every_part_is_generic_the_project_directory_names_the_model(
        tmp_path: Path) -> None:
    root = tmp_path / "churn"
    assert model_name_for("build/model.onnx", root) == "churn"
    assert model_name_for("examples/out/sensor.pt2", root) == "sensor"


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


def test_input_options_parse_to_specs() -> None:
    from trtflow.sources.describe import parse_input_option

    spec = parse_input_option("ids:batch,seq:int64")
    assert (spec.name, spec.dtype, spec.shape) == ("ids", "int64", ["batch", "seq"])
    assert parse_input_option("image:batch,1,8,8").shape == ["batch", 1, 8, 8]
    with pytest.raises(ParamsError, match=r"--input 'image': expected NAME:SHAPE\[:DTYPE\]"):
        parse_input_option("image")
    with pytest.raises(ParamsError, match=r"dim '-3' is neither a positive number nor a name"):
        parse_input_option("image:batch,-3")


def test_a_factorys_inputs_come_from_the_options_and_calibration_then_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trtflow.sources.describe import describe, parse_input_option

    (tmp_path / "tiny_net.py").write_text(
        "import torch\n\n\ndef make_model():\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    np.savez(tmp_path / "cal.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    info = describe("tiny_net:make_model", tmp_path, None,
                    [parse_input_option("image:batch,1,8,8")])
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
    doc = yaml.safe_load(params_skeleton(info, tmp_path, "cal.npz"))
    assert doc["model"]["inputs"] == info["inputs"]
    assert doc["data"]["calibration"] == {"npz": "cal.npz"} and "int8" in doc["targets"]
    parse_params(doc, "init")


def test_input_options_for_a_source_with_its_own_inputs_are_refused(tmp_path: Path) -> None:
    from trtflow.sources.describe import describe, parse_input_option

    with pytest.raises(ParamsError, match="--input: a onnx source says its own inputs"):
        describe("m.onnx", tmp_path, None, [parse_input_option("x:batch,4")])


def test_a_second_source_under_one_name_is_refused_with_a_hint(tmp_path: Path) -> None:
    from trtflow.sources.describe import check_name_free

    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "sensor.yaml").write_text(
        "model: {name: sensor, source: {onnx: sensor.onnx}}\n")
    check_name_free("sensor", {"onnx": "sensor.onnx", "allow_pickle": False},
                    tmp_path / "params")  # the same source: not another model
    with pytest.raises(ParamsError, match=r"model name 'sensor' is already used by .*sensor.yaml "
                       r"for another source \(onnx: sensor.onnx\).*pass --name \(e.g. --name "
                       r"sensor-exported-program\)"):
        check_name_free("sensor", {"exported_program": "sensor.pt2", "allow_pickle": False},
                        tmp_path / "params")
    check_name_free("sensor-pt2", {"exported_program": "sensor.pt2"}, tmp_path / "params")
