"""The typed build report: the fields every backend writes, the selection, extras kept."""

from __future__ import annotations

import pytest

from trtflow.errors import StoreError
from trtflow.stages.build_report import BuildReport

SELECTION = {"winner": "openvino-int8", "why": "openvino-int8: 1.2 ms", "metric": "cosine",
             "min_agreement": 0.99, "candidates": [
                 {"name": "openvino-int8", "target": {"backend": "openvino"},
                  "float_ops": [], "smooth_alpha": None, "agreement": 0.999,
                  "p50_ms": {"1": 1.2}, "noise_pct": {"1": 2.0}, "passed": True,
                  "error": None, "score_ms": 1.2}]}


def test_a_best_build_names_its_winner_and_keeps_backend_fields() -> None:
    stored = {"engine_file": "model.xml", "engine_bytes": 10, "backend": "openvino-cpu",
              "int8_scheme": "static", "selection": SELECTION}
    report = BuildReport.from_dict(stored)
    assert report.engine == "openvino-int8" and report.selection is not None
    assert report.selection.candidates[0].p50_ms == {1: 1.2}
    assert report.model_dump(mode="json")["int8_scheme"] == "static"
    plain = BuildReport.from_dict({"engine_bytes": 10, "backend": "onnxruntime-cpu",
                                   "engine_ops": {"Conv": 2}})
    assert plain.engine == "onnxruntime-cpu" and plain.engine_ops == {"Conv": 2}


def test_a_build_report_without_an_engine_size_is_named() -> None:
    with pytest.raises(StoreError, match="field 'engine_bytes'"):
        BuildReport.from_dict({"backend": "onnxruntime-cpu"}, "build artifact /s/x")


def test_per_layer_precision_fields_are_typed_and_logged(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from trtflow.track.mlflow_log import _log_layer_precision

    search = [{"start": "ort-int8", "mode": "free", "steps": [{"group": "g3", "kept": True}]}]
    selection = {**SELECTION, "winner": "ort-int8+float1", "class_level": "ort-int8",
                 "layer_precision": search, "candidates": [
                     {**SELECTION["candidates"][0], "name": "ort-int8+float1",
                      "float_groups": ["g3"], "float_layers": ["/conv1/Conv", "/conv2/Conv"]}]}
    report = BuildReport.from_dict({"engine_bytes": 10, "backend": "onnxruntime-cpu",
                                    "selection": selection})
    assert report.selection is not None and report.selection.class_level == "ort-int8"
    assert report.selection.candidates[0].float_layers == ["/conv1/Conv", "/conv2/Conv"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.MlflowClient().create_experiment("m", artifact_location=str(tmp_path / "a"))
    with mlflow.start_run(experiment_id=exp) as run:
        _log_layer_precision(report.selection)
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.params["engine.class_level"] == "ort-int8"
    assert logged.data.params["engine.float_layers"] == "2"
    saved = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/selection/layer_precision.json")
    assert saved == {"searches": search}
