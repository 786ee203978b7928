from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

from trtflow.errors import CalibrationError
from trtflow.params import CalibrationConfig, Fallback
from trtflow.quant.artifact import (
    ACCURACY_FILE,
    CACHE_FILE,
    HISTOGRAMS_FILE,
    QDQ_FILE,
    SCALES_FILE,
)
from trtflow.quant.cache import check_cache_matches, read_calibration_cache
from trtflow.quant.collector import HistogramCollector
from trtflow.stages.calibrate import calibrate

from .tiny import conv_bn_graph


def _batches(n: int = 64, batch: int = 16, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((batch, 3, 8, 8), np.float32)}
            for _ in range(n // batch)]


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_graph(), path)
    return path


def test_one_pass_writes_the_four_outputs(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "cal"
    out.mkdir()
    data = _batches()
    report = calibrate(model_path, data, CalibrationConfig(min_samples=1), 1, out,
                       selection=data)
    for name in (CACHE_FILE, SCALES_FILE, HISTOGRAMS_FILE, QDQ_FILE, ACCURACY_FILE):
        assert (out / name).is_file(), name
    assert report["samples"] == 64 and report["batches"] == 4
    header, cache = read_calibration_cache(out / CACHE_FILE)
    scales = json.loads((out / SCALES_FILE).read_text())
    assert header.algorithm == "EntropyCalibration2" and set(cache) == set(scales)
    for name, row in scales.items():
        assert cache[name] == pytest.approx(row["amax"] / 127, rel=1e-6)
        # only what the defaults read: classwise's entropy and percentile, and max for the
        # inputs and fp8
        assert set(row["amax_by_method"]) == {"max", "entropy", "percentile"}
        assert row["amax_by_method"]["max"] >= row["amax_by_method"]["entropy"] > 0
        assert row["amax"] == row["amax_by_method"][row["method"]]
    # classwise: graph inputs use input_method (max), the Conv output entropy, the rest
    # percentile; the cache header names entropy's calibrator (above)
    assert report["method"] == "classwise" and report["requested_method"] == "classwise"
    assert {t: row["method"] for t, row in scales.items()} == {
        "x": "max", "c": "entropy", **{t: "percentile" for t in scales if t not in ("x", "c")}}
    assert len(scales) > 2
    hist = HistogramCollector.load_npz(out / HISTOGRAMS_FILE)
    assert set(hist) == set(scales)
    ops = {n.op_type for n in onnx.load(str(out / QDQ_FILE)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    tensor_names = {v for n in onnx.load(str(model_path)).graph.node for v in n.output} | {"x"}
    assert check_cache_matches(out / CACHE_FILE, tensor_names) == cache


def test_auto_method_and_fallback_choose_on_selection(model_path: Path, tmp_path: Path) -> None:
    data = _batches()
    cfg = CalibrationConfig(method="auto", min_samples=1,
                            fallback=Fallback(min_agreement=0.999999, max_layers=1))
    report = calibrate(model_path, data, cfg, 1, tmp_path, selection=data)
    assert report["method"] in {"max", "percentile", "mse", "entropy"}
    assert set(report["method_scores"]) == {"max", "percentile", "entropy"}
    accuracy = json.loads((tmp_path / ACCURACY_FILE).read_text())
    assert [r["node"] for r in accuracy["sensitivity"]] == ["conv0"]
    # a near-impossible budget keeps the one quantizable layer in float
    assert report["float_layers"] == ["conv0"] and report["fallback_met"] is True
    assert report["float_fraction"] == 1.0
    ops = {n.op_type for n in onnx.load(str(tmp_path / QDQ_FILE)).graph.node}
    assert "QuantizeLinear" not in ops


def test_empty_dataset(model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="calibration data set is empty"):
        calibrate(model_path, [], CalibrationConfig(sensitivity=False), 1, tmp_path)


def test_nan_in_calibration_data_names_the_tensor(model_path: Path, tmp_path: Path) -> None:
    data = _batches()
    data[1]["x"][0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="tensor 'x'.*NaN or infinite"):
        calibrate(model_path, data, CalibrationConfig(sensitivity=False), 1, tmp_path)
    assert not (tmp_path / HISTOGRAMS_FILE).exists()


def test_batch_shape_not_matching_the_model(model_path: Path, tmp_path: Path) -> None:
    data = [{"x": np.zeros((4, 3, 9, 9), np.float32)}]
    with pytest.raises(CalibrationError, match=r"batch 1 \(shapes \{'x': \[4, 3, 9, 9\]\}\) "
                                               r"does not fit the model"):
        calibrate(model_path, data, CalibrationConfig(sensitivity=False), 1, tmp_path)


def test_small_dataset_warns(model_path: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate(model_path, _batches(16, 16), CalibrationConfig(sensitivity=False), 1,
                  tmp_path)
    assert any("only 16 samples" in str(w.message) for w in caught)


def test_cache_for_another_graph_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "c.cache"
    cache.write_text("TRT-100300-EntropyCalibration2\nconv_out: 3c010204\nother: 3c010204\n")
    with pytest.raises(CalibrationError, match=r"2 tensor\(s\) are not in the model"):
        check_cache_matches(cache, {"x", "y"})


def _calibrated(model: onnx.ModelProto, tmp_path: Path, **cfg) -> tuple[Path, dict]:
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    out = tmp_path / "cal"
    out.mkdir()
    rng = np.random.default_rng(0)
    shape = [d.dim_value or 8 for d in model.graph.input[0].type.tensor_type.shape.dim]
    data = [{model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)}
            for _ in range(4)]
    report = calibrate(path, iter(data), CalibrationConfig(min_samples=1, sensitivity=False,
                                                           **cfg),
                       1, out, selection=data, batches_again=lambda: iter(data))
    return out, report


@pytest.mark.parametrize("build", ["conv_bn", "attention"])
def test_cache_names_every_float_activation_as_modelopt_reads_it(build, tmp_path: Path
                                                                 ) -> None:
    """The complete cache (issue 16): read with ModelOpt's own importer, no float
    activation of the graph is missing; the Q/DQ model uses a subset."""
    calib_utils = pytest.importorskip("modelopt.onnx.quantization.calib_utils")
    from trtflow.quant.qdq import float_activations

    from .test_qdq import attention_block

    model = conv_bn_graph() if build == "conv_bn" else attention_block()
    out, report = _calibrated(model, tmp_path)
    imported = calib_utils.import_scales_from_calib_cache(str(out / CACHE_FILE))
    names = {k.removesuffix("_scale") for k in imported}
    assert set(float_activations(model)) <= names
    coverage = report["cache_coverage"]
    assert coverage["in_cache"] == coverage["float_activations"] == len(names)
    assert coverage["in_qdq_model"] < coverage["in_cache"]
    scales = json.loads((out / SCALES_FILE).read_text())
    assert sum(row["in_qdq_model"] for row in scales.values()) == coverage["in_qdq_model"]
    _, cache = read_calibration_cache(out / CACHE_FILE)
    assert imported == {f"{k}_scale": v for k, v in cache.items()}


def test_entropy_asked_for_is_entropy_on_every_tensor_but_the_inputs(tmp_path: Path) -> None:
    out, report = _calibrated(conv_bn_graph(), tmp_path, method="entropy")
    header, _ = read_calibration_cache(out / CACHE_FILE)
    scales = json.loads((out / SCALES_FILE).read_text())
    assert header.algorithm == "EntropyCalibration2" and report["method"] == "entropy"
    assert {t: row["method"] for t, row in scales.items()} == {
        "x": "max", **{t: "entropy" for t in scales if t != "x"}}
    assert {m for row in scales.values() for m in row["amax_by_method"]} == {"max",
                                                                            "entropy"}


def test_classwise_with_input_method_same_gives_the_inputs_the_table_method(
        tmp_path: Path) -> None:
    _, report = _calibrated(conv_bn_graph(), tmp_path, input_method="same")
    scales = json.loads((tmp_path / "cal" / SCALES_FILE).read_text())
    assert scales["x"]["method"] == "percentile" and scales["c"]["method"] == "entropy"
    assert report["method"] == "classwise"


def test_cache_header_names_the_chosen_methods_calibrator(tmp_path: Path) -> None:
    out, _ = _calibrated(conv_bn_graph(), tmp_path, method="max")
    header, _ = read_calibration_cache(out / CACHE_FILE)
    assert header.algorithm == "MinMaxCalibration"
    scales = json.loads((out / SCALES_FILE).read_text())
    assert {row["method"] for row in scales.values()} == {"max"}


def test_exact_histograms_are_on_the_global_max_grid(tmp_path: Path) -> None:
    out, report = _calibrated(conv_bn_graph(), tmp_path, histogram="exact")
    assert report["histogram"] == "exact" and report["samples"] == 32
    hist = HistogramCollector.load_npz(out / HISTOGRAMS_FILE)
    scales = json.loads((out / SCALES_FILE).read_text())
    for name in hist:
        assert hist[name].oversampling == 1 and hist[name].num_bins == 2048
        assert hist[name].amax_range == hist[name].amax == scales[name]["amax_by_method"]["max"]


def test_sub_batching_keeps_exact_histograms_and_static_batch_graphs_work(tmp_path: Path
                                                                          ) -> None:
    """A dynamic-batch graph runs SESSION_BATCH samples at a time (bounded memory) with the
    same exact histograms as np.histogram over all values; a static-batch graph runs whole."""
    from trtflow.quant.collect import SESSION_BATCH, collect_histograms

    model = conv_bn_graph()
    data = _batches(n=48, batch=24)
    assert 24 > SESSION_BATCH
    result = collect_histograms(model, ["x"], iter(data), 1, mode="exact",
                                batches_again=lambda: iter(data))
    values = np.abs(np.concatenate([b["x"] for b in data]).astype(np.float64))
    expected, _ = np.histogram(values, bins=2048, range=(0.0, float(values.max())))
    np.testing.assert_array_equal(result.collector["x"].counts, expected)
    assert result.samples == 48 and result.batches == 2

    static = onnx.ModelProto()
    static.CopyFrom(model)
    static.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 24
    result = collect_histograms(static, ["x"], iter(data), 1)
    assert result.collector["x"].num_values == values.size
