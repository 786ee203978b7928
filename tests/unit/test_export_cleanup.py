from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from trtflow.errors import ModelError, ParityError
from trtflow.graph.cleanup import cleanup, op_counts
from trtflow.graph.parity import compare, ort_run
from trtflow.params import ExportConfig, TensorSpec
from trtflow.sources import LoadedModel
from trtflow.stages.export import MODEL_FILE, export_model

from .tiny import NoisyNet, TinyConvNet, conv_bn_graph

SPEC = [TensorSpec(name="image", shape=["batch", 3, 8, 8])]


def _sample(batch: int = 3) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(0).standard_normal((batch, 3, 8, 8), np.float32)}


def test_export_keeps_batchnorm_and_names_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LoadedModel(TinyConvNet().eval(), None, SPEC, ["logits"])
    report = export_model(model, ExportConfig(), _sample(), tmp_path)
    graph = onnx.load(str(tmp_path / MODEL_FILE))
    assert "BatchNormalization" in op_counts(graph)  # raw graph: cleanup does the folding
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [o.name for o in graph.graph.output] == ["logits"]
    assert report["parity"]["ok"] and report["parity"]["max_abs_error"] < 1e-4
    # dynamic batch really works: a batch size the export never saw
    out = ort_run(tmp_path / MODEL_FILE, _sample(batch=7))
    assert out["logits"].shape == (7, 5)


def test_export_parity_failure_names_the_output(tmp_path: Path) -> None:
    model = LoadedModel(NoisyNet(), None, SPEC, ["noisy"])
    with pytest.raises(ParityError, match="output 'noisy' differs by up to"):
        export_model(model, ExportConfig(), _sample(), tmp_path)


class _Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)  # its output tensor is named `embedding`
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lin(self.embedding(ids)).mean(1)


def test_an_output_name_taken_inside_the_model_is_named_not_a_parity_failure(
        tmp_path: Path) -> None:
    spec = [TensorSpec(name="ids", shape=["batch", 3], dtype="int64", range=(0, 9))]
    model = LoadedModel(_Embedder().eval(), None, spec, ["embedding"])
    sample = {"ids": np.zeros((2, 3), np.int64)}
    with pytest.raises(ModelError, match=r"model.outputs \['embedding'\] collide with tensors"):
        export_model(model, ExportConfig(), sample, tmp_path)


def test_cleanup_folds_batchnorm_identity_and_constants() -> None:
    model = conv_bn_graph()
    cleaned, report = cleanup(model)
    ops = op_counts(cleaned)
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Add" not in ops
    assert ops["Conv"] == 1
    assert report["fusions"] == [{"fusion": "Conv+BatchNormalization -> Conv",
                                  "nodes": ["conv0", "bn0"]}]
    assert report["ops_before"]["BatchNormalization"] == 1
    assert report["nodes_after"] < report["nodes_before"]


def test_cleaned_graph_matches_original(tmp_path: Path) -> None:
    model = conv_bn_graph()
    cleaned, _ = cleanup(model)
    onnx.save(model, tmp_path / "a.onnx")
    onnx.save(cleaned, tmp_path / "b.onnx")
    x = {"x": np.random.default_rng(1).standard_normal((2, 3, 8, 8), np.float32)}
    report = compare(ort_run(tmp_path / "a.onnx", x), ort_run(tmp_path / "b.onnx", x),
                     atol=1e-5, rtol=0, what="cleanup")
    assert report.ok


def test_compare_reports_missing_output_and_shape_mismatch() -> None:
    ref = {"y": np.zeros((2, 3), np.float32)}
    with pytest.raises(ParityError, match="output 'y' is missing"):
        compare(ref, {}, 1e-4, 0, "t")
    with pytest.raises(ParityError, match=r"output 'y' has shape \[3, 2\]"):
        compare(ref, {"y": np.zeros((3, 2), np.float32)}, 1e-4, 0, "t")


def test_compare_is_polygraphys_elementwise_check_and_names_the_worst_output() -> None:
    ref = {"a": np.array([1.0, 100.0], np.float32), "b": np.array([1.0, 1.0], np.float32)}
    # a: 0.5 off at 100 is beyond atol but within rtol=1%: Polygraphy passes the element
    near = {"a": np.array([1.0, 100.5], np.float32), "b": ref["b"]}
    assert compare(ref, near, atol=1e-3, rtol=1e-2, what="t").ok
    far = {"a": near["a"], "b": np.array([1.0, 1.25], np.float32)}
    with pytest.raises(ParityError, match=r"t: output 'b' differs by up to 0.25 \(abs\) and "
                                          r"0.25 \(rel\), beyond both atol=0.001 and rtol=0.01"):
        compare(ref, far, atol=1e-3, rtol=1e-2, what="t")


def test_ort_run_refuses_a_wrong_shape_naming_file_and_shapes_quietly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relu.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 8])])
    onnx.save(onnx.helper.make_model(graph), path)
    with pytest.raises(ModelError, match=r"cannot run .*relu.onnx on sample inputs "
                                         r"\{'x': \[3, 5\]\} \(declared \{'x': \['batch', 8\]\}\)"):
        ort_run(path, {"x": np.ones((3, 5), np.float32)})
    assert capsys.readouterr().out == ""  # Polygraphy's own log stays silent
