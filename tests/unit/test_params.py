from __future__ import annotations

import re
from pathlib import Path

import pytest

from trtflow.errors import ParamsError
from trtflow.params import load_params, parse_params

from ..conftest import REPO


@pytest.mark.parametrize("name", ["digits", "minilm", "resnet18"])
def test_shipped_params_files_validate(name: str) -> None:
    params = load_params(REPO / "params" / f"{name}.yaml")
    assert params.model.source.builtin == name
    assert "fp32" in params.targets


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="nope.yaml does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: [unclosed\n")
    with pytest.raises(ParamsError, match=r"p\.yaml: not valid YAML"):
        load_params(path)


def test_unknown_field_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {name: m, source: {builtin: digits}}\nvalidate: {warmpu: 3}\n")
    with pytest.raises(ParamsError, match=r"p\.yaml.*'validate\.warmpu' is not a known field"):
        load_params(path)


def test_wrong_type_names_field_and_expected_type(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {name: m, source: {builtin: digits}}\n"
                            "validate: {gates: {max_accuracy_drop: lots}}\n")
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert "validate.gates.max_accuracy_drop" in msg and "valid number" in msg and "'lots'" in msg


def test_unknown_builtin_model_lists_the_choices(tmp_path: Path) -> None:
    path = _write(tmp_path, "model: {name: m, source: {builtin: alexnet}}\n")
    with pytest.raises(ParamsError, match=r"model\.source\.builtin.*'digits', 'minilm' or "
                                          r"'resnet18'.*alexnet"):
        load_params(path)


def test_source_needs_exactly_one_kind() -> None:
    with pytest.raises(ParamsError, match="exactly one of builtin, onnx"):
        parse_params({"model": {"name": "m", "source": {"builtin": "digits", "onnx": "a.onnx"}}})
    with pytest.raises(ParamsError, match="got none"):
        parse_params({"model": {"name": "m", "source": {}}})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(_write(tmp_path, "- just\n- a list\n"))


def test_section_digest_covers_only_named_sections() -> None:
    base = {"model": {"name": "m", "source": {"builtin": "digits"}}}
    a = parse_params(base)
    b = parse_params({**base, "validate": {"iterations": 7}})
    assert a.section_digest("export") == b.section_digest("export")
    assert a.section_digest("validate") != b.section_digest("validate")


# --- strict YAML and strict types (issue 18, class 1) -------------------------------

_DIGITS = "model: {name: x, source: {builtin: digits}}\n"


@pytest.mark.parametrize(("text", "expected"), [
    (_DIGITS + "data: {batch_size: 8}\ndata: {batch_size: 16}\n",
     "line 3: duplicate key 'data' (first set on line 2)"),
    (_DIGITS + "data: {batch_size: 010}\n", "the number 010 has a leading zero"),
    ("base: &b {name: x}\nmodel: *b\n", "YAML anchors and aliases are refused (anchor &b)"),
    (_DIGITS + "data: {batch_size: true}\n",
     "field 'data.batch_size': Input should be a valid integer (got True)"),
    (_DIGITS + "calibration: {sensitivity: yes}\n", "write true or false"),
    (_DIGITS + "validate: {iterations: '5'}\n", "field 'validate.iterations'"),
    (_DIGITS + "export: {atol: true}\n", "a boolean is not a number"),
])
def test_yaml_1_1_habits_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ParamsError, match=re.escape(expected)):
        load_params(_write(tmp_path, text))


def test_yaml_1_2_scalars(tmp_path: Path) -> None:
    params = load_params(_write(tmp_path, _DIGITS + "export: {atol: 1e-3, rtol: .5}\n"))
    assert params.export.atol == 1e-3 and params.export.rtol == 0.5
    spec = load_params(_write(tmp_path, "model: {name: x, source: {onnx: m.onnx}, inputs: "
                              "[{name: ids, dtype: int64, shape: [batch, 7], range: [0, 9]}]}\n"
                              )).model.inputs
    assert spec is not None and spec[0].range == (0.0, 9.0) and spec[0].shape == ["batch", 7]


def test_factory_needs_weights_or_an_explicit_none() -> None:
    with pytest.raises(ParamsError, match="write 'weights: none' if that is really meant"):
        parse_params({"model": {"name": "f", "source": {"factory": "m:f"}}})
    src = parse_params({"model": {"name": "f", "source": {"factory": "m:f",
                                                          "weights": "none"}}}).model.source
    assert src.weights_file is None


@pytest.mark.parametrize(("section", "field"), [
    ({"model": {"name": "x", "source": {"builtin": "digits"}, "outputs": ["y"]}},
     "model.outputs: builtin 'digits' models define their own"),
    ({"model": {"name": "x", "source": {"onnx": "m.onnx"}}, "export": {"opset": 17}},
     "export.opset: an ONNX source is not exported"),
    ({"model": {"name": "x", "source": {"builtin": "digits"}},
      "data": {"calibration": {"npz": "a.npz", "max_length": 16}}},
     "data.calibration.max_length: only a text source is tokenized"),
    ({"model": {"name": "x", "source": {"builtin": "digits"}},
      "targets": {"a": {"precision": "int8", "select": {"rounds": 2}}}},
     "targets.a.select: only `precision: best` selects"),
])
def test_fields_that_would_be_ignored_are_refused(section: dict, field: str) -> None:
    with pytest.raises(ParamsError, match=re.escape("set but never read: " + field)):
        parse_params(section)


def test_a_dumped_params_reads_back_although_it_names_every_field() -> None:
    params = parse_params({"model": {"name": "x", "source": {"onnx": "m.onnx"}},
                           "data": {"calibration": {"npz": "a.npz"}},
                           "targets": {"int8": {"precision": "int8"}}})
    again = parse_params(params.model_dump(mode="json", by_alias=True))
    assert again.digest() == params.digest()


def test_dump_yaml_writes_shared_values_out_so_they_read_back() -> None:
    from trtflow.yamlfile import dump_yaml, parse_yaml

    gates = {"min_agreement": 0.9}
    doc = {"targets": {"a": {"gates": gates}, "b": {"gates": gates}}}
    assert "&" not in dump_yaml(doc) and parse_yaml(dump_yaml(doc), "x") == doc


def test_a_data_split_given_as_a_bare_file_lists_the_accepted_forms() -> None:
    import yaml

    data = yaml.safe_load((REPO / "params" / "digits.yaml").read_text())
    data["data"]["calibration"] = "x.csv"
    with pytest.raises(ParamsError) as err:
        parse_params(data, "p.yaml")
    text = str(err.value)
    assert "field 'data.calibration'" in text and "'x.csv'" in text
    for form in ("npz: FILE.npz", "images: FOLDER", "text: FILE.txt", "function:"):
        assert form in text


def test_calibration_method_defaults_to_classwise_and_keeps_the_others() -> None:
    from trtflow.params import CalibrationConfig

    assert CalibrationConfig().method == "classwise"
    for method in ("classwise", "auto", "entropy", "percentile", "mse", "max"):
        assert CalibrationConfig(method=method).method == method
    with pytest.raises(ValueError, match=r"unknown calibration method 'kl'.*'classwise'"):
        CalibrationConfig(method="kl")
    with pytest.raises(ValueError, match="unknown calibration method 'classwise'"):
        CalibrationConfig(input_method="classwise")  # a table, not a method for inputs
