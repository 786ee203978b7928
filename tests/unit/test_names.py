"""One rule for names that become paths, MLflow names and S3 keys; one join that refuses escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from trtflow.errors import ParamsError
from trtflow.names import Name, check_name, inside
from trtflow.yamlfile import MAX_FILE_BYTES, parse_yaml


@pytest.mark.parametrize("name", ["digits", "resnet18-int8", "a", "v1.2_x", "A" * 64])
def test_valid_names_pass(name: str) -> None:
    assert check_name(name, "model.name") == name


@pytest.mark.parametrize(("name", "why"), [
    ("../escape", "contains '/'"), ("team/model", "contains '/'"), ("--int8", "starts with '-'"),
    (".hidden", "starts with '.'"), ("", "empty"), ("x" * 300, "300 characters"),
    ("a b", "contains ' '"), ("naïve", "contains 'ï'"), ("tab\there", "contains '\\t'"),
])
def test_invalid_names_are_refused_naming_field_and_rule(name: str, why: str) -> None:
    with pytest.raises(ParamsError, match=r"model\.name: .*not a valid name") as err:
        check_name(name, "model.name")
    assert why in str(err.value) and "letters, digits" in str(err.value)
    assert len(str(err.value)) < 400  # a huge name is never echoed whole


def test_name_type_validates_inside_pydantic_models() -> None:
    class M(BaseModel):
        name: Name

    assert M(name="ok-1").name == "ok-1"
    with pytest.raises(ValidationError, match="not a valid name"):
        M(name="../x")


def test_inside_refuses_paths_that_leave_the_base(tmp_path: Path) -> None:
    assert inside(tmp_path, "locks", "m-fp32.lock") == tmp_path / "locks" / "m-fp32.lock"
    for parts in (("..", "x"), ("a/../../x",), ("/etc/passwd",)):
        with pytest.raises(ParamsError, match="would leave"):
            inside(tmp_path, *parts)


def test_yaml_size_limits_are_checked_before_the_rest_is_parsed(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="at most 4,096"):
        parse_yaml("model: {name: " + "x" * 5000 + "}", "p.yaml")
    with pytest.raises(ParamsError, match="more than 10,000 items"):
        parse_yaml("shape: [" + ",".join(["1"] * 10_001) + "]", "p.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" + "#" * MAX_FILE_BYTES)
    from trtflow.yamlfile import load_yaml

    with pytest.raises(ParamsError, match=r"big.yaml: .* bytes; .* at most 1,048,576"):
        load_yaml(big)
