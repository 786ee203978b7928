"""One rule for names that become paths, MLflow names and S3 keys; one join that refuses escapes."""

from __future__ import annotations

import re
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


def _params(**sections: object) -> dict:
    return {"model": {"name": "m", "source": {"builtin": "digits"}}, **sections}


@pytest.mark.parametrize(("section", "value", "field"), [
    ("model", {"name": "../../outside", "source": {"builtin": "digits"}}, "model.name"),
    ("model", {"name": "x" * 300, "source": {"builtin": "digits"}}, "model.name"),
    ("targets", {"--int8": {}}, "targets.--int8"),
    ("targets", {"a/b": {}}, "targets.a/b"),
    ("publish", {"bucket": "engines/prod"}, "publish.bucket"),
    ("publish", {"bucket": "engines..prod"}, "publish.bucket"),
    ("publish", {"bucket": "10.0.0.1"}, "publish.bucket"),
    ("publish", {"bucket": "Engines"}, "publish.bucket"),
    ("publish", {"bucket": "ok-bucket", "prefix": "team/../x"}, "publish.prefix"),
])
def test_params_refuse_names_that_would_become_bad_paths_at_load(
        section: str, value: object, field: str) -> None:
    from trtflow.params import parse_params

    with pytest.raises(ParamsError, match=rf"field '{re.escape(field)}"):
        parse_params(_params(**{section: value}))


def test_valid_bucket_and_prefix_load() -> None:
    from trtflow.params import parse_params

    params = parse_params(_params(publish={"bucket": "team.engines-1", "prefix": "a/b-c"}))
    assert params.publish.bucket == "team.engines-1"


@pytest.mark.parametrize("bucket", ["engines/prod", "UPPER", "1.2.3.4", "ab"])
def test_publish_and_fetch_refuse_bad_buckets_before_any_request(tmp_path: Path,
                                                                 bucket: str) -> None:
    from trtflow.track.publish import fetch, publish

    (tmp_path / "engine.onnx").write_bytes(b"x")
    with pytest.raises(ParamsError, match="not a valid bucket name"):
        publish(tmp_path, bucket, "trtflow", "m", "1", {}, client=object())
    with pytest.raises(ParamsError, match="not a valid bucket name"):
        fetch(bucket, "trtflow", "m", "1", tmp_path / "dest", client=object())


def test_publish_refuses_a_model_or_version_that_is_not_a_name(tmp_path: Path) -> None:
    from trtflow.track.publish import version_prefix

    assert version_prefix("team/engines", "m", "int8-7130") == "team/engines/m/int8-7130/"
    for model, version in (("../m", "1"), ("m", "--1"), ("m", "")):
        with pytest.raises(ParamsError, match="not a valid name"):
            version_prefix("trtflow", model, version)
