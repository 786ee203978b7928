"""NVIDIA's ONNX parser and builder (TensorRT for RTX, the `tensorrt-rtx` extra) as the
oracle: every graph trtflow hands TensorRT parses with no error into a strongly typed
network and builds into a plan, on this GPU-less host. Plus the precision report, the
engine's kernels from the builder log, and the bad inputs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.backends.tensorrt_network import (
    BuildLog,
    engine_layers,
    make_logger,
    network_layers,
    parse_onnx,
    precision_report,
    profile_shapes,
    typed_graph,
)
from trtflow.backends.tensorrt_rtx import (
    CONFIG_FILE,
    ENGINE_FILE,
    FUSION_FILE,
    HANDED_FILE,
    NOT_MEASURED,
    PRECISION_FILE,
    HandedGraphEngine,
    TensorRTRtxOptions,
    archs_for,
    build_plan,
    check_archs,
)
from trtflow.errors import BuildError
from trtflow.params import CalibrationConfig
from trtflow.quant.artifact import Calibration
from trtflow.quant.qdq import insert_qdq
from trtflow.stages.calibrate import calibrate

from .test_qdq import _feeds, attention_block, residual_block, true_amax

trt = pytest.importorskip("tensorrt_rtx_bindings", reason="the tensorrt-rtx extra")
ARCHS = ["sm89"]  # one arch keeps the builds short; every arch parses the same network


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def _build(graph: Path, out: Path, archs: list[str] = ARCHS) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    report = build_plan(graph, archs, out)
    assert (out / ENGINE_FILE).stat().st_size == report["engine_bytes"] > 0
    return report


def _digits_calibration(tmp: Path) -> tuple[Path, Calibration]:
    """The digits CNN (untrained: the parser and builder see only its structure), cleaned
    and calibrated by trtflow's own stages on random images."""
    import torch

    from trtflow.graph.cleanup import cleanup
    from trtflow.sources.models import DigitsCNN

    torch.manual_seed(0)
    raw = tmp / "digits.onnx"
    torch.onnx.export(DigitsCNN().eval(), (torch.rand(2, 1, 8, 8),), str(raw), dynamo=False,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    clean = _save(cleanup(onnx.load(str(raw)))[0], tmp / "digits.clean.onnx")
    rng = np.random.default_rng(0)
    batches = [{"image": rng.random((16, 1, 8, 8), np.float32)} for _ in range(4)]
    out = tmp / "calibrate"
    out.mkdir()
    calibrate(clean, batches, CalibrationConfig(min_samples=1), 1, out, selection=batches)
    return clean, Calibration(out)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Calibration]:
    return _digits_calibration(tmp_path_factory.mktemp("digits"))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "fp8"])
def test_digits_graph_of_every_precision_parses_and_builds(
        digits: tuple[Path, Calibration], tmp_path: Path, precision: str) -> None:
    clean, calibration = digits
    graph, made = typed_graph(precision, clean, calibration, tmp_path)
    report = _build(graph, tmp_path / "engine")
    by_type = report["precision"]["by_type"]
    expected = {"fp32": "FLOAT", "fp16": "HALF", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}
    assert by_type["CONVOLUTION"] == {expected[precision]: 3}  # the digits CNN's 3 convs
    assert report["tensorrt_rtx"]["gpu_archs"] == ARCHS
    assert report["tensorrt_rtx"]["profile"]["image"] == {
        "min": [1, 1, 8, 8], "opt": [32, 1, 8, 8], "max": [32, 1, 8, 8]}
    if precision in ("fp16", "bf16"):  # ModelOpt's AutoCast kept the mixed pass's op list
        assert made["conversion"]["tool"] == "modelopt.onnx.autocast"
        assert "ReduceMean" in made["conversion"]["fp32_ops"]


def _qdq(model: onnx.ModelProto, precision: str, feeds: dict | None = None
         ) -> onnx.ModelProto:
    return insert_qdq(model, true_amax(model, feeds or _feeds(model)), "tensorrt",
                      precision=precision)[0]  # type: ignore[arg-type]


def _smoothed_qdq() -> onnx.ModelProto:
    """A SmoothQuant'ed attention-style graph (outlier channels moved into the MatMul
    weights), then TensorRT's INT8 Q/DQ."""
    from trtflow.quant.smoothquant import channel_amax, smooth, smoothable

    from .test_smoothquant import K, _graph

    model = _graph(residual=True)
    feeds = [{"x": np.random.default_rng(s).standard_normal((8, 4, K)).astype(np.float32)}
             for s in range(2)]
    smoothed, _ = smooth(model, channel_amax(model, smoothable(model), feeds), alpha=0.5)
    return _qdq(smoothed, "int8", feeds[0])


TINY: dict[str, Callable[[], onnx.ModelProto]] = {
    "residual-fp32": residual_block,
    "attention-fp32": attention_block,
    "residual-int8": lambda: _qdq(residual_block(), "int8"),
    "attention-int8": lambda: _qdq(attention_block(), "int8"),
    "residual-fp8": lambda: _qdq(residual_block(), "fp8"),
    "attention-fp8": lambda: _qdq(attention_block(), "fp8"),
    "smoothquant-int8": _smoothed_qdq,
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_graphs_handed_to_tensorrt_parse_and_build(tmp_path: Path, name: str) -> None:
    graph = _save(TINY[name](), tmp_path / f"{name}.onnx")
    report = _build(graph, tmp_path / "engine")
    assert report["precision"]["compute_layers"] > 0
    if name.endswith(("int8", "fp8")):
        quantized = name.rsplit("-", 1)[1].upper()
        assert report["precision"]["by_precision"].get(quantized, 0) > 0


def test_tiny_fp16_graph_from_autocast_builds(tmp_path: Path) -> None:
    clean = _save(attention_block(), tmp_path / "a.onnx")
    graph, made = typed_graph("fp16", clean, None, tmp_path)
    report = _build(graph, tmp_path / "engine")
    kept = report["precision"]["by_type"]
    assert kept["SOFTMAX"] == {"FLOAT": 1}  # FP32_OPS stay FP32 in the typed network
    assert set(kept["MATRIX_MULTIPLY"]) == {"HALF"}
    assert made["conversion"]["nodes_by_output_type"]["FLOAT16"] > 0


def test_qat_input_is_handed_as_is_and_builds(digits: tuple[Path, Calibration],
                                             tmp_path: Path) -> None:
    """A graph that arrives with Q/DQ (QAT) keeps its scales: calibrate hands it on."""
    _, calibration = digits
    qat_source = calibration.qdq_model("int8")
    out = tmp_path / "cal"
    out.mkdir()
    assert calibrate(qat_source, [], CalibrationConfig(), 1, out)["qat"]
    report = _build(Calibration(out).qdq_model("int8"), tmp_path / "engine")
    assert report["precision"]["convolutions_int8_inputs"] == 3


def test_precision_report_names_int8_convolutions_and_float_layers(tmp_path: Path) -> None:
    graph = _save(_qdq(residual_block(), "int8"), tmp_path / "r.onnx")
    log = BuildLog()
    parsed = parse_onnx(trt, make_logger(trt, log), graph)
    report = precision_report(network_layers(parsed.network))
    assert report["convolutions"] == report["convolutions_int8_inputs"] == 2
    convs = [r for r in report["rows"] if r["type"] == "CONVOLUTION"]
    for row in convs:  # data and weights each arrive through a Dequantize of INT8
        assert [i["dequantized_from"] for i in row["inputs"][:2]] == ["INT8", "INT8"]
        assert row["inputs"][0]["type"] == "FLOAT"  # the network's own type, before fusion
    # the residual Add and the Relus stay float (NVIDIA's rule: Q/DQ on the Add's other input)
    assert {r["type"] for r in report["float_layers"]} == {"ACTIVATION", "ELEMENTWISE"}


def test_engine_layers_come_from_the_builder_log(tmp_path: Path) -> None:
    graph = _save(_qdq(residual_block(), "int8"), tmp_path / "r.onnx")
    report = _build(graph, tmp_path / "engine")
    fusion = json.loads((tmp_path / "engine" / FUSION_FILE).read_text())
    assert fusion["layers"] > 0 and fusion["fused_layers"] > 0
    convs = [r for r in fusion["rows"] if "conv1" in r["onnx_nodes"]]
    assert convs, "the builder log names the ONNX node each kernel runs"
    assert report["fusion"]["kernel_input_types"]  # e.g. {'correlation': {'Int8': 2}}
    saved = json.loads((tmp_path / "engine" / PRECISION_FILE).read_text())
    assert saved["convolutions_int8_inputs"] == 2
    meta = json.loads((tmp_path / "engine" / CONFIG_FILE).read_text())
    assert meta["tensorrt_rtx"] == trt.__version__ and meta["strongly_typed"]


def test_engine_log_parser_reads_a_layer_line() -> None:
    line = ("Name: node_Conv_65_myl0_5, LayerType: correlation, Inputs: [ { Name: a, "
            "Dimensions: [-1,64,56,56], Datatype: Int8, Format: (NHWC) }], Constants: "
            "[ { Name: w, Dimensions: [64], Datatype: Int8, Format: x }], Outputs: [ { Name: "
            "b, Dimensions: [-1,64,56,56], Datatype: Float, Format: y }], TacticName: t1, "
            "StreamId: 0, Metadata: [ONNX Layer: node_Conv_65][ONNX Layer: dq_0]")
    layers = engine_layers(BuildLog([("VERBOSE", "Layers:\n" + line)]))
    assert layers == [{"Name": "node_Conv_65_myl0_5", "LayerType": "correlation",
                       "Inputs": [{"Name": "a", "DataType": "Int8"}],
                       "Constants": [{"Name": "w", "DataType": "Int8"}],
                       "Outputs": [{"Name": "b", "DataType": "Float"}], "TacticName": "t1",
                       "Metadata": "[ONNX Layer: node_Conv_65]\x1f[ONNX Layer: dq_0]"}]


def test_every_dynamic_axis_gets_a_profile_range(tmp_path: Path) -> None:
    from .test_smoothquant import _graph

    model = _graph(residual=False)  # x: [n, 4, K]; make axis 1 a sequence axis too
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[1].dim_param = "seq"
    graph = _save(model, tmp_path / "a.onnx")
    assert profile_shapes(graph, 8) == {"x": ((1, 1, 8), (8, 128, 8), (8, 512, 8))}
    out = tmp_path / "engine"
    _build(graph, out)
    assert json.loads((out / CONFIG_FILE).read_text())["profile"]["x"] == {
        "min": [1, 1, 8], "opt": [32, 128, 8], "max": [32, 512, 8]}


def test_handed_graph_engine_runs_the_handed_graph_and_measures_nothing(tmp_path: Path) -> None:
    model = residual_block()
    graph = _save(model, tmp_path / "r.onnx")
    out = tmp_path / "engine"
    _build(graph, out)
    assert (out / HANDED_FILE).read_bytes() == graph.read_bytes()
    engine = HandedGraphEngine(out, threads=1)
    feeds = _feeds(model, 4)
    from trtflow.graph.parity import ort_run

    np.testing.assert_allclose(engine.run(feeds)["y"], ort_run(graph, feeds)["y"], atol=1e-6)
    assert engine.latency_note == NOT_MEASURED and "ONNX Runtime" in engine.ran


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_handed_low_precision_graph_runs_here_close_to_fp32(
        digits: tuple[Path, Calibration], tmp_path: Path, precision: str) -> None:
    """ONNX Runtime runs the FP16 graph as is and the BF16 graph emulated (it has no
    bfloat16 Conv on the CPU), and says so."""
    from trtflow.graph.parity import ort_run

    clean, calibration = digits
    graph, _ = typed_graph(precision, clean, calibration, tmp_path)
    _build(graph, tmp_path / "engine")
    engine = HandedGraphEngine(tmp_path / "engine", threads=1)
    x = {"image": np.random.default_rng(3).random((8, 1, 8, 8), np.float32)}
    got, want = engine.run(x)["logits"].ravel(), ort_run(clean, x)["logits"].ravel()
    assert got @ want / np.linalg.norm(got) / np.linalg.norm(want) > 0.999
    assert ("emulated" in engine.ran) == (precision == "bf16")


def test_the_shared_network_code_calls_only_api_of_tensorrt_10_11_and_rtx() -> None:
    """tensorrt_network serves TensorRT 11 and TensorRT-RTX: every name it calls is in
    NVIDIA's bindings of both TensorRT majors (the fixture) and in the installed
    TensorRT-RTX."""
    from trtflow.backends.tensorrt_network import API_USED

    fixture = Path(__file__).resolve().parents[2] / "typings" / "tensorrt_api"
    api = json.loads((fixture / "tensorrt_python_api.json").read_text())["versions"]
    missing = [f"TensorRT {version}: {owner}.{member}"
               for version in ("10.16.1", "11.1.0") for owner, member in API_USED
               if member not in api[version]["classes"].get(owner, {}).get("members", {})]
    missing += [f"TensorRT-RTX {trt.__version__}: {owner}.{member}" for owner, member in API_USED
                if not hasattr(getattr(trt, owner, None), member)]
    assert not missing, missing


# --- bad inputs ---------------------------------------------------------------------------

def test_unknown_arch_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown gpu_archs \['sm90'\].*'sm86', 'sm89'"):
        check_archs(["sm86", "sm90"])
    with pytest.raises(ValueError, match="unknown gpu_archs"):
        TensorRTRtxOptions.model_validate({"gpu_archs": ["ampere"]})


def test_params_refuse_an_unknown_arch_naming_the_valid_ones() -> None:
    from trtflow.errors import ParamsError
    from trtflow.params import parse_params

    target = {"backend": "tensorrt-rtx", "device": "cuda", "precision": "int8",
              "options": {"gpu_archs": ["sm86", "sm90"]}}
    with pytest.raises(ParamsError, match=r"targets\.rtx.*unknown gpu_archs \['sm90'\].*sm120"):
        parse_params({"model": {"name": "m", "source": {"builtin": "digits"}},
                      "targets": {"rtx": target}})


def test_registered_backend_builds_and_loads_through_the_interface(
        digits: tuple[Path, Calibration], tmp_path: Path) -> None:
    """build_engine/load_engine: the plan, its manifest (archs), and the stand-in engine."""
    from trtflow.backends import build_engine, load_engine
    from trtflow.params import Target

    clean, calibration = digits
    target = Target.model_validate({"backend": "tensorrt-rtx", "device": "cuda",
                                    "precision": "fp8"})
    report = build_engine(clean, target, tmp_path, calibration)
    assert report["backend"] == "tensorrt-rtx" and report["graph"] == {"graph": "fp8_qdq"}
    assert report["tensorrt_rtx"]["gpu_archs"] == ["sm89", "sm120"]  # sm86 has no FP8
    assert "sm86" in report["gpu_archs_note"]
    manifest = json.loads((tmp_path / "engine.json").read_text())
    assert manifest["target"]["options"]["gpu_archs"] == ["sm86", "sm89", "sm120"]
    engine = load_engine(tmp_path)
    assert isinstance(engine, HandedGraphEngine) and engine.output_names == ["logits"]
    with pytest.raises(BuildError, match=r"builds precisions .*not 'best'"):
        build_engine(clean, target.but(precision="best"), tmp_path, calibration)


def test_fp8_drops_default_archs_before_ada_and_refuses_named_ones() -> None:
    archs, note = archs_for("fp8", TensorRTRtxOptions())
    assert archs == ["sm89", "sm120"] and note and "sm86" in note
    with pytest.raises(BuildError, match=r"fp8 plan needs sm89 or later; gpu_archs \['sm86'\]"):
        archs_for("fp8", TensorRTRtxOptions(gpu_archs=["sm86", "sm89"]))


def test_a_graph_the_parser_refuses_names_node_and_op_and_writes_nothing(tmp_path: Path
                                                                        ) -> None:
    node = helper.make_node("Frobnicate", ["x"], ["y"], name="weird0", domain="example.org")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.zeros(1, np.float32), "unused")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("example.org", 1)])
    path = _save(model, tmp_path / "bad.onnx")
    out = tmp_path / "engine"
    out.mkdir()
    with pytest.raises(BuildError, match=r"refused .*bad\.onnx: node 'weird0' \(op Frobnicate\)"):
        build_plan(path, ARCHS, out)
    assert list(out.iterdir()) == []


def test_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from trtflow.backends import tensorrt_rtx

    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)  # as if not installed
    with pytest.raises(BuildError, match=r"pip install 'trtflow\[tensorrt-rtx\]'"):
        tensorrt_rtx.rtx()


# --- slow tier: the demo models through trtflow's own stages ------------------------------

def _model_stages(tmp: Path, model: str) -> tuple[Path, Calibration]:
    import shutil

    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import CLEAN_FILE, run_up_to
    from trtflow.project import configure_environment
    from trtflow.sources.builtin import write_demo_data

    root = Path(__file__).resolve().parents[2]
    write_demo_data(tmp)
    (tmp / "params").mkdir()
    shutil.copyfile(root / "params" / f"{model}.yaml", tmp / "params" / f"{model}.yaml")
    configure_environment(tmp)
    ctx = Context.create(load_params(tmp / "params" / f"{model}.yaml"), tmp)
    _, cleaned, calibrated = run_up_to(ctx, "calibrate", "int8")
    return cleaned.file(CLEAN_FILE), Calibration(Path(calibrated.path))


@pytest.mark.slow
def test_resnet18_int8_plan_has_20_int8_convolutions(tmp_path: Path) -> None:
    clean, calibration = _model_stages(tmp_path, "resnet18")
    for precision in ("fp32", "fp16", "int8", "fp8"):
        out = tmp_path / precision
        out.mkdir()
        graph, _ = typed_graph(precision, clean, calibration, out)
        report = _build(graph, out / "engine", ["sm89", "sm120"])
        if precision == "int8":
            summary = report["precision"]
            assert summary["convolutions"] == summary["convolutions_int8_inputs"] == 20
            assert summary["by_type"]["MATRIX_MULTIPLY"] == {"INT8": 1}
            assert {r["type"] for r in summary["float_layers"]} == {
                "ACTIVATION", "ELEMENTWISE", "REDUCE", "SHUFFLE"}
            assert report["fusion"]["kernel_input_types"]["correlation"] == {"Int8": 20}


@pytest.mark.slow
def test_minilm_graphs_parse_and_build(tmp_path: Path) -> None:
    clean, calibration = _model_stages(tmp_path, "minilm")
    for precision in ("fp32", "fp16", "int8", "fp8"):
        out = tmp_path / precision
        out.mkdir()
        graph, _ = typed_graph(precision, clean, calibration, out)
        report = _build(graph, out / "engine", ["sm89"])
        assert report["precision"]["compute_layers"] > 0
        if precision == "fp16":  # Softmax and the LayerNorms stay FP32 (FP32_OPS)
            assert set(report["precision"]["by_type"]["SOFTMAX"]) == {"FLOAT"}
        if precision == "int8":
            assert report["precision"]["by_type"]["MATRIX_MULTIPLY"].get("INT8", 0) > 0
