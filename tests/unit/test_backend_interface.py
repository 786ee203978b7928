"""The backend interface: each registered backend declares its options, precisions and
libraries; params validate a target's options with the chosen backend's model; one ORT
session factory; the calibration artifact as backends read it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.backends import REGISTRY, BackendOptions, _resolve, build_engine, load_engine
from trtflow.errors import BuildError, ParamsError
from trtflow.graph.feeds import random_feeds
from trtflow.ort_session import ort_session
from trtflow.params import Target, parse_params
from trtflow.quant.artifact import Calibration
from trtflow.sources import onnx_inputs
from trtflow.sources.synthetic import synthetic_inputs

from .tiny import conv_bn_graph


def _params(target: dict) -> dict:
    return {"model": {"name": "x", "source": {"builtin": "digits"}}, "targets": {"t": target}}


@pytest.mark.parametrize("key", list(REGISTRY))
def test_every_registered_backend_declares_its_options_precisions_and_libraries(
        key: tuple[str, str]) -> None:
    backend = _resolve(REGISTRY[key])
    assert issubclass(backend.options, BackendOptions)
    assert backend.precisions and set(backend.precisions) <= {
        "fp32", "fp16", "bf16", "int8", "fp8", "best"}
    assert backend.libraries and isinstance(backend.selectable, bool)
    target = Target(backend=key[0], device=key[1])
    assert isinstance(target.options, backend.options)  # the defaults of its own model


def test_options_are_validated_by_the_chosen_backend() -> None:
    target = parse_params(_params({"backend": "openvino", "precision": "int8",
                                   "options": {"int8_scheme": "dynamic"}})).targets["t"]
    assert target.model_dump(mode="json")["options"] == {"int8_scheme": "dynamic"}
    with pytest.raises(ParamsError, match=re.escape(
            "field 'targets.t.options': field 'reduce_range' is not a known field (backend "
            "'openvino' on cpu takes options: int8_scheme)")):
        parse_params(_params({"backend": "openvino", "options": {"reduce_range": True}}))
    with pytest.raises(ParamsError, match="targets.t.options.*'bogus'"):
        parse_params(_params({"backend": "openvino", "options": {"int8_scheme": "bogus"}}))


def test_params_written_before_options_still_load() -> None:
    """The flat form (`int8_scheme:` on the target itself) lands in `options`."""
    flat = parse_params(_params({"backend": "openvino", "precision": "int8",
                                 "int8_scheme": "static-tensorrt"})).targets["t"]
    nested = parse_params(_params({"backend": "openvino", "precision": "int8",
                                   "options": {"int8_scheme": "static-tensorrt"}})).targets["t"]
    assert flat.model_dump() == nested.model_dump()
    with pytest.raises(ParamsError, match=re.escape(
            "set but never read: targets.t.reduce_range: only onnxruntime int8 engines")):
        parse_params(_params({"reduce_range": True}))
    with pytest.raises(ParamsError, match=re.escape(
            "set but never read: targets.t.options.reduce_range: only onnxruntime int8")):
        parse_params(_params({"options": {"reduce_range": True}}))


def test_backend_and_device_names_come_from_the_registry() -> None:
    with pytest.raises(ParamsError, match=r"targets.t.backend': unknown backend 'nope'; "
                                          r"registered: \['onnxruntime'"):
        parse_params(_params({"backend": "nope"}))
    with pytest.raises(ParamsError, match="unknown device 'gpu'"):
        parse_params(_params({"device": "gpu"}))
    with pytest.raises(ParamsError, match=r"select.backends.*not registered CPU backends"):
        parse_params(_params({"precision": "best", "select": {"backends": ["tensorrt"]}}))


def test_a_copy_for_another_backend_gets_that_backends_options() -> None:
    ort = Target(precision="best", options={"int8_activations": "int8"})
    ov = ort.but(backend="openvino", precision="int8")
    assert ov.model_dump(mode="json")["options"] == {"int8_scheme": "auto"}
    assert ort.but(precision="int8").options == ort.options  # same backend: kept


def test_build_engine_refuses_a_precision_the_backend_does_not_declare(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"builds precisions \['fp32', 'int8', 'fp8'\], "
                                         r"not 'fp16'"):
        build_engine(tmp_path / "m.onnx", Target(precision="fp16"), tmp_path)


def test_ort_session_sets_threads_level_and_entries(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_graph(), path)
    optimized = tmp_path / "opt.onnx"
    session = ort_session(path, "basic", threads=1, spinning=False,
                          config_entries={"session.intra_op.allow_spinning": "0"},
                          optimized_model_path=optimized)
    assert optimized.is_file() and session.get_providers() == ["CPUExecutionProvider"]
    again = ort_session(onnx.load(str(path)), "disable")
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], again.run(None, {"x": x})[0],
                               atol=1e-5)


def test_random_feeds_equal_the_synthetic_inputs_of_the_graph() -> None:
    """Integer ids stay inside the embedding table they index; the draws are the ones
    trtflow's synthetic inputs make for the same graph."""
    table = numpy_helper.from_array(np.zeros((7, 4), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"]),
         helper.make_node("Add", ["emb", "x"], ["y"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table])
    model = helper.make_model(graph)
    feeds = random_feeds(model, 3)
    assert feeds["ids"].shape == (3, 16) and 0 <= feeds["ids"].min() <= feeds["ids"].max() <= 6
    expected = synthetic_inputs(onnx_inputs(model), 3)
    for name in ("ids", "x"):
        np.testing.assert_array_equal(feeds[name], expected[name])


def test_a_calibration_reads_amax_float_layers_and_names_a_missing_graph(tmp_path: Path
                                                                         ) -> None:
    (tmp_path / "scales.json").write_text(json.dumps({"a": {"amax": 2.0}}))
    (tmp_path / "accuracy.json").write_text(json.dumps({"fallback": {"skip": ["conv1"]}}))
    calibration = Calibration(tmp_path)
    assert calibration.amax() == {"a": 2.0} and calibration.float_layers() == ["conv1"]
    with pytest.raises(BuildError, match="no fp8 Q/DQ graph"):
        calibration.qdq_model("fp8")


def test_an_engine_loads_through_the_backend_its_manifest_names(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_graph(), path)
    out = tmp_path / "engine"
    out.mkdir()
    build_engine(path, Target(options={"optimization": "basic"}), out)
    engine = load_engine(out, threads=1)
    assert json.loads((out / "session.json").read_text())["optimization"] == "basic"
    assert engine.input_names == ["x"]
