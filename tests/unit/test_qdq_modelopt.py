"""NVIDIA ModelOpt as the oracle of the TensorRT placement: same scales, same Q/DQ.

For each graph, trtflow's ``insert_qdq(..., "tensorrt")`` and ModelOpt's INT8 ONNX PTQ
(``modelopt.onnx.quantization.int8.quantize``, reading trtflow's complete
``calibration.cache`` so both use the same scales) are compared tensor for tensor: which
(node, input) reads a DequantizeLinear, from which tensor, with which scale and zero
point, and each weight's per-channel axis. Every difference must belong to a class
listed, with NVIDIA's reason, in docs/quantization.md (``DOCUMENTED`` below); a
difference of any other kind fails.

How ModelOpt is installed without downgrading ONNX Runtime: ModelOpt 0.47's ``[onnx]``
extra pins ``onnxruntime~=1.24`` (and ``onnx~=1.21``); trtflow runs 1.32. The dev extra
therefore lists ``nvidia-modelopt`` *without* its ``[onnx]`` extra plus only the pieces
its ONNX quantization imports (onnx-graphsurgeon, onnxconverter-common, lief, cppimport);
ModelOpt's ONNX PTQ then runs on ORT 1.32's ``quantize_static`` (its ``ort_patching``
adapts to it), on the CPU execution provider. ModelOpt's own
calibration runs but its scales are replaced by the cache's, as its
``calibration_cache_path`` option does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtflow.quant.cache import write_calibration_cache
from trtflow.quant.qdq import float_activations, insert_qdq

from .test_qdq import _model, _weight, attention_block, residual_block

modelopt_int8 = pytest.importorskip("modelopt.onnx.quantization.int8",
                                    reason="nvidia-modelopt is a dev dependency")
from modelopt.onnx.quantization.calib_utils import CalibrationDataProvider  # noqa: E402
from modelopt.onnx.quantization.graph_utils import (  # noqa: E402
    find_nodes_from_convs_to_exclude,
    find_nodes_from_matmul_to_exclude,
)

logging.getLogger("modelopt").setLevel(logging.ERROR)
RNG = np.random.default_rng(3)

# Difference classes documented in docs/quantization.md ("Differences from ModelOpt").
DOCUMENTED = {
    "gemv_or_small_gemm": "ModelOpt leaves MatMul/Gemm float when M or N is 1 (GEMV) or K/N"
                          " < 16 at the calibration shape; trtflow quantizes it",
    "small_channel_conv": "ModelOpt leaves Conv with < 16 channels float unless its int8"
                          " exceptions apply; trtflow quantizes it",
    "non_residual_add": "ModelOpt quantizes both inputs of an Add with no Conv backbone;"
                        " trtflow leaves it float",
    "pool_or_mul_input": "ModelOpt also quantizes GlobalAveragePool/AveragePool and Mul"
                         " inputs (its default int8 op list); trtflow leaves them float",
}

Signature = dict[tuple[str, int], tuple]


def placement_signature(model: onnx.ModelProto) -> Signature:
    """(consumer node, input index) -> what its DequantizeLinear carries.

    Activations: ("activation", source tensor, scale, zero point dtype, zero point);
    weights: ("weight", axis, scales). Shape ops are left out: ORT's quantizer shares a
    DQ between consumers, so a Shape may read one, with no effect on the engine.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    signature: Signature = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Shape"):
            continue
        for index, tensor in enumerate(node.input):
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            scale, zero_point = inits[dq.input[1]], inits[dq.input[2]]
            q = producers.get(dq.input[0])
            if q is not None and q.input[0] not in inits:  # an activation: x -> Q -> DQ
                signature[(node.name, index)] = (
                    "activation", q.input[0], float(scale), str(zero_point.dtype),
                    float(zero_point))
            else:  # a weight: int8 initializer -> DQ, or float initializer -> Q -> DQ
                axis = next((a.i for a in dq.attribute if a.name == "axis"), None)
                signature[(node.name, index)] = (
                    "weight", axis if scale.size > 1 else None, scale.astype(np.float32))
    return signature


def true_amax(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """max |x| of every float activation (the complete cache's tensors)."""
    names = float_activations(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in names if n not in present)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds),
                      strict=True))
    return {n: max(float(np.abs(values[n]).max()), 2.0**-24) for n in names}


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tmp: Path
             ) -> tuple[Signature, Signature, dict[tuple[str, int], str | None]]:
    """Both placements for the same scales, and each difference's documented class."""
    path = tmp / "model.onnx"
    onnx.save(model, path)
    amax = true_amax(model, feeds)
    cache = write_calibration_cache(tmp / "calibration.cache",
                                    {t: np.float32(a) / np.float32(127) for t, a in amax.items()})
    ours, _ = insert_qdq(model, amax, "tensorrt")
    theirs = modelopt_int8.quantize(
        str(path), calibration_method="max", calibration_cache_path=str(cache),
        calibration_data_reader=CalibrationDataProvider(str(path), feeds),
        calibration_eps=["cpu"], high_precision_dtype="fp32", nodes_to_exclude=[],
        log_level="ERROR")
    a, b = placement_signature(ours), placement_signature(theirs)
    gemv = set(find_nodes_from_matmul_to_exclude(
        str(path), calibration_data_reader=CalibrationDataProvider(str(path), feeds),
        calibration_eps=["cpu"]))
    import onnx_graphsurgeon as gs

    small_convs = set(find_nodes_from_convs_to_exclude(gs.import_onnx(model), "int8"))
    ops = {n.name: n.op_type for n in model.graph.node}
    classes: dict[tuple[str, int], str | None] = {}
    for key in sorted(set(a) | set(b)):
        if _same(a.get(key), b.get(key)):
            continue
        node, _ = key
        if node in gemv and key not in b:
            classes[key] = "gemv_or_small_gemm"
        elif node in small_convs and key not in b:
            classes[key] = "small_channel_conv"
        elif ops[node] == "Add" and key not in a and not _has_conv_backbone(ours, node):
            classes[key] = "non_residual_add"
        elif ops[node] in ("GlobalAveragePool", "AveragePool", "Mul") and key not in a:
            classes[key] = "pool_or_mul_input"
        else:
            classes[key] = None
    return a, b, classes


def _same(x: tuple | None, y: tuple | None) -> bool:
    if x is None or y is None:
        return x is y
    if x[0] != y[0]:
        return False
    if x[0] == "weight":
        return x[1] == y[1] and np.allclose(x[2], y[2], rtol=1e-6, atol=0)
    return x[1:] == y[1:]


def _has_conv_backbone(qdq: onnx.ModelProto, add: str) -> bool:
    """Whether trtflow's report counted the Add as residual (it quantizes those)."""
    return any(n.name == add and any(i.endswith("_dequantized") for i in n.input)
               for n in qdq.graph.node)


def _undocumented(classes: dict) -> dict:
    return {k: v for k, v in classes.items() if v not in DOCUMENTED}


# --- tiny graphs --------------------------------------------------------------------------

def resnet_stage() -> onnx.ModelProto:
    """stem Conv -> Relu -> [Conv -> Relu -> Conv] + identity -> Relu: the identity is an
    activation (not a graph input), as in every ResNet block after the stem."""
    c = 16
    return _model(
        [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
         helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c2", "r0"], ["s"], name="add"),
         helper.make_node("Relu", ["s"], ["y"], name="relu2")],
        [("x", [2, 8, 8, 8])], [("y", [2, c, 8, 8])],
        {"w0": _weight(c, 8, 3, 3), "b0": RNG.uniform(-0.2, 0.2, c),
         "w1": _weight(c, c, 3, 3), "b1": RNG.uniform(-0.2, 0.2, c),
         "w2": _weight(c, c, 3, 3), "b2": RNG.uniform(-0.2, 0.2, c)})


def depthwise_se_block() -> onnx.ModelProto:
    """MobileNetV2/EfficientNet block: expand 1x1 -> depthwise 3x3 -> squeeze-excite ->
    project 1x1, with a residual Add onto the block's input activation."""
    c, e, s = 16, 64, 8
    return _model(
        [helper.make_node("Conv", ["x", "w_in"], ["a"], name="stem"),
         helper.make_node("Relu", ["a"], ["ra"], name="relu_in"),
         helper.make_node("Conv", ["ra", "w_exp"], ["ex"], name="expand"),
         helper.make_node("Relu", ["ex"], ["rex"], name="relu_exp"),
         helper.make_node("Conv", ["rex", "w_dw"], ["dw"], name="depthwise", group=e,
                          pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["dw"], ["rdw"], name="relu_dw"),
         helper.make_node("GlobalAveragePool", ["rdw"], ["gap"], name="se_pool"),
         helper.make_node("Conv", ["gap", "w_se1", "b_se1"], ["se1"], name="se_reduce"),
         helper.make_node("Relu", ["se1"], ["rse1"], name="se_relu"),
         helper.make_node("Conv", ["rse1", "w_se2", "b_se2"], ["se2"], name="se_expand"),
         helper.make_node("Sigmoid", ["se2"], ["gate"], name="se_gate"),
         helper.make_node("Mul", ["rdw", "gate"], ["scaled"], name="se_scale"),
         helper.make_node("Conv", ["scaled", "w_proj"], ["proj"], name="project"),
         helper.make_node("Add", ["proj", "ra"], ["y"], name="residual")],
        [("x", [2, 8, 8, 8])], [("y", [2, c, 8, 8])],
        {"w_in": _weight(c, 8, 1, 1), "w_exp": _weight(e, c, 1, 1),
         "w_dw": _weight(e, 1, 3, 3), "w_se1": _weight(s, e, 1, 1),
         "b_se1": RNG.uniform(-0.1, 0.1, s), "w_se2": _weight(e, s, 1, 1),
         "b_se2": RNG.uniform(-0.1, 0.1, e), "w_proj": _weight(c, e, 1, 1)})


def _feeds(model: onnx.ModelProto, batch_of: int = 1) -> dict[str, np.ndarray]:
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value or batch_of for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = RNG.standard_normal(shape).astype(np.float32)
    return feeds


def test_residual_add_keeps_qdq_only_on_the_identity_input(tmp_path: Path) -> None:
    """NVIDIA's rule: Conv+Add fuse when only the identity branch carries Q/DQ."""
    model = resnet_stage()
    ours, theirs, classes = _compare(model, _feeds(model), tmp_path)
    assert ("add", 0) not in ours and ("add", 0) not in theirs  # the conv2 branch: float
    assert ours[("add", 1)][:2] == theirs[("add", 1)][:2] == ("activation", "r0")
    assert not classes, classes


def residual_onto_input() -> onnx.ModelProto:
    """x -> Conv -> Relu -> Conv -> Add(x): the identity is the graph input itself."""
    c = 16
    return _model(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c2", "x"], ["y"], name="add")],
        [("x", [2, c, 8, 8])], [("y", [2, c, 8, 8])],
        {"w1": _weight(c, c, 3, 3), "b1": RNG.uniform(-0.2, 0.2, c),
         "w2": _weight(c, c, 3, 3), "b2": RNG.uniform(-0.2, 0.2, c)})


def test_add_onto_the_graph_input_leaves_the_conv_branch_float(tmp_path: Path) -> None:
    """The identity is the graph input: ModelOpt still fuses the Conv branch into the Add."""
    model = residual_onto_input()
    ours, theirs, classes = _compare(model, _feeds(model), tmp_path)
    assert ("add", 0) not in ours and ("add", 0) not in theirs
    assert ours[("add", 1)][:2] == theirs[("add", 1)][:2] == ("activation", "x")
    assert not classes, classes


def test_small_channel_convs_are_the_only_difference_on_an_8_channel_block(tmp_path: Path
                                                                           ) -> None:
    model = residual_block()
    _, _, classes = _compare(model, _feeds(model), tmp_path)
    assert _undocumented(classes) == {}


@pytest.mark.parametrize("build", [attention_block, depthwise_se_block],
                         ids=["attention", "depthwise_se"])
def test_tiny_blocks_match_modelopt_or_differ_only_as_documented(build, tmp_path: Path
                                                                  ) -> None:
    model = build()
    ours, theirs, classes = _compare(model, _feeds(model), tmp_path)
    assert _undocumented(classes) == {}
    matched = [k for k in set(ours) & set(theirs) if _same(ours[k], theirs[k])]
    assert matched, "nothing in common: the comparison compared nothing"


def test_depthwise_se_residual_leaves_the_project_conv_branch_float(tmp_path: Path) -> None:
    model = depthwise_se_block()
    ours, theirs, _ = _compare(model, _feeds(model), tmp_path)
    assert ("residual", 0) not in ours and ("residual", 0) not in theirs
    assert ours[("residual", 1)][:2] == theirs[("residual", 1)][:2] == ("activation", "ra")


# --- the demo models (slow: export + cleanup + two quantizers) ----------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["digits", "resnet18", "minilm"])
def test_demo_models_match_modelopt_or_differ_only_as_documented(name: str, tmp_path: Path,
                                                                 demo_root: Path) -> None:
    from trtflow.context import Context
    from trtflow.params import load_params
    from trtflow.plan import CLEAN_FILE, CLEANUP, EXPORT
    from trtflow.stage import run_step

    params = load_params(Path(__file__).resolve().parents[2] / "params" / f"{name}.yaml")
    ctx = Context.create(params, demo_root, tmp_path / "store")
    cleaned = run_step(CLEANUP, ctx, None, [run_step(EXPORT, ctx, None, [])])
    model = onnx.load(str(cleaned.file(CLEAN_FILE)))
    data = np.load(demo_root / params.data.calibration.npz)  # type: ignore[union-attr,arg-type]
    feeds = {i.name: data[i.name][:4] for i in model.graph.input}
    ours, theirs, classes = _compare(model, feeds, tmp_path)
    assert _undocumented(classes) == {}
    same = sum(_same(ours.get(k), theirs.get(k)) for k in set(ours) | set(theirs))
    print(f"{name}: {same} Q/DQ inputs identical, {len(classes)} documented differences: "
          f"{sorted(set(classes.values()))}")
    assert same > 0
