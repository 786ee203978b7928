from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtflow.datasets import open_data
from trtflow.errors import DataError, ModelError
from trtflow.params import DataSource, TensorSpec
from trtflow.sources import check_onnx_file, onnx_inputs

from .tiny import conv_bn_graph

SPEC = [TensorSpec(name="x", shape=["batch", 3, 8, 8])]


def test_onnx_inputs_read_names_dtypes_and_dynamic_dims() -> None:
    specs = onnx_inputs(conv_bn_graph())
    assert [(s.name, s.dtype, s.shape) for s in specs] == [("x", "float32", ["batch", 3, 8, 8])]


def test_truncated_onnx_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    data = conv_bn_graph().SerializeToString()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"m\.onnx is corrupt or truncated"):
        check_onnx_file(path)


def test_garbage_onnx_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"this is not a protobuf at all \x00\xff" * 10)
    with pytest.raises(ModelError, match="corrupt or truncated"):
        check_onnx_file(path)


def test_missing_external_data_names_the_file(tmp_path: Path) -> None:
    model = conv_bn_graph()
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location="m.onnx.data", size_threshold=0)
    assert check_onnx_file(tmp_path / "m.onnx") is not None
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(ModelError, match=r"keeps its weights in m\.onnx\.data, which is missing"):
        check_onnx_file(tmp_path / "m.onnx")


def _npz(tmp_path: Path, **arrays: np.ndarray) -> DataSource:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return DataSource(npz=str(path), labels="label" if "label" in arrays else None)


def test_npz_streams_in_batches(tmp_path: Path) -> None:
    src = _npz(tmp_path, x=np.ones((10, 3, 8, 8), np.float64), label=np.arange(10) % 4)
    stream = open_data(src, SPEC, tmp_path, batch_size=4, num_classes=4)
    sizes = [(b.size, b.inputs["x"].dtype, b.labels.tolist()) for b in stream]
    assert [s[0] for s in sizes] == [4, 4, 2] and sizes[0][1] == np.float32
    assert sizes[2][2] == [0, 1]


def test_data_key_matching_no_input_is_named(tmp_path: Path) -> None:
    src = _npz(tmp_path, pixels=np.ones((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"no array for model input\(s\) \['x'\].*"
                                        r"keys matching no model input: \['pixels'\]"):
        open_data(src, SPEC, tmp_path, 4)


def test_integer_data_for_float_input_and_reverse(tmp_path: Path) -> None:
    src = _npz(tmp_path, x=np.ones((2, 3, 8, 8), np.int64))
    with pytest.raises(DataError, match="'x' has dtype int64.*expects float32"):
        open_data(src, SPEC, tmp_path, 4)
    ids = [TensorSpec(name="ids", dtype="int64", shape=["batch", "seq"])]
    src = _npz(tmp_path, ids=np.ones((2, 5), np.float32))
    with pytest.raises(DataError, match="'ids' has dtype float32.*expects int64"):
        open_data(src, ids, tmp_path, 4)


def test_labels_out_of_range(tmp_path: Path) -> None:
    src = _npz(tmp_path, x=np.ones((3, 3, 8, 8), np.float32), label=np.array([0, 1, 10]))
    with pytest.raises(DataError, match=r"labels 'label' range \[0, 10\] is outside \[0, 9\]"):
        open_data(src, SPEC, tmp_path, 4, num_classes=10)


def test_wrong_shape_and_missing_file(tmp_path: Path) -> None:
    src = _npz(tmp_path, x=np.ones((2, 3, 9, 8), np.float32))
    with pytest.raises(DataError, match=r"axis 2: 9 != 8"):
        open_data(src, SPEC, tmp_path, 4)
    with pytest.raises(DataError, match="does not exist.*dvc pull"):
        open_data(DataSource(npz="nope.npz"), SPEC, tmp_path, 4)


def test_initializer_inputs_are_not_model_inputs() -> None:
    model = conv_bn_graph()
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", 1, [4, 3, 3, 3]))
    assert [s.name for s in onnx_inputs(model)] == ["x"]
    assert numpy_helper.to_array(model.graph.initializer[0]).shape == (4, 3, 3, 3)


def test_tile_batch_repeats_samples_to_the_batch_size() -> None:
    from trtflow.datasets import tile_batch

    pool = {"x": np.arange(3, dtype=np.float32)[:, None], "ids": np.arange(3)[:, None]}
    tiled = tile_batch(pool, 7)
    assert tiled["x"][:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert tiled["ids"].shape == (7, 1) and tile_batch(pool, 2)["x"].shape == (2, 1)
