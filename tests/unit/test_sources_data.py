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
    with pytest.raises(DataError, match="does not exist .check the path given under data:"):
        open_data(DataSource(npz="nope.npz"), SPEC, tmp_path, 4)
    (tmp_path / "nope.npz.dvc").write_text("outs:\n- md5: 0\n  path: nope.npz\n")
    with pytest.raises(DataError, match="does not exist .it is tracked by DVC: run `dvc pull`"):
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


# --- issue 18: headers before allocation, casts by rule, graph preflight -------------

def test_npz_header_declaring_terabytes_is_refused_before_reading(tmp_path: Path) -> None:
    import zipfile

    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 3, 8, 8), }"
    header += b" " * (64 - (10 + len(header) + 1) % 64) + b"\n"
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
                   + b"\0" * 64)
    with pytest.raises(DataError, match=r"array 'x': its header declares shape "
                       r"\[1000000000000, 3, 8, 8\] float32 \(.* TiB\) but the member holds 64 B"):
        open_data(DataSource(npz="d.npz"), SPEC, tmp_path, batch_size=4)


def test_object_arrays_and_bare_npy_are_named(tmp_path: Path) -> None:
    objects = np.empty(2, dtype=object)
    np.savez(tmp_path / "o.npz", x=objects)
    with pytest.raises(DataError, match="holds Python objects .* pickle is refused"):
        open_data(DataSource(npz="o.npz"), SPEC, tmp_path, batch_size=4)
    with open(tmp_path / "b.npz", "wb") as f:
        np.save(f, np.ones((2, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match="a bare .npy array"):
        open_data(DataSource(npz="b.npz"), SPEC, tmp_path, batch_size=4)


def test_float16_data_is_cast_with_a_warning_float64_overflow_refused(tmp_path: Path) -> None:
    from trtflow.errors import DataCastWarning

    src = _npz(tmp_path, x=np.ones((4, 3, 8, 8), np.float16))
    with pytest.warns(DataCastWarning, match="has dtype float16; cast to float32"):
        batch = next(iter(open_data(src, SPEC, tmp_path, batch_size=4)))
    assert batch.inputs["x"].dtype == np.float32
    big = np.ones((4, 3, 8, 8), np.float64)
    big[1, 0, 0, 0] = 1e40
    with pytest.raises(DataError, match="values up to 1e\\+40, beyond float32's range"):
        open_data(_npz(tmp_path, x=big), SPEC, tmp_path, batch_size=4)


def _ids_graph(rows: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    table = numpy_helper.from_array(np.ones((rows, 4), np.float32), "table")
    nodes = [helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "ids64"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT32, ["N", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 4])], [table])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_integer_ids_take_their_range_from_the_embedding_table() -> None:
    from trtflow.sources import synthetic_inputs

    (spec,) = onnx_inputs(_ids_graph(rows=7))
    assert spec.range == (0.0, 6.0)
    ids = synthetic_inputs([spec], batch=64)["ids"]
    assert ids.dtype == np.int32 and ids.min() == 0 and ids.max() == 6


def test_synthetic_inputs_refuse_sizes_over_the_budget_and_ids_without_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trtflow.errors import ParamsError
    from trtflow.sources import synthetic_inputs

    huge = TensorSpec(name="x", shape=["N", 3, 100000, 100000])
    with pytest.raises(DataError, match=r"would be \[4, 3, 100000, 100000\] float32 = 447.0 "
                       r"GiB, over the memory budget .* \(axis 2: 100000, declared"):
        synthetic_inputs([huge], batch=4)
    monkeypatch.setenv("TRTFLOW_MEMORY_BUDGET", "1K")
    with pytest.raises(DataError, match="axis 0: N = 65"):
        synthetic_inputs([TensorSpec(name="x", shape=["N", 4])], batch=65)
    with pytest.raises(ParamsError, match="model input 'ids' is int64"):
        synthetic_inputs([TensorSpec(name="ids", dtype="int64", shape=["N"])], batch=2)


def test_graph_preflight_names_cycles_non_finite_weights_and_new_opsets(tmp_path: Path) -> None:
    from trtflow.preflight import cycle_nodes, nonfinite_initializers, runtime_limits

    model = conv_bn_graph()
    assert cycle_nodes(model.graph) == [] and nonfinite_initializers(model) == []
    model.graph.node[0].input[0] = "y"  # conv0 now reads relu0's output: a loop
    assert cycle_nodes(model.graph) == ["conv0", "bn0", "ident0", "scale", "relu0"]
    model = conv_bn_graph()
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        np.float32([1, np.nan, 1, 1]), "gamma"))
    assert nonfinite_initializers(model) == ["gamma"]
    model = conv_bn_graph()
    model.opset_import[0].version = runtime_limits()[0] + 1
    onnx.save(model, tmp_path / "new.onnx")
    with pytest.raises(ModelError, match=f"uses opset {runtime_limits()[0] + 1} > supported "
                       f"{runtime_limits()[0]}"):
        check_onnx_file(tmp_path / "new.onnx")


def test_safetensors_headers_are_checked_against_the_file(tmp_path: Path) -> None:
    import struct

    import torch
    from safetensors.torch import save_file

    from trtflow.sources.weights_file import check_safetensors

    save_file({"w": torch.ones(2, 3)}, str(tmp_path / "ok.safetensors"))
    check_safetensors(tmp_path / "ok.safetensors")
    torch.save({"w": torch.ones(2, 3)}, tmp_path / "pt.safetensors")
    with pytest.raises(ModelError, match="a torch.save archive .*; pickle is refused"):
        check_safetensors(tmp_path / "pt.safetensors")
    (tmp_path / "long.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(ModelError, match="its header claims 1099511627776 bytes, but the "
                       "file has 2"):
        check_safetensors(tmp_path / "long.safetensors")
    header = b'{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}'
    (tmp_path / "short.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                                 + b"\0" * 12)
    with pytest.raises(ModelError, match="tensor 'w' claims bytes 0..24, but the data section "
                       "holds 12 bytes"):
        check_safetensors(tmp_path / "short.safetensors")


@pytest.mark.parametrize("value", ["0", "-5G", "nan", "inf", "0.2", "lots"])
def test_memory_budget_refuses_values_that_are_not_a_positive_size(
        monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from trtflow.budget import memory_budget
    from trtflow.errors import ParamsError

    monkeypatch.setenv("TRTFLOW_MEMORY_BUDGET", value)
    with pytest.raises(ParamsError, match=r"TRTFLOW_MEMORY_BUDGET=.*expected a positive number"):
        memory_budget()
    monkeypatch.setenv("TRTFLOW_MEMORY_BUDGET", "1.5K")
    assert memory_budget() == 1536


def test_a_csv_given_as_npz_lists_the_accepted_forms(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"x\.csv is not a readable \.npz: it is not a zip .*"
                                        r"images: FOLDER, text: .*function: 'module:function'"):
        open_data(DataSource(npz="x.csv"), SPEC, tmp_path, 4)
    with pytest.raises(DataError, match="paths are relative to the project directory: the "
                                        "current directory, or the one `--root` names"):
        open_data(DataSource(npz="nope.npz"), SPEC, tmp_path, 4)
