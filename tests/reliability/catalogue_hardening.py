"""Bad inputs of issue 18 (classes 1-7 and 9), each of our own making: part of the one
catalogue (`catalogue.CASES` appends `HARDENING`), rendered into docs/bad_inputs.md.

Every case fails before any stage stores an artifact (the harness checks the store,
MLflow and Prefect's results are unchanged), except the gate case at the end, which
compiles an untrained model and must be stopped by the accuracy floor (exit 3).
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from .catalogue import Call, Case, _digits_images, _onnx_project, _params, _raw, _tiny_onnx

_DIGITS = "model: {name: x, source: {builtin: digits}}\n"


def _digits_body(change: Callable[[dict], None], command: str = "run") -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        path = _params(root)
        body = yaml.safe_load(path.read_text())
        change(body)
        path.write_text(yaml.safe_dump(body))
        return Call(command.split() + ["p.yaml"] if command == "run"
                    else command.split() + ["--params", "p.yaml"])
    return setup


def _replace_data(split: str, write: Callable[[Path], None]) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        _params(root)
        path = root / "data" / "digits" / f"{split}.npz"
        path.unlink()
        write(path)
        return Call(["run", "p.yaml"])
    return setup


# --- npz members built byte by byte -------------------------------------------------

def _npy_bytes(header: dict, payload: bytes) -> bytes:
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def _lying_npz(path: Path) -> None:
    """'image' declares 10^12 float32 values (3.6 TiB); it holds 256 bytes."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("image.npy", _npy_bytes({"descr": "<f4", "fortran_order": False,
                                            "shape": (10**12, 1, 8, 8)}, b"\0" * 256))
        z.writestr("label.npy", _npy_bytes({"descr": "<i8", "fortran_order": False,
                                            "shape": (4,)}, b"\0" * 32))


def _object_npz(path: Path) -> None:
    images = np.empty(40, dtype=object)
    images[:] = [np.zeros((1, 8, 8), np.float32)] * 40
    np.savez(path, image=images, label=np.zeros(40, np.int64))


def _pickle_as_npz(path: Path) -> None:
    path.write_bytes(pickle.dumps({"image": [0.0] * 64}, protocol=4))


def _bare_npy(path: Path) -> None:
    with open(path, "wb") as f:
        np.save(f, _digits_images())


def _npz_arrays(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


# --- weights files ----------------------------------------------------------------

_FACTORY = ("import torch\n\n\ndef make_model():\n    torch.manual_seed(0)\n"
            "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10),\n"
            "                               torch.nn.ReLU())\n")


def _factory_project(root: Path, weights: str | None, command: str = "stage export",
                     shape: list | None = None, dtype: str = "float32", **extra: object
                     ) -> Call:
    (root / "tiny_factory.py").write_text(_FACTORY)
    source: dict = {"factory": "tiny_factory:make_model"}
    if weights is not None:
        source["weights"] = weights
    spec = {"name": "image", "dtype": dtype, "shape": shape or ["batch", 1, 8, 8]}
    body: dict = {"model": {"name": "f", "source": source, "inputs": [spec]},
                  "targets": {"fp32": {"precision": "fp32"}},
                  "validate": {"warmup": 1, "iterations": 3, "batch_sizes": [1]}, **extra}
    _params(root, body)
    args = command.split() + (["p.yaml"] if command == "run" else ["--params", "p.yaml"])
    return Call(args, env={"PYTHONPATH": str(root)})


def _factory_labels_past_classes(root: Path) -> Call:
    path = root / "data" / "digits" / "evaluation.npz"
    path.unlink()
    np.savez(path, image=_digits_images(), label=np.arange(40, dtype=np.int64) % 13)
    return _factory_project(root, "none", command="run", data={
        "evaluation": {"npz": "data/digits/evaluation.npz", "labels": "label"}})


def _safetensors_header(header: object, data: bytes = b"", claim: int | None = None
                        ) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", claim if claim is not None else len(raw)) + raw + data


def _weights(name: str, write: Callable[[Path], None]) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        write(root / name)
        return _factory_project(root, name)
    return setup


def _torch_save_renamed(path: Path) -> None:
    import torch

    torch.save({"1.weight": torch.zeros(10, 64), "1.bias": torch.zeros(10)}, path)


def _nan_weights(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    weight = torch.zeros(10, 64)
    weight[3, 5] = float("nan")
    save_file({"1.weight": weight, "1.bias": torch.zeros(10)}, str(path))


class _Shell:
    def __reduce__(self) -> tuple:
        return (print, ("this would run at load time",))


def _raw_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"1.weight": _Shell()}, protocol=2))


class _Touch:
    """Unpickling it creates `path`: proof that a loader ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (open, (self.path, "w"))


def evil_pt2(path: Path, marker: Path) -> None:
    """A real torch.export archive whose sample inputs are a pickle that creates `marker`
    (torch.export.load falls back to weights_only=False for them)."""
    import io

    import torch

    program = torch.export.export(torch.nn.Linear(4, 3), (torch.randn(2, 4),))
    plain = path.with_suffix(".plain.pt2")
    torch.export.save(program, str(plain))
    payload = io.BytesIO()
    torch.save({"x": _Touch(marker)}, payload)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w") as out:
        for name in src.namelist():
            out.writestr(name, payload.getvalue() if name.endswith("sample_inputs/model.pt")
                         else src.read(name))
    plain.unlink()


def _evil_pt2_project(root: Path) -> Call:
    evil_pt2(root / "m.pt2", root / "PWNED")
    _params(root, {"model": {"name": "m", "source": {"exported_program": "m.pt2"}}})
    return Call(["stage", "export", "--params", "p.yaml"])


def _failing_function(root: Path) -> Call:
    (root / "my_data.py").write_text("def batches():\n    yield from []\n"
                                     "    raise RuntimeError('database is down')\n")
    _params(root, {"model": {"name": "digits", "source": {"builtin": "digits"}},
                   "data": {"calibration": {"function": "my_data:batches"}},
                   "targets": {"int8": {"precision": "int8"}}})
    return Call(["run", "p.yaml"], env={"PYTHONPATH": str(root)})


# --- ONNX graphs --------------------------------------------------------------------

def _graph(path: Path, *, opset: int = 18, ir: int = 9, nan: bool = False, cycle: bool = False,
           x_shape: list | None = None, x_type: int = 1, gather_rows: int | None = None
           ) -> None:
    """A one- or two-node graph with the defect asked for."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.ones((4, 4), np.float32)
    if nan:
        w[1, 2] = np.inf
    inits = [numpy_helper.from_array(w, "w")]
    if gather_rows is not None:  # ids -> Gather(table) -> MatMul(w)
        inits.append(numpy_helper.from_array(np.ones((gather_rows, 4), np.float32), "table"))
        nodes = [helper.make_node("Gather", ["table", "x"], ["e"], name="embed"),
                 helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")]
    elif cycle:
        nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add_a"),
                 helper.make_node("MatMul", ["a", "w"], ["b"], name="mm_b"),
                 helper.make_node("Relu", ["b"], ["y"], name="relu")]
    elif x_type != TensorProto.FLOAT:  # integer ids that feed no table: Cast first
        nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT, name="cast"),
                 helper.make_node("MatMul", ["xf", "w"], ["y"], name="mm")]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    x = helper.make_tensor_value_info("x", x_type, x_shape or ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    onnx.save(model, path)


def _onnx(make: Callable[[Path], None], command: str = "run", **project: object
          ) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        make(root / "m.onnx")
        return _onnx_project(root, command=command, **project)  # type: ignore[arg-type]
    return setup


def _external(location: str, truncate: bool = False) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        import onnx

        from ..unit.tiny import conv_bn_graph

        onnx.save_model(conv_bn_graph(), path, save_as_external_data=True,
                        location="m.weights", size_threshold=0)
        data = path.parent / "m.weights"
        if truncate:
            data.write_bytes(data.read_bytes()[:100])
            return
        model = onnx.load(str(path), load_external_data=False)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, path)
    return make


def _ids_project(root: Path, ids: np.ndarray) -> Call:
    """An int32-ids model (a 10-row embedding table) with calibration ids given."""
    from onnx import TensorProto

    _graph(root / "m.onnx", gather_rows=10, x_type=TensorProto.INT32, x_shape=["N"])
    (root / "data" / "ids").mkdir(parents=True)
    np.savez(root / "data" / "ids" / "cal.npz", x=ids)
    _params(root, {"model": {"name": "m", "source": {"onnx": "m.onnx"}},
                   "data": {"calibration": {"npz": "data/ids/cal.npz"}},
                   "targets": {"int8": {"precision": "int8"}}})
    return Call(["run", "p.yaml"])


# --- images and text ------------------------------------------------------------------

def _image_folder(files: dict[str, bytes | tuple[int, int]]) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        from PIL import Image

        folder = root / "data" / "imgs" / "0"
        folder.mkdir(parents=True)
        for name, content in files.items():
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            else:
                Image.new("L", content).save(folder / name)
        _params(root, {"model": {"name": "digits", "source": {"builtin": "digits"}},
                       "data": {"calibration": {"images": "data/imgs",
                                                "preprocess": {"channels": "L"}}},
                       "targets": {"int8": {"precision": "int8"}}})
        return Call(["run", "p.yaml"])
    return setup


def _text(name: str, content: bytes, labels: bool = False) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        from trtflow.sources.models import minilm_model_path

        (root / "data" / name).write_bytes(content)
        source: dict = {"text": f"data/{name}", "tokenizer": minilm_model_path()}
        if labels:
            source["labels"] = "label"
        _params(root, {"model": {"name": "minilm", "source": {"builtin": "minilm"}},
                       "data": {"calibration": source},
                       "targets": {"int8": {"precision": "int8"}}})
        return Call(["run", "p.yaml"])
    return setup


# --- the store ------------------------------------------------------------------------

def _linked_stage(command: str) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        _tiny_onnx(root)
        call = _onnx_project(root, command="export")
        elsewhere = root.parent / f"{root.name}-elsewhere"
        elsewhere.mkdir()
        store = root / ".trtflow" / "store"
        store.mkdir(parents=True)
        (store / "export").symlink_to(elsewhere)
        return call if command == "stage export" else Call(["store", "verify"])
    return setup


def _exported(root: Path) -> Path:
    """A real export artifact of a tiny ONNX model; its directory."""
    from .conftest import project_env, trtflow

    _tiny_onnx(root)
    _onnx_project(root)
    res = trtflow("stage", "export", "--params", "p.yaml", cwd=root, env=project_env())
    assert res.returncode == 0, res.stderr
    shutil.rmtree(root / "build", ignore_errors=True)
    return next((root / ".trtflow" / "store" / "export").glob("*/model.onnx")).parent


def _linked_file(root: Path) -> Call:
    art = _exported(root)
    outside = root.parent / f"{root.name}-model.onnx"
    shutil.copy(art / "model.onnx", outside)
    (art / "model.onnx").unlink()
    (art / "model.onnx").symlink_to(outside)  # same bytes: only the link is wrong
    return Call(["store", "verify"])


def _linked_artifact(root: Path) -> Call:
    art = _exported(root)
    outside = root.parent / f"{root.name}-artifact"
    shutil.move(art, outside)
    art.symlink_to(outside)
    return Call(["stage", "export", "--params", "p.yaml", "-t", "fp32"])


def _float64_overflow() -> np.ndarray:
    images = _digits_images().astype(np.float64)
    images[3, 0, 0, 0] = 1e300
    return images


def _reduce_graph(path: Path) -> None:
    """x @ w, then ReduceMean over axis 0: an output that loses the batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("ReduceMean", ["h", "axes"], ["y"], keepdims=1, name="mean")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)


def _linked_external(path: Path) -> None:
    _external("m.weights")(path)
    real = path.parent / "weights-elsewhere.bin"
    (path.parent / "m.weights").rename(real)
    (path.parent / "m.weights").symlink_to(real)


def _odd_factory(body: str) -> Callable[[Path], Call]:
    """A factory project whose make_model has `body` (weights: none, stage export)."""
    def setup(root: Path) -> Call:
        call = _factory_project(root, "none")
        (root / "tiny_factory.py").write_text("import torch\n\n\ndef make_model():\n" + body)
        return call
    return setup


def _init_second_source(root: Path) -> Call:
    _tiny_onnx(root)
    (root / "params").mkdir()
    _params(root, {"model": {"name": "m", "source": {"onnx": "m.onnx"}}},
            name="params/m.yaml")
    (root / "m.pt2").write_bytes(b"")  # never read: the name is refused first
    return Call(["init", "m.pt2"])


def _static_int8(root: Path) -> Call:
    """The digits project on an ONNX model whose input is [4, 1, 8, 8]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 10), np.float32), "w")
    shape = numpy_helper.from_array(np.array([4, 64], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["image", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [4, 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 10])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w, shape]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, root / "m.onnx")
    path = _params(root)
    body = yaml.safe_load(path.read_text())
    body["model"] = {"name": "m", "source": {"onnx": "m.onnx"}}
    path.write_text(yaml.safe_dump(body))
    return Call(["run", "p.yaml"])


HARDENING: list[Case] = [
    # --- 1. YAML semantics ----------------------------------------------------------------
    Case("yaml-duplicate-key", "params (YAML)", "a top-level key given twice",
         _raw(_DIGITS + "data: {batch_size: 8}\ndata: {batch_size: 16}\n"),
         "p.yaml: line 3: duplicate key 'data' (first set on line 2)"),
    Case("yaml-duplicate-nested", "params (YAML)", "`precision` twice inside one target",
         _raw(_DIGITS + "targets:\n  int8:\n    precision: int8\n    precision: fp32\n"),
         "line 5: duplicate key 'precision' (first set on line 4)"),
    Case("yaml-octal", "params (YAML)", "`batch_size: 010` (YAML 1.1 octal)",
         _raw(_DIGITS + "data: {batch_size: 010}\n"),
         "the number 010 has a leading zero, which YAML 1.1 reads as octal"),
    Case("yaml-true-as-int", "params (YAML)", "`batch_size: true` (a bool where an int goes)",
         _raw(_DIGITS + "data: {batch_size: true}\n"),
         "field 'data.batch_size': Input should be a valid integer (got True)"),
    Case("yaml-yes-as-bool", "params (YAML)", "`sensitivity: yes` (YAML 1.1 boolean)",
         _raw(_DIGITS + "calibration: {sensitivity: yes}\n"),
         "write true or false (YAML 1.2: yes/no/on/off are strings)"),
    Case("yaml-string-as-int", "params (YAML)", "`iterations: '5'` (a quoted number)",
         _raw(_DIGITS + "validate: {iterations: '5'}\n"),
         "field 'validate.iterations': Input should be a valid integer (got '5')"),
    Case("yaml-bool-as-float", "params (YAML)", "`export.atol: true`",
         _raw(_DIGITS + "export: {atol: true}\n"), "a boolean is not a number"),
    Case("yaml-alias", "params (YAML)", "an anchor and alias (`&t` / `*t`)",
         _raw(_DIGITS + "targets:\n  a: &t {precision: fp32}\n  b: *t\n"),
         "YAML anchors and aliases are refused (anchor &t)"),
    Case("yaml-billion-laughs", "params (YAML)", "nested aliases that expand exponentially",
         _raw("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
              "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n" + _DIGITS),
         "YAML anchors and aliases are refused"),
    Case("yaml-merge-key", "params (YAML)", "a `<<` merge key (YAML 1.1 only)",
         _raw(_DIGITS + "<<: {export: {opset: 18}}\n"), "field '<<' is not a known field"),
    Case("yaml-python-tag", "params (YAML)", "a `!!python/object/apply` tag",
         _raw(_DIGITS + "data: !!python/object/apply:os.system [echo hi]\n"),
         "could not determine a constructor for the tag"),
    Case("yaml-not-utf8", "params (YAML)", "params bytes that are not UTF-8",
         lambda root: ((root / "p.yaml").write_bytes(_DIGITS.encode() + b"# \xff\xfe\n"),
                       Call(["run", "p.yaml"]))[-1],
         "p.yaml: not UTF-8 text"),
    # --- 2. params that would be ignored ----------------------------------------------------
    Case("ignored-opset-onnx-source", "params (ignored)", "`export.opset` for an ONNX source",
         lambda root: _params(root, {"model": {"name": "m", "source": {"onnx": "m.onnx"}},
                                     "export": {"opset": 17}}) and Call(["run", "p.yaml"]),
         "set but never read: export.opset: an ONNX source is not exported"),
    Case("ignored-inputs-builtin", "params (ignored)", "`model.inputs` for a builtin model",
         _digits_body(lambda b: b["model"].update(
             inputs=[{"name": "image", "shape": ["batch", 1, 16, 16]}])),
         "model.inputs: builtin 'digits' models define their own"),
    Case("ignored-preprocess-npz", "params (ignored)", "`preprocess` on an `.npz` data source",
         _digits_body(lambda b: b["data"]["calibration"].update(preprocess={"resize": 16})),
         "data.calibration.preprocess: only image folders are preprocessed"),
    Case("ignored-tokenizer-npz", "params (ignored)", "`max_length` on an `.npz` data source",
         _digits_body(lambda b: b["data"]["evaluation"].update(max_length=64)),
         "data.evaluation.max_length: only a text source is tokenized"),
    Case("ignored-select", "params (ignored)", "`select` on a target that is not `best`",
         _digits_body(lambda b: b["targets"]["int8"].update(select={"rounds": 3})),
         "targets.int8.select: only `precision: best` selects"),
    Case("ignored-outputs-onnx", "params (ignored)", "`model.outputs` for an ONNX source",
         lambda root: _params(root, {"model": {"name": "m", "source": {"onnx": "m.onnx"},
                                               "outputs": ["probs"]}}) and Call(["run", "p.yaml"]),
         "model.outputs: an ONNX source's outputs are its graph's"),
    Case("ignored-publish-prefix", "params (ignored)", "`publish.prefix` without a bucket",
         _digits_body(lambda b: b.update(publish={"prefix": "team-a"})),
         "publish.prefix: nothing is published without publish.bucket"),
    Case("ignored-reduce-range", "params (ignored)", "`reduce_range` on an fp32 target",
         _digits_body(lambda b: b["targets"]["fp32"].update(reduce_range=True)),
         "targets.fp32.reduce_range: only onnxruntime int8 engines read it"),
    Case("export-opset-unreachable", "params (ignored)",
         "`export.opset: 13`, which the exporter cannot reach for this model",
         lambda root: _factory_project(root, "none", export={"opset": 13}),
         "export.opset: 13 was asked, but the exporter wrote opset 18"),
    # --- 3. loaders -------------------------------------------------------------------------
    Case("weights-torch-as-safetensors", "loaders", "a `torch.save` file named `.safetensors`",
         _weights("w.safetensors", _torch_save_renamed),
         "it is a torch.save archive (a zip holding a pickle); pickle is refused"),
    Case("weights-raw-pickle", "loaders", "a raw pickle (protocol 2) as `.pt` weights",
         _weights("w.pt", _raw_pickle), "pickle is refused"),
    Case("weights-header-too-long", "loaders", "safetensors header length past the file's end",
         _weights("w.safetensors", lambda p: p.write_bytes(
             _safetensors_header({}, claim=10**12))),
         "its header claims 1000000000000 bytes, but the file has"),
    Case("weights-header-not-json", "loaders", "safetensors header that is not JSON",
         _weights("w.safetensors", lambda p: p.write_bytes(_safetensors_header(b"{nope"))),
         "is not a valid .safetensors file: its header is not JSON"),
    Case("weights-offsets-lie", "loaders", "a tensor whose byte range passes the file's end",
         _weights("w.safetensors", lambda p: p.write_bytes(_safetensors_header(
             {"1.bias": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]}},
             b"\0" * 8))),
         "tensor '1.bias' claims bytes 0..40, but the data section holds 8 bytes"),
    Case("weights-shape-lies", "loaders", "a tensor whose shape needs more bytes than its range",
         _weights("w.safetensors", lambda p: p.write_bytes(_safetensors_header(
             {"1.bias": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 40]}},
             b"\0" * 40))),
         "tensor '1.bias' (F32 [1000]) needs 4000 bytes, its offsets span 40"),
    Case("data-npz-lying-header", "loaders", "`.npy` member declaring 233 TiB in a 1 KB file",
         _replace_data("calibration", _lying_npz),
         "its header declares shape [1000000000000, 1, 8, 8] float32"),
    Case("data-npz-object-array", "loaders", "npz array of Python objects (needs pickle)",
         _replace_data("calibration", _object_npz),
         "array 'image' holds Python objects (dtype object), which only pickle can load; "
         "pickle is refused"),
    Case("data-bare-npy", "loaders", "a bare `.npy` where an `.npz` is expected",
         _replace_data("calibration", _bare_npy), "it is a bare .npy array, not an .npz"),
    Case("data-pickle-as-npz", "loaders", "a pickle named `.npz`",
         _replace_data("evaluation", _pickle_as_npz),
         "it is a Python pickle, not an .npz archive; pickle is refused"),
    Case("data-over-budget", "loaders",
         "an array over the memory budget (`TRTFLOW_MEMORY_BUDGET=1K`)",
         lambda root: (_params(root), Call(["run", "p.yaml"],
                                           env={"TRTFLOW_MEMORY_BUDGET": "1K"}))[-1],
         "over the memory budget of 1.0 KiB for one array"),
    Case("data-labels-2d", "loaders", "labels shaped `[N, 1]`",
         _replace_data("evaluation", _npz_arrays(image=_digits_images(),
                                                 label=np.zeros((40, 1), np.int64))),
         "expected one class id per sample (a 1-D array)"),
    Case("model-pt2-pickled-inputs", "loaders",
         "`.pt2` whose sample inputs are a pickle (torch falls back to unpickling)",
         _evil_pt2_project, "holds a pickled Python object (it pickles io.open)"),
    Case("data-function-raises", "loaders", "a `module:function` data source that raises",
         _failing_function, "data.function 'my_data:batches' raised RuntimeError: database "
         "is down"),
    Case("model-external-outside", "loaders", "ONNX external data at `../../etc/passwd`",
         _onnx(_external("../../etc/passwd")), "outside the model's folder"),
    Case("model-external-truncated", "loaders", "ONNX external data file cut short",
         _onnx(_external("m.weights", truncate=True)), "(truncated or mismatched external data)"),
    Case("data-image-garbage", "loaders", "a `.png` that is not an image",
         _image_folder({"a.png": b"not an image" * 10}), "cannot be read"),
    Case("data-image-sizes", "loaders", "images of different sizes and no resize/crop",
         _image_folder({"a.png": (8, 8), "b.png": (9, 7)}),
         "samples for model input 'image' have different shapes"),
    Case("data-text-not-utf8", "loaders", "a `.txt` data file that is not UTF-8",
         _text("s.txt", b"hello\n\xff\xfe bad\n"), "not UTF-8 text"),
    Case("data-jsonl-bool-label", "loaders", "JSONL label `true` (a bool, not a class id)",
         _text("s.jsonl", b'{"text": "hi", "label": true}\n', labels=True),
         "label field 'label' must be an integer class id (>= 0), got True"),
    # --- 4. synthetic inputs ----------------------------------------------------------------
    Case("synthetic-huge-dims", "synthetic inputs", "ONNX input `[N, 3, 100000, 100000]`",
         _onnx(lambda p: _graph(p, x_shape=["N", 3, 100000, 100000])),
         "synthetic input 'x' would be [32, 3, 100000, 100000] float32"),
    Case("synthetic-huge-declared", "synthetic inputs", "`model.inputs` with a dim of 2·10⁹",
         lambda root: _factory_project(root, "none", shape=["batch", 1, 2_000_000_000, 8]),
         "(axis 2: 2000000000, declared by the model)"),
    Case("synthetic-ids-no-range", "synthetic inputs",
         "int64 input that feeds no embedding, no `range`",
         _onnx(lambda p: _graph(p, x_type=7)),
         "model input 'x' is int64, and nothing in the model says which values are valid"),
    Case("synthetic-ids-factory", "synthetic inputs",
         "factory with an int64 input and no `range`",
         lambda root: _factory_project(root, "none", dtype="int64"),
         "set its range in model.inputs"),
    # --- 5. preflight -----------------------------------------------------------------------
    Case("graph-opset-too-new", "preflight", "ONNX opset 99",
         _onnx(lambda p: _graph(p, opset=99)), "uses opset 99 > supported"),
    Case("graph-ir-too-new", "preflight", "ONNX IR version 99",
         _onnx(lambda p: _graph(p, ir=99)), "has IR version 99 > supported"),
    Case("graph-nan-initializer", "preflight", "an Inf in an initializer",
         _onnx(lambda p: _graph(p, nan=True)), "1 initializer(s) hold NaN or Inf: w"),
    Case("graph-cycle", "preflight", "a graph with a cycle (Add -> MatMul -> Add)",
         _onnx(lambda p: _graph(p, cycle=True)),
         "the graph has a cycle through node(s) add_a, mm_b, relu"),
    Case("weights-nan", "preflight", "factory weights holding a NaN",
         _weights("w.safetensors", _nan_weights), "1 tensor(s) hold NaN or Inf: 1.weight"),
    Case("labels-past-classes", "preflight", "label 12 for a 10-class model",
         _replace_data("evaluation", _npz_arrays(
             image=_digits_images(), label=np.arange(40, dtype=np.int64) % 13)),
         "is outside [0, 9] for a model with 10 outputs"),
    Case("labels-past-classes-factory", "preflight",
         "label 12 for a 10-class factory model (classes known only from its export)",
         _factory_labels_past_classes, "is outside [0, 9] for a model with 10 outputs"),
    Case("labels-negative", "preflight", "a negative label",
         _replace_data("evaluation", _npz_arrays(
             image=_digits_images(), label=np.full(40, -1, np.int64))),
         "class ids start at 0"),
    # --- 6. data types ----------------------------------------------------------------------
    Case("dtype-float64-overflow", "data types", "float64 data beyond float32's range",
         _replace_data("calibration", _npz_arrays(image=_float64_overflow())),
         "has dtype float64 with values up to 1e+300, beyond float32's range"),
    Case("dtype-ids-overflow", "data types", "int64 ids past int32 for an int32 input",
         lambda root: _ids_project(root, np.array([1, 2, 2**40], np.int64)),
         "has int64 values in [1, 1099511627776], outside int32"),
    # --- 7. the store -----------------------------------------------------------------------
    Case("store-linked-stage", "store", "store stage folder that is a symlink elsewhere",
         _linked_stage("stage export"), "export, a symlink to"),
    Case("store-verify-linked-stage", "store", "`store verify` of a symlinked stage folder",
         _linked_stage("store verify"), "stage folder is a symlink to"),
    Case("store-verify-linked-file", "store", "`store verify` of an artifact file that is a link",
         _linked_file, "model.onnx is a symlink to"),
    Case("store-linked-artifact", "store", "an artifact directory that is a symlink elsewhere",
         _linked_artifact, "a symlink to"),
    # --- 10. names (issue 25): one rule for every name that becomes a path, key or lock -----
    Case("name-dotdot", "names", "`model.name: ../x` (would write outside the project)",
         _raw("model: {name: ../x, source: {builtin: digits}}\n"),
         "field 'model.name': not a valid name (it contains '/')"),
    Case("name-slash", "names", "`model.name: team/model` (a path separator)",
         _raw("model: {name: team/model, source: {builtin: digits}}\n"),
         "field 'model.name': not a valid name (it contains '/')"),
    Case("name-300-chars", "names", "a model name of 300 characters",
         _raw(f"model: {{name: {'a' * 300}, source: {{builtin: digits}}}}\n"),
         "not a valid name (it has 300 characters)"),
    Case("name-leading-dashes", "names", "`model.name: --int8` (reads as an option)",
         _raw("model: {name: --int8, source: {builtin: digits}}\n"),
         "not a valid name (it starts with '-')"),
    Case("name-huge-string", "names", "a 5 MB name (a params file over 1 MiB)",
         _raw("model: {name: " + "a" * 5_000_000 + ", source: {builtin: digits}}\n"),
         "a YAML file trtflow reads may have at most 1,048,576 (1 MiB)"),
    Case("name-long-value", "names", "a 10,000-character value (within 1 MiB)",
         _raw(f"model: {{name: {'a' * 10_000}, source: {{builtin: digits}}}}\n"),
         "a value of 10,000 characters; at most 4,096 are accepted"),
    Case("name-huge-list", "names", "a list of 20,000 batch sizes",
         _raw(_DIGITS + "validate: {batch_sizes: [" + ", ".join(["1"] * 20_000) + "]}\n"),
         "a list of more than 10,000 items"),
    Case("bucket-slash", "names", "`publish.bucket: engines/prod`",
         _digits_body(lambda b: b.update(publish={"bucket": "engines/prod"})),
         "field 'publish.bucket': not a valid S3 bucket name (it contains '/')"),
    Case("bucket-double-dot", "names", "`publish.bucket: engines..prod`",
         _digits_body(lambda b: b.update(publish={"bucket": "engines..prod"})),
         "not a valid S3 bucket name (it has '..'"),
    Case("bucket-ip", "names", "`publish.bucket: 10.0.0.1` (an IP address)",
         _digits_body(lambda b: b.update(publish={"bucket": "10.0.0.1"})),
         "not a valid S3 bucket name (it is an IP address)"),
    Case("bucket-upper-case", "names", "`publish.bucket: Engines` (upper case)",
         _digits_body(lambda b: b.update(publish={"bucket": "Engines"})),
         "not a valid S3 bucket name (it contains 'E')"),
    # --- 11. shapes that validate nothing (issue 25) ----------------------------------------
    Case("shape-batch-collapse", "shapes",
         "an output that means over the batch axis (`[N, 4]` -> `[1, 4]`)",
         _onnx(lambda p: _reduce_graph(p)),
         "the exported graph's output 'y' has shape [1, 4] for a batch of 4 input row(s): "
         "outputs must keep the batch dimension of the inputs (4 rows, got 1)"),
    Case("shape-static-batch-int8", "shapes",
         "an int8 target for a model whose input fixes the batch (`[4, 1, 8, 8]`)",
         _static_int8, "fix the batch size to 4: re-export the model with a dynamic batch axis"),
    # --- 12. model sources named for what is wrong (issue 25) -------------------------------
    Case("model-external-symlink", "loaders", "ONNX external data that is a symlink",
         _onnx(_linked_external), "keeps its data in m.weights, which is a symlink to"),
    Case("factory-meta-device", "loaders", "a factory returning a module on the `meta` device",
         _odd_factory("    with torch.device('meta'):\n"
                      "        return torch.nn.Sequential(torch.nn.Flatten(), "
                      "torch.nn.Linear(64, 10))\n"),
         "returned a module on the 'meta' device (2 tensor(s) without data, e.g. '1.weight')"),
    Case("factory-bn-negative-variance", "preflight",
         "a BatchNorm whose running variance is negative",
         _odd_factory("    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), "
                      "torch.nn.BatchNorm2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 10))\n"
                      "    model[1].running_var[0] = -0.25\n    return model\n"),
         "BatchNorm '1' has a negative running variance (-0.25 at channel 0"),
    Case("init-same-default-name", "init", "`init m.pt2` where params/m.yaml is `m.onnx`'s",
         _init_second_source, "model name 'm' is already used by params/m.yaml for another "
         "source (onnx: m.onnx"),
    Case("init-input-bad-shape", "init", "`init --input image:batch,-3` (a negative dim)",
         lambda root: Call(["init", "tiny_factory:make_model", "--input", "image:batch,-3"]),
         "dim '-3' is neither a positive number nor a name"),
    # --- 9. untrained models ----------------------------------------------------------------
    Case("factory-no-weights", "untrained model", "factory source without `weights`",
         lambda root: _factory_project(root, None, command="run"),
         "a factory source needs 'weights'"),
    Case("factory-weights-null", "untrained model", "factory source with `weights: null`",
         lambda root: (_factory_project(root, None, command="run"),
                       (root / "p.yaml").write_text((root / "p.yaml").read_text().replace(
                           "factory: tiny_factory:make_model",
                           "factory: tiny_factory:make_model\n    weights: null")),
                       Call(["run", "p.yaml"], env={"PYTHONPATH": str(root)}))[-1],
         "write 'weights: none' if that is really meant"),
    Case("untrained-floor", "untrained model",
         "`weights: none` (untrained) on labelled digits: every relative gate passes",
         lambda root: _factory_project(
             root, "none", command="run",
             data={"evaluation": {"npz": "data/digits/evaluation.npz", "labels": "label"}}),
         "min_accuracy: measured", exit_code=3),
]

SLOW = {c.id for c in HARDENING} - {
    "yaml-duplicate-key", "yaml-true-as-int", "yaml-yes-as-bool", "yaml-alias",
    "ignored-opset-onnx-source", "factory-no-weights", "data-bare-npy", "store-verify-linked-stage",
    "name-dotdot", "name-slash", "name-300-chars", "name-leading-dashes", "name-huge-string",
    "name-long-value", "name-huge-list", "bucket-slash", "bucket-double-dot", "bucket-ip",
    "bucket-upper-case",
}
HARDENING = [Case(c.id, c.group, c.what, c.setup, c.expect, c.exit_code, c.id in SLOW)
             for c in HARDENING]

COMMANDS = {
    "export-opset-unreachable": "stage export", "weights-torch-as-safetensors": "stage export",
    "weights-raw-pickle": "stage export", "weights-header-too-long": "stage export",
    "weights-header-not-json": "stage export", "weights-offsets-lie": "stage export",
    "weights-shape-lies": "stage export", "weights-nan": "stage export",
    "synthetic-huge-declared": "stage export", "synthetic-ids-factory": "stage export",
    "store-linked-stage": "stage export", "store-verify-linked-stage": "store verify",
    "store-verify-linked-file": "store verify", "store-linked-artifact": "stage export",
    "model-pt2-pickled-inputs": "stage export", "factory-meta-device": "stage export",
    "factory-bn-negative-variance": "stage export", "init-same-default-name": "init",
    "init-input-bad-shape": "init",
}
# Cases whose failure comes after stages ran, by design, and what they may change: a
# gate decides on a compiled engine (the flow ran: its runs are recorded, nothing is
# registered).
CHANGES_STATE = {
    "untrained-floor": {"store", "mlflow", "prefect", "prefect_results"},
    # the class count of a factory model is known only once it is exported: the check runs
    # inside the export task, before its artifact is committed (store and MLflow stay as
    # they were), so Prefect records that failed flow run
    "labels-past-classes-factory": {"prefect", "prefect_results"},
    # an output's rows are known only once the model runs on a batch: cleanup's parity run
    # refuses it (validate checks again), after export stored its artifact and the flow
    # recorded its runs (nothing is registered)
    "shape-batch-collapse": {"store", "mlflow", "prefect", "prefect_results"},
}
