from __future__ import annotations

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
