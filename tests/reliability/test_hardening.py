"""Issue 18's rules where the input is accepted: what the CLI says and does instead of
failing (a cast it warns about, ids it takes from the graph, a store on another disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .catalogue import _params
from .catalogue_hardening import _graph
from .conftest import new_project, project_env, trtflow

pytestmark = pytest.mark.slow  # each runs the ML stack (seconds): `make reliability`


def test_float16_calibration_data_is_cast_with_a_warning(tmp_path: Path,
                                                         digits_data: Path) -> None:
    root = new_project(tmp_path, digits_data, "f16")
    cal = root / "data" / "digits" / "calibration.npz"
    with np.load(cal) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["image"] = arrays["image"].astype(np.float16)
    np.savez(cal, **arrays)
    _params(root)
    res = trtflow("stage", "export", "--params", "p.yaml", cwd=root, env=project_env())
    assert res.returncode == 0, res.stderr
    assert "array 'image' has dtype float16; cast to float32 for model input 'image' " \
           "(every value fits)" in " ".join(res.stderr.split())
    assert "warning: data file" in res.stderr and "DataCastWarning" not in res.stderr


def test_integer_ids_are_drawn_from_the_embedding_table(tmp_path: Path) -> None:
    """No `range` in params: the Gather's 10-row table bounds the synthetic ids, so the
    export and cleanup parity runs index inside it (ONNX Runtime refuses ids past it)."""
    from onnx import TensorProto

    _graph(tmp_path / "m.onnx", gather_rows=10, x_type=TensorProto.INT64, x_shape=["N"])
    _params(tmp_path, {"model": {"name": "m", "source": {"onnx": "m.onnx"}}})
    res = trtflow("stage", "cleanup", "--params", "p.yaml", cwd=tmp_path, env=project_env())
    assert res.returncode == 0, res.stderr


def test_a_store_on_another_disk_through_a_link_is_used(tmp_path: Path) -> None:
    """The decision of class 7: `.trtflow/store` may itself be a link (a bigger disk);
    links inside it may not."""
    import onnx

    from ..unit.tiny import conv_bn_graph

    root, disk = tmp_path / "project", tmp_path / "disk"
    root.mkdir()
    disk.mkdir()
    (root / ".trtflow").mkdir()
    (root / ".trtflow" / "store").symlink_to(disk)
    onnx.save(conv_bn_graph(), root / "m.onnx")
    _params(root, {"model": {"name": "m", "source": {"onnx": "m.onnx"}}})
    res = trtflow("stage", "export", "--params", "p.yaml", cwd=root, env=project_env())
    assert res.returncode == 0, res.stderr
    assert len(list((disk / "export").glob("*/model.onnx"))) == 1
    verify = trtflow("store", "verify", cwd=root, env=project_env())
    assert verify.returncode == 0 and "all intact" in verify.stdout, verify.stderr


def test_a_pt2_with_pickled_sample_inputs_runs_no_code(tmp_path: Path) -> None:
    from .catalogue_hardening import evil_pt2

    evil_pt2(tmp_path / "m.pt2", tmp_path / "PWNED")
    _params(tmp_path, {"model": {"name": "m", "source": {"exported_program": "m.pt2"}}})
    res = trtflow("stage", "export", "--params", "p.yaml", cwd=tmp_path, env=project_env())
    assert res.returncode == 2 and "pickle is refused" in res.stderr, res.stderr
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(("stage", "target", "file", "damage"), [
    ("export", None, "model.onnx", "delete"),
    ("build", "fp32", "engine.onnx", "truncate"),
    ("calibrate", "int8", "scales.json", "truncate"),
])
def test_a_damaged_artifact_is_rebuilt_and_reported_never_served(
        tmp_path: Path, digits_data: Path, stage: str, target: str | None, file: str,
        damage: str) -> None:
    """Issue 25: a cache hit re-checks the artifact's file digests; one deleted or cut
    short is set aside, reported, and built again (the run succeeds, the store is intact)."""
    root = new_project(tmp_path, digits_data, "damaged")
    _params(root)
    args = ["stage", stage, "--params", "p.yaml", *(["-t", target] if target else [])]
    first = trtflow(*args, cwd=root, env=project_env())
    assert first.returncode == 0, first.stderr
    [path] = (root / ".trtflow" / "store" / stage).glob(f"*/{file}")
    if damage == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = trtflow(*args, cwd=root, env=project_env())
    assert again.returncode == 0, again.stderr
    message = " ".join(again.stderr.split())
    assert f"the stored {stage} artifact {path.parent.name[:12]} was damaged" in message
    assert "it was set aside and is rebuilt" in message and "Traceback" not in message
    assert path.is_file() and path.stat().st_size > 0
    verify = trtflow("store", "verify", cwd=root, env=project_env())
    assert verify.returncode == 0 and "all intact" in verify.stdout, verify.stdout


def test_a_tensor_that_is_both_input_and_output_survives_cleanup(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [x], [y, helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / "m.onnx")
    _params(tmp_path, {"model": {"name": "m", "source": {"onnx": "m.onnx"}}})
    res = trtflow("stage", "cleanup", "--params", "p.yaml", cwd=tmp_path, env=project_env())
    assert res.returncode == 0, res.stderr
    [clean] = (tmp_path / ".trtflow" / "store" / "cleanup").glob("*/model.clean.onnx")
    cleaned = onnx.load(str(clean))
    assert [i.name for i in cleaned.graph.input] == ["x"]
    assert [o.name for o in cleaned.graph.output] == ["y", "x"]
