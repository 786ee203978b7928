"""Shapes that would validate nothing (issue 25): outputs that lose the batch, labels
that do not match the outputs' rows, static-batch models, a tensor that is both a graph
input and output."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.errors import ModelError
from trtflow.graph.cleanup import cleanup, io_names
from trtflow.params import TensorSpec
from trtflow.preflight import check_static_batch
from trtflow.stages.validate import accuracy_and_agreement, at_batch, static_batch


def _identity(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"] * 2}


def _batch(rows: int, labels: int | None = None) -> SimpleNamespace:
    x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    return SimpleNamespace(inputs={"x": x},
                           labels=None if labels is None else np.zeros(labels, np.int64))


def test_an_output_that_collapses_the_batch_is_refused_naming_it() -> None:
    def mean_over_batch(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"].mean(0, keepdims=True)}

    with pytest.raises(ModelError, match=r"the engine's output 'y' has shape \[1, 3\] for a "
                       r"batch of 5 input row\(s\).*\(5 rows, got 1\)"):
        accuracy_and_agreement(mean_over_batch, _identity, [_batch(5)], "top1")


def test_labels_and_outputs_of_different_rows_are_refused_with_both_counts() -> None:
    with pytest.raises(ModelError, match=r"4 label row\(s\) for 5 row\(s\) of the engine's "
                       r"output 'y'"):
        accuracy_and_agreement(_identity, _identity, [_batch(5, labels=4)], "top1")


def test_matching_rows_validate() -> None:
    quality = accuracy_and_agreement(_identity, _identity, [_batch(5, labels=5)], "top1")
    assert quality.samples == 5 and quality.agreement == 1.0


def test_a_static_batch_runs_in_chunks_of_it_and_keeps_every_row() -> None:
    seen = []

    def fixed(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert len(inputs["x"]) == 4, "a static-batch model gets exactly its batch"
        seen.append(len(inputs["x"]))
        return _identity(inputs)

    out = at_batch(fixed, 4, "the engine's")({"x": np.arange(30, dtype=np.float32)
                                               .reshape(10, 3)})
    assert seen == [4, 4, 4]
    np.testing.assert_array_equal(out["y"], np.arange(30, dtype=np.float32).reshape(10, 3) * 2)


def test_static_batch_reads_the_inputs_first_dim() -> None:
    assert static_batch([TensorSpec(name="x", shape=[4, 3])]) == 4
    assert static_batch([TensorSpec(name="x", shape=["N", 3])]) is None
    assert static_batch([TensorSpec(name="a", shape=[1, 3]),
                         TensorSpec(name="b", shape=["N", 3])]) is None


def test_a_static_batch_refuses_calibration_with_the_reason() -> None:
    specs = [TensorSpec(name="x", shape=[4, 3])]
    check_static_batch(specs, [])  # float targets validate at batch 4
    with pytest.raises(ModelError, match=r"target\(s\) int8 need calibration.*'x' \[4, 3\] "
                       r"fix the batch size to 4: re-export"):
        check_static_batch(specs, ["int8"])


def _input_also_output() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    x_out = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [x], [y, x_out], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def test_cleanup_keeps_a_tensor_that_is_both_input_and_output() -> None:
    import onnxruntime as ort

    cleaned, _ = cleanup(_input_also_output())
    assert io_names(cleaned) == (["x"], ["y", "x"])
    onnx.checker.check_model(cleaned)
    session = ort.InferenceSession(cleaned.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    y, x_out = session.run(["y", "x"], {"x": x})
    np.testing.assert_array_equal(x_out, x)
    np.testing.assert_allclose(y, x @ np.ones((4, 4), np.float32))
