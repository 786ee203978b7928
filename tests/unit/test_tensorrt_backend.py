"""TensorRT backend (through Polygraphy) and the stubs mypy checks it against.

The engine tests (marker `tensorrt`) need a real TensorRT (`tensorrt.Builder`); where
there is none they skip with that reason. TensorRT is installable on no machine of this
project, so here they always skip (`make trt-check` runs them in NVIDIA's container).
Tested everywhere: the build plan, the profile for every dynamic axis, Polygraphy's
CreateConfig built from them, the calibration-cache completeness error, the fusion
report on given inspector JSON, and typings/tensorrt and typings/polygraphy checked
name by name against NVIDIA's bindings (a committed fixture) and the installed Polygraphy.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from trtflow.backends import (
    Calibration,
    build_engine,
    load_engine,
    tensorrt_backend,
)
from trtflow.backends.tensorrt_network import profile_shapes
from trtflow.backends.tensorrt_plan import (
    BuildPlan,
    ConfigOptions,
    check_cache_complete,
    create_config,
    plan_build,
)
from trtflow.backends.tensorrt_report import fusion_report
from trtflow.errors import BuildError, CalibrationError
from trtflow.params import Target
from trtflow.quant.artifact import CACHE_FILE, FP8_QDQ_FILE, QDQ_FILE
from trtflow.quant.cache import write_calibration_cache
from trtflow.quant.placement import float_activations

from .test_gpu_backends import feeds, two_branch_graph


def _trt(precision: str, **options: str) -> Target:
    """A tensorrt target on cuda."""
    return Target(backend="tensorrt", device="cuda", precision=precision, **options)  # type: ignore[arg-type]

HAS_TENSORRT = tensorrt_backend.installed_version() is not None
needs_tensorrt = pytest.mark.skipif(
    not HAS_TENSORRT, reason="needs a real TensorRT (tensorrt.Builder); none is installed here")


# --- pure logic: runs everywhere -------------------------------------------------------


def test_plan_on_tensorrt_10_uses_flags_and_allows_the_calibrator() -> None:
    fp16 = plan_build(_trt("fp16"), 10)
    assert fp16.as_dict() == {"graph": "clean", "strongly_typed": False, "flags": ["fp16"],
                              "calibrator": False}
    qdq = plan_build(_trt("int8"), 10)
    assert qdq.graph == "qdq" and qdq.flags == ("int8",)
    legacy = plan_build(
        _trt("int8", int8_source="calibration_cache"), 10)
    assert legacy.graph == "clean" and legacy.calibrator is True
    assert plan_build(_trt("best"), 10).flags == ("int8", "fp16")
    fp32 = plan_build(_trt("fp32"), 10)
    assert fp32.flags == () and not fp32.strongly_typed


def test_plan_on_tensorrt_11_is_strongly_typed() -> None:
    fp16 = plan_build(_trt("fp16"), 11)
    assert fp16.as_dict() == {"graph": "clean_fp16", "strongly_typed": True, "flags": [],
                              "calibrator": False}
    int8 = plan_build(_trt("int8"), 11)
    assert int8.graph == "qdq" and int8.strongly_typed and not int8.flags
    with pytest.raises(BuildError, match="no calibrator interface"):
        plan_build(_trt("int8", int8_source="calibration_cache"), 11)
    # fp16/bf16 on 11 come from the graph's own types: the typed graph TensorRT-RTX gets
    assert plan_build(_trt("bf16"), 11) == BuildPlan("clean_bf16", strongly_typed=True)


def test_bf16_on_tensorrt_10_is_the_bf16_flag() -> None:
    assert plan_build(_trt("bf16"), 10) == BuildPlan("clean", False, ("bf16",))


def test_fp8_builds_the_fp8_qdq_graph_strongly_typed_on_10_and_11() -> None:
    fp8 = _trt("fp8")
    for major in (10, 11):
        assert plan_build(fp8, major) == BuildPlan("fp8_qdq", strongly_typed=True)


def _graph(inputs: list[tuple[str, list[int | str]]]) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", [name], [f"{name}_out"], name=f"relu_{name}")
             for name, _ in inputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(f"{n}_out", TensorProto.FLOAT, None) for n, _ in inputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_profile_covers_every_dynamic_axis_not_only_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save_model(_graph([("input_ids", ["batch", "sequence"]),
                            ("image", [1, 3, "height", 224]),
                            ("fixed", [2, 4])]), str(path))
    shapes = profile_shapes(path, max_batch=16)
    assert shapes == {"input_ids": ((1, 1), (16, 128), (16, 512)),
                      "image": ((1, 3, 1, 224), (1, 3, 128, 224), (1, 3, 512, 224))}


def test_config_is_polygraphys_createconfig_with_tf32_off_and_the_profile(
        tmp_path: Path) -> None:
    from polygraphy.backend.trt import CreateConfig

    shapes = {"input_ids": ((1, 1), (16, 128), (16, 512))}
    timing = tmp_path / "timing.cache"
    fp32 = create_config(plan_build(_trt("fp32"), 10), shapes,
                         ConfigOptions(timing_cache=timing))
    assert isinstance(fp32, CreateConfig)
    assert (fp32.tf32, fp32.fp16, fp32.int8, fp32.fp8) == (False, False, False, False)
    assert fp32.timing_cache_path == str(timing)
    (profile,) = fp32.profiles
    shape = profile["input_ids"]
    assert (shape.min, shape.opt, shape.max) == ((1, 1), (16, 128), (16, 512))
    best = create_config(plan_build(_trt("best"), 10), shapes,
                         ConfigOptions())
    assert (best.int8, best.fp16, best.tf32) == (True, True, False)
    typed = create_config(plan_build(_trt("int8"), 11), shapes,
                          ConfigOptions())
    assert (typed.int8, typed.fp16) == (False, False)
    bf16 = create_config(plan_build(_trt("bf16"), 10), shapes, ConfigOptions())
    assert (bf16.bf16, bf16.fp16, bf16.tf32) == (True, False, False)
    typed_bf16 = create_config(plan_build(_trt("bf16"), 11), shapes, ConfigOptions())
    assert (typed_bf16.bf16, typed_bf16.fp16) == (False, False)  # the graph's types decide


def _calibration(tmp_path: Path, model: onnx.ModelProto, drop: set[str]) -> Path:
    calib = tmp_path / "calib"
    calib.mkdir()
    names = [n for n in float_activations(model) if n not in drop]
    write_calibration_cache(calib / CACHE_FILE, dict.fromkeys(names, 0.05))
    return calib


def test_a_cache_missing_a_tensor_fails_the_tensorrt_build_naming_it(tmp_path: Path) -> None:
    model = two_branch_graph()
    source = tmp_path / "model.onnx"
    onnx.save_model(model, str(source))
    calib = _calibration(tmp_path, model, drop={"sm", "r"})
    out = tmp_path / "engine"
    out.mkdir()
    target = _trt("int8")
    with pytest.raises(CalibrationError,
                       match=r"no scale for 2 of the 11 float activation tensor\(s\) of "
                             r".*model.onnx: sm, r;"):
        build_engine(source, target, out, Calibration(calib))
    assert not any(out.iterdir())


def test_a_complete_cache_passes_the_check(tmp_path: Path) -> None:
    model = two_branch_graph()
    source = tmp_path / "model.onnx"
    onnx.save_model(model, str(source))
    calib = _calibration(tmp_path, model, drop=set())
    scales = check_cache_complete(calib / CACHE_FILE, source)
    assert sorted(scales) == sorted(["x", "img", "mm", "lin", "sm", "ln", "y", "c", "r", "g",
                                     "z"])


def test_fusion_report_from_inspector_json_10_and_11() -> None:
    nodes = [("conv1", "Conv"), ("relu1", "Relu"), ("add1", "Add"), ("fc", "Gemm"),
             ("shape_const", "Constant"), ("folded", "Mul")]
    info_10 = {"Layers": [
        {"Name": "conv1 + relu1 + add1", "LayerType": "CaskConvolution",
         "Metadata": "[ONNX Layer: conv1]\x1f[ONNX Layer: relu1]\x1f[ONNX Layer: add1 | x]",
         "Outputs": [{"Format/Datatype": "Half"}], "TacticName": "sm90_xmma_fprop"},
        {"Name": "fc", "LayerType": "CaskGemm", "Metadata": "[ONNX Layer: fc]",
         "Outputs": [{"Format/Datatype": "Float"}]}],
        "Bindings": ["image", "logits"]}
    report = fusion_report(info_10, nodes)
    assert report["layers"] == 2 and report["fused_layers"] == 1
    assert report["fusion_patterns"] == {"Conv + Relu + Add": 1}
    assert report["rows"][0]["onnx_nodes"] == ["conv1", "relu1", "add1"]
    assert report["precisions"] == {"Half": 1, "Float": 1}
    assert report["unmapped_onnx_nodes"] == 1 and report["unmapped_examples"] == ["folded"]
    assert report["io_tensors"] == ["image", "logits"]
    # 11.x: DataType split from Format, I/O Tensors instead of Bindings; names without metadata
    info_11 = {"Layers": [{"Name": "conv1 + relu1", "LayerType": "CaskConvolution",
                           "Outputs": [{"Format": "kLINEAR", "DataType": "Int8"}]}],
               "I/O Tensors": [{"Name": "image", "IOMode": "Input"}]}
    report = fusion_report(info_11, nodes)
    assert report["rows"][0]["onnx_nodes"] == ["conv1", "relu1"]
    assert report["precisions"] == {"Int8": 1}
    assert report["io_tensors"][0]["Name"] == "image"


@pytest.mark.skipif(HAS_TENSORRT, reason="a real TensorRT is installed")
def test_without_tensorrt_the_build_says_so(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    with pytest.raises(BuildError, match="needs NVIDIA TensorRT 10 or 11"):
        build_engine(source, Target(backend="tensorrt", device="cuda"), tmp_path)
    with pytest.raises(BuildError, match="'tensorrt' on device 'cpu' is not available"):
        build_engine(source, Target(backend="tensorrt", device="cpu"), tmp_path)


# --- a real TensorRT -------------------------------------------------------------------


def _reference(inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(two_branch_graph().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


@needs_tensorrt
@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_run_and_reuse_the_timing_cache(tmp_path: Path, precision: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTFLOW_TIMING_CACHE_DIR", str(tmp_path / "timing"))
    source = tmp_path / "model.onnx"
    onnx.save_model(two_branch_graph(), str(source))
    target = _trt(precision)  # type: ignore[arg-type]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    report = build_engine(source, target, first)
    assert (first / tensorrt_backend.ENGINE_FILE).stat().st_size > 0
    assert report["fusion"]["layers"] > 0 and (first / tensorrt_backend.FUSION_FILE).is_file()
    again = build_engine(source, target, second)
    assert again["tensorrt"]["timing_cache"]["reused_bytes"] > 0
    engine = load_engine(first)
    inputs = feeds(4)
    got = engine.run(inputs)
    tol = 1e-3 if precision == "fp32" else 3e-2
    for name, ref in zip(["y", "z"], _reference(inputs), strict=True):
        np.testing.assert_allclose(got[name], ref, atol=tol, rtol=tol)


def _quantized(tmp_path: Path, precision: str) -> tuple[Path, Path]:
    """The clean graph and a calibrate-stage folder: complete cache plus the Q/DQ model."""
    from trtflow.quant.qdq import insert_qdq, quantizable_activations

    model = two_branch_graph()
    amax = dict.fromkeys(quantizable_activations(model, "tensorrt"), 4.0)
    calib = _calibration(tmp_path, model, drop=set())
    qdq, _ = insert_qdq(model, amax, "tensorrt", precision=precision)  # type: ignore[arg-type]
    name = QDQ_FILE if precision == "int8" else FP8_QDQ_FILE
    onnx.save_model(qdq, str(calib / name))
    source = tmp_path / "model.onnx"
    onnx.save_model(model, str(source))
    return source, calib


@needs_tensorrt
@pytest.mark.tensorrt
@pytest.mark.parametrize("int8_source", ["qdq", "calibration_cache"])
def test_int8_builds_and_runs(tmp_path: Path, int8_source: str) -> None:
    if int8_source == "calibration_cache" and tensorrt_backend.major_version() > 10:
        pytest.skip("TensorRT 11 has no calibrator interface")
    source, calib = _quantized(tmp_path, "int8")
    out = tmp_path / "engine"
    out.mkdir()
    target = _trt("int8",
                    int8_source=int8_source)  # type: ignore[arg-type]
    build_engine(source, target, out, Calibration(calib))
    got = load_engine(out).run(feeds(2))
    ref = _reference(feeds(2))
    assert np.isfinite(got["y"]).all()
    cosine = float(np.dot(got["z"].ravel(), ref[1].ravel()) /
                   (np.linalg.norm(got["z"]) * np.linalg.norm(ref[1])))
    assert cosine > 0.9


@needs_tensorrt
@pytest.mark.tensorrt
def test_fp8_builds_from_the_fp8_qdq_graph(tmp_path: Path) -> None:
    source, calib = _quantized(tmp_path, "fp8")
    out = tmp_path / "engine"
    out.mkdir()
    target = _trt("fp8")
    report = tensorrt_backend.BACKEND.build(source, target, out, Calibration(calib))
    assert report["tensorrt"]["plan"]["graph"] == "fp8_qdq"
    got = load_engine(out).run(feeds(2))
    assert np.isfinite(got["z"]).all()


@needs_tensorrt
@pytest.mark.tensorrt
def test_a_dynamic_sequence_axis_builds_and_runs_two_lengths(tmp_path: Path) -> None:
    path = tmp_path / "seq.onnx"
    onnx.save_model(_graph([("input", ["batch", "sequence", 8])]), str(path))
    out = tmp_path / "engine"
    out.mkdir()
    build_engine(path, Target(backend="tensorrt", device="cuda"), out)
    engine = load_engine(out)
    for length in (7, 300):
        x = np.random.default_rng(length).standard_normal((2, length, 8)).astype(np.float32)
        np.testing.assert_allclose(engine.run({"input": x})["input_out"], np.maximum(x, 0))


# --- the stubs mypy checks the backend against, checked against NVIDIA's own API ---------

TYPINGS = Path(__file__).resolve().parents[2] / "typings"
API = json.loads((TYPINGS / "tensorrt_api" / "tensorrt_python_api.json").read_text())
TRT10, TRT11 = "10.16.1", "11.1.0"


def _stub_names(path: Path) -> list[tuple[str, str, list[str], str]]:
    """(class or '', member or '', parameter names, source line) for each stub declaration."""
    source = path.read_text()
    lines = source.splitlines()
    found: list[tuple[str, str, list[str], str]] = []

    def walk(body: list[ast.stmt], owner: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                qualified = f"{owner}.{node.name}" if owner else node.name
                found.append((owner, node.name, [], lines[node.lineno - 1]))
                walk(node.body, qualified)
            elif isinstance(node, ast.FunctionDef):
                params = [a.arg for a in node.args.args + node.args.kwonlyargs][
                    1 if owner else 0:]
                found.append((owner, node.name, params, lines[node.lineno - 1]))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                found.append((owner, node.target.id, [], lines[node.lineno - 1]))
            elif isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("polygraphy"):  # a re-export: the name must be there
                found.extend((owner, a.asname or a.name, [], lines[node.lineno - 1])
                             for a in node.names)

    walk(ast.parse(source).body, "")
    return found


def _lookup(version: str, owner: str, name: str) -> list[str] | None:
    """The keyword names NVIDIA's bindings give `owner.name` (following bases), or None."""
    api = API["versions"][version]
    if not owner:
        if name in api["classes"] or name in api["functions"] or name in api["module_attributes"]:
            return []
        return None
    pending = [owner]
    while pending:
        cls = api["classes"].get(pending.pop())
        if cls is None:
            continue
        if name in cls["members"]:
            return list(cls["members"][name])
        pending.extend(cls["bases"])
    return None


def test_the_api_fixture_was_extracted_from_nvidias_bindings() -> None:
    assert API["source"] == "https://github.com/NVIDIA/TensorRT"
    for version in (TRT10, TRT11):
        assert len(API["versions"][version]["classes"]) > 150
        assert API["versions"][version]["classes"]["Builder"]["members"]["create_network"] == [
            "flags"]
    # what 11 removed: implicit INT8 and the weak-typing precision flags
    assert "IInt8EntropyCalibrator2" in API["versions"][TRT10]["classes"]
    assert "IInt8EntropyCalibrator2" not in API["versions"][TRT11]["classes"]
    assert "FP16" in API["versions"][TRT10]["classes"]["BuilderFlag"]["members"]
    assert "FP16" not in API["versions"][TRT11]["classes"]["BuilderFlag"]["members"]


def test_every_tensorrt_stub_name_is_in_nvidias_api_with_its_parameter_names() -> None:
    problems = []
    declared = _stub_names(TYPINGS / "tensorrt" / "__init__.pyi")
    for owner, name, params, line in declared:
        if name == "__init__":  # pybind11 py::init: no name to look up
            continue
        only_10 = "10.x only" in line or (owner and any(
            n == owner and "10.x only" in src for o, n, _, src in declared if not o))
        in_10, in_11 = _lookup(TRT10, owner, name), _lookup(TRT11, owner, name)
        label = f"{owner}.{name}" if owner else name
        if in_10 is None:
            problems.append(f"{label}: not in TensorRT {TRT10}")
        if only_10 and in_11 is not None:
            problems.append(f"{label}: marked 10.x only but in TensorRT {TRT11}")
        if not only_10 and in_11 is None:
            problems.append(f"{label}: not in TensorRT {TRT11} (mark it '10.x only'?)")
        keywords = set(in_10 or []) | set(in_11 or [])
        if params and keywords and not set(params) <= keywords:
            problems.append(f"{label}: parameters {params}, NVIDIA's bindings {sorted(keywords)}")
    assert not problems, "\n".join(problems)


def test_a_wrong_name_fails_the_check() -> None:
    assert _lookup(TRT10, "", "IEngineInspector") is None  # the C++ name, not the Python one
    assert _lookup(TRT10, "", "EngineInspector") == []
    assert _lookup(TRT10, "ICudaEngine", "create_inspector") is None
    assert _lookup(TRT11, "Logger", "WARNING") == []  # through its base ILogger


def test_every_tensorrt_stub_class_names_its_reference_page() -> None:
    lines = (TYPINGS / "tensorrt" / "__init__.pyi").read_text().splitlines()
    unnamed = [line for i, line in enumerate(lines) if line.startswith("class ")
               and not re.match(r"# infer/\w+/\w+\.html", lines[i - 1])]
    assert not unnamed


def _polygraphy_stubs() -> list[tuple[str, str, str, list[str]]]:
    """(module, class or '', member, parameter names) for every Polygraphy stub declaration."""
    found = []
    for path in sorted((TYPINGS / "polygraphy").rglob("*.pyi")):
        parts = path.relative_to(TYPINGS).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for owner, name, params, _ in _stub_names(path):
            found.append((module, owner, name, params))
    return found


def _parameters(obj: object) -> set[str] | None:
    """Parameter names of a callable, following **kwargs into base classes' __init__."""
    names: set[str] = set()
    for cls in (obj.__mro__ if isinstance(obj, type) else [obj]):
        target = cls.__init__ if isinstance(obj, type) else cls
        if target is object.__init__:
            break
        params = inspect.signature(target).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return names


def test_every_polygraphy_stub_name_and_parameter_exists_in_polygraphy() -> None:
    import importlib

    problems = []
    for module, owner, name, params in _polygraphy_stubs():
        real = importlib.import_module(module)
        for part in [*owner.split(".")] if owner else []:
            real = getattr(real, part)
        label = f"{module}.{owner + '.' if owner else ''}{name}"
        if name == "__init__":
            actual = _parameters(real)
        elif not hasattr(real, name):
            # attributes set in __init__/activate (CreateConfig.fp16, TrtRunner.engine)
            sources = "".join(inspect.getsource(c) for c in real.__mro__[:-1]
                              ) if isinstance(real, type) else ""
            if f"self.{name} =" not in sources:
                problems.append(f"{label}: not in polygraphy {polygraphy_version()}")
            continue
        else:
            member = getattr(real, name)
            actual = _parameters(member) if callable(member) and params else set()
        if params and actual is not None and not set(params) - {"self"} <= actual:
            problems.append(f"{label}: parameters {params}, polygraphy's {sorted(actual)}")
    assert not problems, "\n".join(problems)


def _positional_stubs() -> list[tuple[str, str, str, list[str]]]:
    """(module, class or '', function, positional parameter names) of the Polygraphy stubs."""
    found = []
    for path in sorted((TYPINGS / "polygraphy").rglob("*.pyi")):
        parts = path.relative_to(TYPINGS).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            for fn in getattr(node, "body", []):
                if isinstance(fn, ast.FunctionDef):
                    owner = node.name if isinstance(node, ast.ClassDef) else ""
                    names = [a.arg for a in fn.args.args if a.arg != "self"]
                    found.append((module, owner, fn.name, names))
    return found


def test_polygraphy_stub_positional_parameters_keep_polygraphys_order() -> None:
    """A positional call checked against the stub must bind as it does in Polygraphy."""
    import importlib

    problems = []
    for module, owner, name, names in _positional_stubs():
        real = importlib.import_module(module)
        if owner:
            real = getattr(real, owner)
        target = real if name == "__init__" else getattr(real, name)
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"]
        if [p.name for p in params[:len(names)]] != names:
            problems.append(f"{module}.{owner}.{name}: stub {names}, polygraphy "
                            f"{[p.name for p in params]}")
    assert not problems, "\n".join(problems)


def polygraphy_version() -> str:
    import polygraphy

    return str(polygraphy.__version__)


def test_the_onnxruntime_tensorrt_route_refuses_an_incomplete_cache_too(tmp_path: Path) -> None:
    model = two_branch_graph()
    source = tmp_path / "model.onnx"
    onnx.save_model(model, str(source))
    calib = _calibration(tmp_path, model, drop={"lin"})
    out = tmp_path / "engine"
    out.mkdir()
    target = Target(backend="onnxruntime-tensorrt", device="cuda", precision="int8")
    with pytest.raises(CalibrationError, match=r"no scale for 1 of the 11 .*: lin;"):
        build_engine(source, target, out, Calibration(calib))
