"""The catalogue of bad inputs: each builds one broken project and names the CLI call,
the message excerpt a user must see and the exit code.

`python -m tests.reliability.catalogue > docs/bad_inputs.md` writes the table the
README shows; a test checks that file is this catalogue's rendering.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..integration.s3_server import TEST_ENV, free_port


@dataclass
class Call:
    """What one case runs: CLI arguments, extra environment, and an undo step."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    teardown: Callable[[], None] | None = None
    skip: str | None = None  # why this case cannot run here


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    what: str  # the bad input, as the table says it
    setup: Callable[[Path], Call]
    expect: str  # excerpt of the one-paragraph message
    exit_code: int = 2
    slow: bool = False  # imports the ML stack (seconds each): `make reliability` only

    @property
    def command(self) -> str:
        """The CLI command it runs (checked against the call by the test)."""
        default = "check-cache" if self.group == "calibration cache" else "run"
        return _COMMANDS.get(self.id, default)


def _params(root: Path, data: dict | None = None, name: str = "p.yaml", **model: object
            ) -> Path:
    """A small params file: `model` fields, or the digits demo when none are given."""
    body: dict = data or {
        "model": {"name": "digits", "source": {"builtin": "digits"}, **model},
        "data": {"calibration": {"npz": "data/digits/calibration.npz"},
                 "evaluation": {"npz": "data/digits/evaluation.npz", "labels": "label"}},
        "targets": {"fp32": {"precision": "fp32"}, "int8": {"precision": "int8"}},
        "validate": {"warmup": 1, "iterations": 3, "batch_sizes": [1]},
    }
    path = root / name
    path.write_text(yaml.safe_dump(body) if not isinstance(body, str) else body)
    return path


def _raw(text: str) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        (root / "p.yaml").write_text(text)
        return Call(["run", "p.yaml"])
    return setup


def _digits_with(section: str, **values: object) -> Callable[[Path], Call]:
    """The digits params with one section changed; `trtflow run` on it."""
    def setup(root: Path) -> Call:
        path = _params(root)
        body = yaml.safe_load(path.read_text())
        node = body
        *parents, leaf = section.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {**node.get(leaf, {}), **values} if values else None
        path.write_text(yaml.safe_dump(body))
        return Call(["run", "p.yaml"])
    return setup


def _tiny_onnx(root: Path, name: str = "m.onnx") -> Path:
    import onnx

    from ..unit.tiny import conv_bn_graph

    onnx.save(conv_bn_graph(), root / name)
    return root / name


def _onnx_project(root: Path, model: str = "m.onnx", command: str = "run",
                  targets: dict | None = None) -> Call:
    _params(root, {"model": {"name": "m", "source": {"onnx": model}},
                   "targets": targets or {"fp32": {"precision": "fp32"}},
                   "validate": {"warmup": 1, "iterations": 3, "batch_sizes": [1]}})
    if command == "run":
        return Call(["run", "p.yaml"])
    return Call(["stage", command, "--params", "p.yaml", "-t", "fp32"])


def _custom_op(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")],
                              "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("com.example", 1)]),
              path)


def _matmul(path: Path, x_shape: list | None) -> None:
    """x @ w with w 4x3: an input without a shape, or whose inner dim must be 4."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                              [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def _truncated(path: Path) -> None:
    from ..unit.tiny import conv_bn_graph

    data = conv_bn_graph().SerializeToString()
    path.write_bytes(data[: len(data) // 2])


def _external_data_missing(path: Path) -> None:
    import onnx

    from ..unit.tiny import conv_bn_graph

    onnx.save_model(conv_bn_graph(), path, save_as_external_data=True,
                    location="m.weights", size_threshold=0)
    (path.parent / "m.weights").unlink()


FACTORY = "tiny_factory:make_model"


def _factory(weights: str | None, write: Callable[[Path], None] | None,
             factory: str = FACTORY) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        (root / "tiny_factory.py").write_text(
            "import torch\n\n\ndef make_model():\n    return torch.nn.Linear(4, 3)\n")
        if write is not None:
            write(root)
        source: dict = {"factory": factory}
        if weights:
            source["weights"] = weights
        _params(root, {"model": {"name": "f", "source": source,
                                 "inputs": [{"name": "x", "shape": ["batch", 4]}]}})
        return Call(["stage", "export", "--params", "p.yaml"], env={"PYTHONPATH": str(root)})
    return setup


def _pickled_weights(root: Path) -> None:
    import torch

    torch.save({"weight": torch.zeros(3, 4), "hook": _Evil()}, root / "w.pt")


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("this would run at load time",))


def _wrong_keys(root: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(3, 4)}, str(root / "w.safetensors"))


def _npz(split: str, **arrays: np.ndarray) -> Callable[[Path], Call]:
    """The digits project with data/digits/<split>.npz replaced by `arrays`."""
    def setup(root: Path) -> Call:
        _params(root)
        path = root / "data" / "digits" / f"{split}.npz"
        path.unlink(missing_ok=True)
        if arrays:
            np.savez(path, **arrays)
        return Call(["run", "p.yaml"])
    return setup


def _digits_images(n: int = 40) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (n, 1, 8, 8)).astype(np.float32)


def _with_bad_values(value: float) -> np.ndarray:
    images = _digits_images()
    images[7, 0, 3, 3] = value
    return images


def _garbage_npz(root: Path) -> Call:
    _params(root)
    (root / "data" / "digits" / "calibration.npz").write_bytes(b"not a zip file\n" * 10)
    return Call(["run", "p.yaml"])


def _cache(text: str, graph: Callable[[Path], None] | None = None) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        model = _tiny_onnx(root)
        if graph is not None:
            graph(model)
        (root / "calibration.cache").write_text(text)
        return Call(["check-cache", "calibration.cache", "m.onnx"])
    return setup


_HEADER = "TRT-100300-EntropyCalibration2\n"


def _other_graph(path: Path) -> None:
    _custom_op(path.with_name("other.onnx"))


def _mount_tmpfs(target: Path, options: str) -> str | None:
    """Mount a tmpfs at `target`; None, or why it could not be mounted here."""
    target.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                         capture_output=True, text=True)
    return None if res.returncode == 0 else f"cannot mount a tmpfs: {res.stderr.strip()}"


def _umount(target: Path) -> Callable[[], None]:
    return lambda: subprocess.run(["umount", "-l", str(target)], check=False)


def _disk_full(root: Path) -> Call:
    _tiny_onnx(root)
    call = _onnx_project(root, command="export")
    store = root / ".trtflow" / "store"
    why = _mount_tmpfs(store, "size=64k")
    if why:
        return Call([], skip=why)
    call.teardown = _umount(store)
    try:  # leave no free block
        with open(store / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass
    return call


def _read_only_store(root: Path) -> Call:
    _tiny_onnx(root)
    call = _onnx_project(root, command="export")
    store = root / ".trtflow" / "store"
    why = _mount_tmpfs(store, "ro,size=1m")
    if why:
        return Call([], skip=why)
    call.teardown = _umount(store)
    return call


def _closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}"


def _s3_env(endpoint: str) -> dict[str, str]:
    return {**TEST_ENV, "AWS_ENDPOINT_URL_S3": endpoint, "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_MAX_ATTEMPTS": "2"}


def _mlflow_down(root: Path) -> Call:
    _tiny_onnx(root)
    call = _onnx_project(root)
    call.env = {"MLFLOW_TRACKING_URI": _closed_port()}
    return call


def _publish_unreachable(root: Path) -> Call:
    _tiny_onnx(root)
    call = _onnx_project(root)
    endpoint = _closed_port()
    return Call(["publish", "p.yaml", "-t", "fp32", "--bucket", "engines", "--version", "1",
                 "--endpoint-url", endpoint], env=_s3_env(endpoint), teardown=call.teardown)


def _fetch_unreachable(root: Path) -> Call:
    endpoint = _closed_port()
    return Call(["fetch", "m", "1", "engine", "--bucket", "engines", "--endpoint-url", endpoint],
                env=_s3_env(endpoint))


def _fetch_over_existing(root: Path) -> Call:
    (root / "engine").mkdir()
    (root / "engine" / "keep.txt").write_text("mine")
    endpoint = _closed_port()
    return Call(["fetch", "m", "1", "engine", "--bucket", "engines", "--endpoint-url", endpoint],
                env=_s3_env(endpoint))


def _tampered_store(root: Path) -> Call:
    """A real artifact (the export of a tiny ONNX model), then one byte changed on disk."""
    from .conftest import project_env, trtflow

    _tiny_onnx(root)
    _onnx_project(root)
    res = trtflow("stage", "export", "--params", "p.yaml", cwd=root, env=project_env())
    assert res.returncode == 0, res.stderr
    model = next((root / ".trtflow" / "store" / "export").glob("*/model.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    shutil.rmtree(root / "build", ignore_errors=True)
    return Call(["store", "verify"])


def _path_outside(field_path: str) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        outside = root.parent / f"{root.name}-outside.onnx"
        _tiny_onnx(root.parent, outside.name)
        value = f"../{outside.name}" if field_path == "relative" else str(outside)
        return _onnx_project(root, model=value)
    return setup


def _data_outside(root: Path) -> Call:
    path = _params(root)
    body = yaml.safe_load(path.read_text())
    shutil.copy(root / "data" / "digits" / "calibration.npz", root.parent / "cal-outside.npz")
    body["data"]["calibration"]["npz"] = "data/../../cal-outside.npz"
    path.write_text(yaml.safe_dump(body))
    return Call(["run", "p.yaml"])


def _int8_without_data(root: Path) -> Call:
    _tiny_onnx(root)
    _onnx_project(root, targets={"int8": {"precision": "int8"}})
    return Call(["stage", "build", "--params", "p.yaml", "-t", "int8"])


def _unknown_target(root: Path) -> Call:
    _params(root)
    return Call(["run", "p.yaml", "-t", "nope"])


def _onnx_case(make: Callable[[Path], None] | None, command: str = "run"
               ) -> Callable[[Path], Call]:
    def setup(root: Path) -> Call:
        if make is not None:
            make(root / "m.onnx")
        return _onnx_project(root, command=command)
    return setup


def _push(path: str, git_dvc: bool = False, remote: bool = False) -> Callable[[Path], Call]:
    """`trtflow data push PATH`; with `git_dvc` in a git + DVC repo (no remote unless
    `remote`); with `remote`, params/digits.yaml reads PATH and the events are emitted."""
    def setup(root: Path) -> Call:
        if git_dvc:
            subprocess.run(["git", "init", "-q"], cwd=root, check=True)
            dvc = str(Path(sys.executable).with_name("dvc"))
            subprocess.run([dvc, "init", "-q"], cwd=root, check=True)
            if remote:
                subprocess.run([dvc, "remote", "add", "-d", "local", str(root / "remote")],
                               cwd=root, check=True, capture_output=True)
        if remote:
            (root / "params").mkdir()
            _params(root, name="params/digits.yaml")
            return Call(["data", "push", path])
        return Call(["data", "push", path, "--no-emit"])
    return setup


CASES: list[Case] = [
    # --- params --------------------------------------------------------------------------
    Case("params-missing", "params", "params file that does not exist",
         lambda root: Call(["run", "nope.yaml"]), "params file nope.yaml does not exist"),
    Case("params-bad-yaml", "params", "unclosed brace (not YAML)",
         _raw("model: {name: x, source: {builtin: digits}\n"), "p.yaml: not valid YAML"),
    Case("params-empty", "params", "empty file",
         _raw(""), "expected a mapping of sections at the top, got NoneType"),
    Case("params-list", "params", "a YAML list at the top",
         _raw("- model\n- data\n"), "expected a mapping of sections at the top, got list"),
    Case("params-unknown-section", "params", "unknown top-level field `tragets`",
         _raw("model: {name: x, source: {builtin: digits}}\ntragets: {}\n"),
         "field 'tragets' is not a known field"),
    Case("params-unknown-nested", "params", "unknown field `model.source.onnx_path`",
         _raw("model: {name: x, source: {onnx_path: m.onnx}}\n"),
         "field 'model.source.onnx_path' is not a known field"),
    Case("params-wrong-type", "params", "`data.batch_size: big` (wrong type)",
         _digits_with("data", batch_size="big"), "field 'data.batch_size'"),
    Case("params-missing-field", "params", "no `model.name`",
         _raw("model: {source: {builtin: digits}}\n"),
         "field 'model.name' is required but missing"),
    Case("params-unknown-builtin", "params", "`builtin: vgg` (unknown model)",
         _raw("model: {name: x, source: {builtin: vgg}}\n"), "field 'model.source.builtin'"),
    Case("params-two-sources", "params", "two model sources at once",
         _raw("model: {name: x, source: {builtin: digits, onnx: m.onnx}}\n"),
         "exactly one of builtin, onnx, exported_program, factory, mlflow, decoder must be set"),
    Case("params-opset-range", "params", "`export.opset: 7` (out of range)",
         _digits_with("export", opset=7), "field 'export.opset'"),
    Case("params-batch-size-zero", "params", "`validate.batch_sizes: [0]`",
         _digits_with("validate", batch_sizes=[0]), "field 'validate.batch_sizes.0'"),
    Case("params-unknown-target", "params", "`--target nope` (not in params)",
         _unknown_target, "target 'nope' is not defined in params.targets"),
    Case("params-path-dotdot", "params", "model path `../x.onnx` (leaves the project)",
         _path_outside("relative"), "model.source.onnx: path '../"),
    Case("params-path-absolute", "params", "absolute model path outside the project",
         _path_outside("absolute"), "leaves the project directory"),
    Case("params-data-dotdot", "params", "data path `data/../../x.npz` (leaves the project)",
         _data_outside, "data source 'npz': path 'data/../../cal-outside.npz' leaves the "
         "project directory"),
    Case("params-int8-no-data", "params", "int8 target without `data.calibration`",
         _int8_without_data, "an int8 target needs data.calibration"),
    # --- model files ---------------------------------------------------------------------
    Case("model-missing", "model file", "ONNX file that does not exist",
         _onnx_case(None), "model.source.onnx: file"),
    Case("model-truncated", "model file", "truncated ONNX file",
         _onnx_case(_truncated), "m.onnx is corrupt or truncated"),
    Case("model-not-onnx", "model file", "text bytes named `.onnx`",
         _onnx_case(lambda p: p.write_text("not a model\n" * 20)),
         "m.onnx is corrupt or truncated"),
    Case("model-external-data", "model file", "ONNX whose external weights file is missing",
         _onnx_case(_external_data_missing), "keeps its weights in m.weights, which is missing"),
    Case("model-pt2-not-zip", "model file", "`.pt2` that is not a torch.export archive",
         lambda root: (root.joinpath("m.pt2").write_bytes(b"\x00junk" * 50),
                       _params(root, {"model": {"name": "m",
                                                "source": {"exported_program": "m.pt2"}}}),
                       Call(["stage", "export", "--params", "p.yaml"]))[-1],
         "is not a torch.export archive"),
    Case("model-pickle", "model file", "`.pt` weights holding a pickled object",
         _factory("w.pt", _pickled_weights),
         "refused without unpickling code (it pickles the Python object"),
    Case("model-weights-mismatch", "model file", "weights whose keys do not fit the factory",
         _factory("w.safetensors", _wrong_keys), "does not fit 'tiny_factory:make_model'"),
    Case("model-factory-missing", "model file", "factory module that does not exist",
         _factory("none", None, factory="no_such_module:make"),
         "model.source.factory 'no_such_module:make' is not importable"),
    # --- ONNX graphs ---------------------------------------------------------------------
    Case("graph-custom-op", "ONNX graph", "op from a custom domain (`com.example:FancyOp`)",
         _onnx_case(_custom_op), "uses op com.example:FancyOp, which ONNX Runtime does not"),
    Case("graph-no-rank", "ONNX graph", "input without a shape (unknown rank)",
         _onnx_case(lambda p: _matmul(p, None)), "input 'x' has no shape (unknown rank)"),
    Case("graph-dynamic-dim", "ONNX graph", "dynamic inner dim `[N, K]` that must be 4",
         _onnx_case(lambda p: _matmul(p, ["N", "K"]), command="cleanup"),
         "Dynamic dims other than the batch are filled with 16"),
    # --- calibration / evaluation data ---------------------------------------------------
    Case("data-missing", "data", "calibration `.npz` that does not exist",
         _npz("calibration"), "calibration.npz does not exist"),
    Case("data-not-npz", "data", "calibration file that is not an `.npz`",
         _garbage_npz, "is not a readable .npz"),
    Case("data-empty", "data", "calibration arrays with zero samples",
         _npz("calibration", image=np.zeros((0, 1, 8, 8), np.float32)),
         "array 'image' holds no samples"),
    Case("data-nan", "data", "a NaN in the calibration images",
         _npz("calibration", image=_with_bad_values(np.nan)),
         "holds 1 NaN/Inf value(s) (first in sample 7)"),
    Case("data-inf", "data", "an Inf in the evaluation images",
         _npz("evaluation", image=_with_bad_values(np.inf),
              label=np.zeros(40, np.int64)), "holds 1 NaN/Inf value(s)"),
    Case("data-wrong-shape", "data", "images shaped `[N, 3, 8, 8]` for a `[N, 1, 8, 8]` input",
         _npz("calibration", image=np.zeros((40, 3, 8, 8), np.float32)),
         "axis 1: 3 != 1"),
    Case("data-wrong-dtype", "data", "integer images for a float input",
         _npz("calibration", image=np.zeros((40, 1, 8, 8), np.int64)),
         "has dtype int64, but model input 'image' expects float32"),
    Case("data-missing-input", "data", "array named `img`, the model's input is `image`",
         _npz("calibration", img=_digits_images()),
         "no array for model input(s) ['image']"),
    Case("data-float-labels", "data", "float labels",
         _npz("evaluation", image=_digits_images(), label=np.zeros(40, np.float32)),
         "labels 'label' must be integer class ids"),
    Case("data-length-mismatch", "data", "40 images but 30 labels",
         _npz("evaluation", image=_digits_images(), label=np.zeros(30, np.int64)),
         "arrays have different lengths [30, 40]"),
    # --- calibration caches --------------------------------------------------------------
    Case("cache-wrong-model", "calibration cache", "cache written for another graph",
         _cache(_HEADER + "encoder/attn_out: 3c010204\n"),
         "1 of its 1 tensor(s) are not in m.onnx: encoder/attn_out"),
    Case("cache-corrupt-line", "calibration cache", "a line without `name: hex`",
         _cache(_HEADER + "x: 3c010204\ny 3c010204\n"), "line 3: malformed 'y 3c010204'"),
    Case("cache-zero-scale", "calibration cache", "a zero scale",
         _cache(_HEADER + "x: 00000000\n"), "tensor 'x' has scale 0.0 (0x00000000)"),
    Case("cache-negative-scale", "calibration cache", "a negative scale",
         _cache(_HEADER + "x: bc010204\n"), "a scale must be positive and finite"),
    Case("cache-bad-header", "calibration cache", "first line not `TRT-<version>-<algorithm>`",
         _cache("TensorRT calibration\nx: 3c010204\n"), "line 1: bad header"),
    # --- environment ---------------------------------------------------------------------
    Case("env-mlflow-down", "environment", "`MLFLOW_TRACKING_URI` at a closed port",
         _mlflow_down, "(MLFLOW_TRACKING_URI) is unreachable"),
    Case("env-s3-publish-down", "environment", "S3 endpoint at a closed port (publish)",
         _publish_unreachable, "is unreachable"),
    Case("env-s3-fetch-down", "environment", "S3 endpoint at a closed port (fetch)",
         _fetch_unreachable, "is unreachable"),
    Case("env-fetch-dest-exists", "environment", "fetch into a non-empty directory",
         _fetch_over_existing, "fetch destination engine already exists"),
    Case("env-disk-full", "environment", "store on a full disk (tmpfs)",
         _disk_full, "into the store"),
    Case("env-read-only-store", "environment", "store on a read-only mount",
         _read_only_store, "Read-only file system"),
    Case("env-tampered-store", "environment", "one byte of a stored artifact changed",
         _tampered_store, "1 of 1 artifacts"),
    Case("data-push-missing", "data", "`data push` of a path that does not exist",
         _push("data/nothing-here"), "data/nothing-here: no such file or folder"),
    Case("data-push-outside", "data", "`data push` of a path outside the project",
         _push("/etc/hostname"), "is outside the project"),
    Case("data-push-no-remote", "data", "`data push` with no DVC remote configured",
         _push("data/digits", git_dvc=True), "no DVC remote is configured"),
    Case("data-push-no-server", "environment", "`data push` with no Prefect server to tell",
         _push("data/digits", git_dvc=True, remote=True), "no Prefect server for this project"),
]

# Cases that import the ML stack (seconds each); the default run keeps one or two per group
SLOW = {
    "params-int8-no-data", "model-missing", "model-not-onnx", "model-external-data",
    "model-pt2-not-zip", "model-weights-mismatch", "model-factory-missing", "graph-no-rank",
    "graph-dynamic-dim", "data-missing", "data-not-npz", "data-empty", "data-inf",
    "data-wrong-dtype", "data-missing-input", "data-float-labels", "data-length-mismatch",
    "cache-corrupt-line", "cache-negative-scale", "cache-bad-header", "env-s3-publish-down",
}
CASES = [Case(c.id, c.group, c.what, c.setup, c.expect, c.exit_code, c.id in SLOW)
         for c in CASES]

# issue 18's classes (they use the helpers above, hence the late import; run as a script,
# the table comes from the imported module instead: see the end)
if __name__ != "__main__":
    from .catalogue_hardening import CHANGES_STATE, COMMANDS, HARDENING

    CASES += HARDENING
else:
    CHANGES_STATE, COMMANDS = {}, {}

# Extra assertions on the message beyond the excerpt (what the input was, what was expected).
ALSO = {
    "env-disk-full": "No space left on device",
    "env-tampered-store": "fail verification",
    "params-path-absolute": "expected a path inside it",
}


# The rules the cases check, as users read them (docs/bad_inputs.md).
RULES = [
    "## Rules",
    "",
    "- **YAML** (params and MLmodel files) is read as YAML 1.2: only `true`/`false` are "
    "booleans (`yes`/`no`/`on`/`off` are strings), `1e-4` is a float, a number with a "
    "leading zero (`010`) is refused (YAML 1.1 would read octal), a key given twice is "
    "refused naming both lines, and anchors/aliases (`&x`, `*x`, `<<`) are refused "
    "outright: params are written out in full.",
    "- **Types are strict:** `true` is not an integer, `'5'` is not a number, a bool "
    "field takes only `true`/`false`.",
    "- **Nothing set is ignored:** a field no stage would read (`export.opset` for an ONNX "
    "source, `model.inputs` of a builtin, `preprocess` on `.npz` data, `select` on a "
    "target that is not `best`...) is an error; `export.opset` is honoured or the export "
    "fails naming the opset written (torch's exporter writes >= 18; lower ones only where "
    "ONNX's version converter manages).",
    "- **Declared sizes are checked before allocation** against the memory budget (a "
    "quarter of RAM, at most 8 GiB; `$TRTFLOW_MEMORY_BUDGET`, e.g. `2G`): `.npy` headers "
    "in an `.npz` (and against the member's bytes), safetensors headers (against the "
    "file), image dimensions, synthetic inputs from a model's dims (the error names the "
    "dim). Pickle is refused everywhere (object arrays, pickles named `.npz` or "
    "`.safetensors`, pickled `.pt` objects).",
    "- **Integer inputs without data** take their range from the embedding/Gather table "
    "they index (ONNX graphs, `.pt2` programs); otherwise `model.inputs[].range` is "
    "required.",
    "- **Data types:** data of another dtype than the input is cast only when every value "
    "fits (float16 -> float32, float64 within float32's range, int64 ids within int32), "
    "with a warning naming both dtypes; otherwise refused.",
    "- **Before any stage stores an artifact:** the graph's opset/IR against this ONNX "
    "Runtime, cycles (named nodes), NaN/Inf initializers or weights (named), labels "
    "against the model's classes (where the class count is known without running it), "
    "the first batch of image/text/function data.",
    "- **The store stays inside itself:** a stage folder, artifact or file inside the "
    "store that is a symlink is refused (and reported by `trtflow store verify`; `gc` "
    "removes the link, never its target). The store itself may be a link "
    "(`.trtflow/store -> /big/disk/store`): a store on another disk is allowed.",
    "- **Untrained models:** a factory source needs `weights`, or `weights: none` said "
    "explicitly; and every labelled validation has an absolute floor, "
    "`gates.min_accuracy` (default: the share of the most common label plus a fifth of "
    "the way to 1, i.e. 0.28 for ten balanced classes; `0` turns it off).",
    "- **Names** (model, target, experiment: they become paths, lock files, MLflow names "
    "and S3 keys) are 1 to 64 characters of letters, digits, `.`, `_` and `-`, starting "
    "with a letter or digit (so no `../`, no `/`, no leading `--`); an S3 bucket follows "
    "S3's rules (3 to 63 lower-case letters, digits, `.`, `-`; no `..`; not an IP "
    "address), checked when params load, before any stage. A params file is at most 1 MiB, "
    "a value at most 4,096 characters, a list at most 10,000 items, refused before the "
    "rest is parsed. `trtflow init` refuses a default name another source's params use "
    "(`m.onnx` and `m.pt2`) and says `--name`.",
    "- **Shapes:** every output keeps the batch dimension of the inputs and the labels "
    "have as many rows as the outputs (the error names the output and both counts). A "
    "model whose inputs fix the batch (`[4, 1, 8, 8]`) compiles and validates at that "
    "batch (evaluation in chunks of it, latency at it); quantized targets on it are "
    "refused before any stage (calibration runs other batch sizes). Cleanup never "
    "renames a graph input or output (a tensor that is both keeps its name).",
    "- **Nothing changes on rejection:** each case below checks that the store's files, "
    "MLflow's runs and registry and Prefect's runs and results are as they were, and that "
    "nothing was written beside the project (the untrained-model gate and the "
    "batch-collapsing output compile on purpose, and check nothing is registered).",
    "",
]


def render_table() -> str:
    lines = ["# Bad inputs and what trtflow says",
             "",
             "Generated from `tests/reliability/catalogue.py` (`python -m "
             "tests.reliability.catalogue > docs/bad_inputs.md`); `pytest "
             "tests/reliability/test_bad_inputs.py` runs every row through the CLI in a "
             "subprocess and checks the exit code, the message, that no traceback is printed "
             "(`trtflow --debug` prints it) and that nothing half-written is left.",
             "",
             f"{len(CASES)} bad inputs.",
             "",
             *RULES,
             "| # | group | bad input | command | message contains | exit |",
             "| --- | --- | --- | --- | --- | --- |"]
    for i, case in enumerate(CASES, 1):
        excerpt = case.expect.replace("|", "\\|")
        lines.append(f"| {i} | {case.group} | {case.what} | `trtflow {case.command}` | "
                     f"{excerpt} | {case.exit_code} |")
    return "\n".join(lines) + "\n"


# The command each case runs, where it is not `run` (keeps the table honest without
# running setups to find out).
_COMMANDS = {
    "params-int8-no-data": "stage build", "model-pt2-not-zip": "stage export",
    "model-pickle": "stage export",
    "model-weights-mismatch": "stage export", "model-factory-missing": "stage export",
    "graph-dynamic-dim": "stage cleanup", "env-s3-publish-down": "publish",
    "env-s3-fetch-down": "fetch", "env-fetch-dest-exists": "fetch",
    "env-disk-full": "stage export", "env-read-only-store": "stage export",
    "env-tampered-store": "store verify", "data-push-missing": "data push",
    "data-push-outside": "data push", "data-push-no-remote": "data push",
    "data-push-no-server": "data push",
    **COMMANDS,
}
# Cases whose store is damaged on purpose (verify must say so), and cases that change
# the project's state by design (a gate failing after the stages ran).
CORRUPT_ON_PURPOSE = {"env-tampered-store", "store-verify-linked-stage",
                      "store-verify-linked-file", "store-linked-stage", "store-linked-artifact"}
STATE_CHANGES = {**CHANGES_STATE}  # publish checks the bucket before it builds anything


if __name__ == "__main__":
    from tests.reliability.catalogue import render_table as render_all

    print(render_all(), end="")
