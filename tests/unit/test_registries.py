"""Registries of calibration methods and model source kinds: the one list each, read by
params, the calibrate stage, plots and the source loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtflow.errors import ParamsError
from trtflow.params import CalibrationConfig, ModelConfig, ModelSource, parse_params, source_kinds
from trtflow.quant import methods
from trtflow.quant.histogram import TensorHistogram
from trtflow.quant.plots import METHOD_COLORS
from trtflow.sources import source_kind


def _hist() -> TensorHistogram:
    from trtflow.quant.collector import HistogramCollector

    collector = HistogramCollector(num_bins=128)
    collector.update({"t": np.random.default_rng(0).standard_normal(4096).astype(np.float32)})
    return collector["t"]


def test_every_registered_method_computes_an_amax_and_declares_its_cache_header() -> None:
    hist = _hist()
    cfg = CalibrationConfig()
    for name, method in methods.REGISTRY.items():
        assert methods.compute_amax(hist, name, **methods.method_options(name, cfg)) > 0
        assert method.cache_algorithm in ("EntropyCalibration2", "MinMaxCalibration",
                                          "LegacyCalibration")
    assert set(METHOD_COLORS) == set(methods.METHODS)
    assert methods.method_options("percentile", cfg) == {"percentile": cfg.percentile}


def test_a_registered_method_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method added to the registry is accepted by params and computed by name."""
    registry = {**methods.REGISTRY, "half-max": methods.CalibrationMethod(
        "tests.unit.test_registries:amax_half_max", "MinMaxCalibration")}
    monkeypatch.setattr(methods, "REGISTRY", registry)
    monkeypatch.setattr(methods, "METHODS", tuple(registry))
    cfg = CalibrationConfig(method="half-max")
    hist = _hist()
    assert methods.compute_amax(hist, cfg.method) == pytest.approx(
        methods.compute_amax(hist, "max") / 2)
    assert methods.cache_algorithm("half-max") == "MinMaxCalibration"


def amax_half_max(hist: TensorHistogram) -> float:
    return methods.amax_max(hist) / 2


def test_unknown_methods_are_refused_naming_the_registered_ones() -> None:
    body = {"model": {"name": "x", "source": {"builtin": "digits"}}}
    with pytest.raises(ParamsError, match=r"calibration.method': unknown calibration method "
                                          r"'kl'; expected one of \['max', 'percentile'"):
        parse_params({**body, "calibration": {"method": "kl"}})
    with pytest.raises(ParamsError, match="calibration.fp8_method'.*'auto'"):
        parse_params({**body, "calibration": {"fp8_method": "auto"}})


@pytest.mark.parametrize("kind", list(source_kinds()))
def test_every_source_kind_names_an_object_that_identifies_and_loads_it(kind: str) -> None:
    handler = source_kind(ModelSource.model_construct(**{kind: "x"}))
    for method in ("digest", "load", "known_inputs", "sample_inputs", "check"):
        assert callable(getattr(handler, method))
    assert isinstance(handler.synthetic_check, bool)


def test_the_source_kinds_are_the_fields_that_name_a_handler() -> None:
    assert list(source_kinds()) == ["builtin", "onnx", "exported_program", "factory", "mlflow",
                                    "decoder"]
    with pytest.raises(ParamsError, match="exactly one of builtin, onnx, exported_program, "
                                          "factory, mlflow, decoder must be set"):
        parse_params({"model": {"name": "x", "source": {}}})


def test_a_builtin_source_is_known_without_loading(tmp_path: Path) -> None:
    cfg = ModelConfig(name="d", source=ModelSource(builtin="digits"))
    kind = source_kind(cfg.source)
    assert kind.digest(cfg, tmp_path).startswith("builtin-1:digits:")
    assert [s.name for s in kind.known_inputs(cfg) or []] == ["image"]
    assert kind.sample_inputs(cfg, 2)["image"].shape[0] == 2  # type: ignore[index]
