"""The compile flow on `digits` through real Prefect (ephemeral) and real MLflow (sqlite)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from flows.compile import compile_flow
from trtflow.context import Context
from trtflow.errors import GateError, ParityError
from trtflow.params import load_params
from trtflow.plan import EXPORT
from trtflow.stage import run_step
from trtflow.stages.build_report import BuildReport
from trtflow.stages.validation_report import ValidationReport

from .conftest import write_params

pytestmark = pytest.mark.integration
DEMO_TARGETS = ["fp32", "int8"]  # the stage counts below; digits.yaml has more targets


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own project dir: its first compile must find an empty store."""
    from trtflow.sources.builtin import write_demo_data

    root = tmp_path_factory.mktemp("flow")
    write_demo_data(root)
    return root


@pytest.fixture(scope="module")
def first_run(digits_root: Path) -> dict:
    return compile_flow(str(write_params(digits_root)), str(digits_root), DEMO_TARGETS)


def _stages(summary: dict) -> list:
    return [s for stages in summary["stages"].values() for s in stages]


def test_digits_compiles_and_logs_to_mlflow(first_run: dict) -> None:
    quality = ValidationReport.of(first_run["stages"]["fp32"][-1]).quality
    assert quality.accuracy is not None and quality.accuracy >= 0.97
    assert quality.agreement == 1.0
    assert [s.prefect_state for s in _stages(first_run)] == ["Completed"] * 7

    client = mlflow.MlflowClient()
    child = client.get_run(first_run["run_ids"]["fp32"])
    assert child.info.status == "FINISHED"
    assert child.data.metrics["accuracy"] >= 0.97
    assert child.data.metrics["engine.bs1.p50_ms"] > 0
    assert child.data.metrics["baseline.bs32.p99_ms"] > 0
    assert "speedup.bs1" in child.data.metrics
    assert child.data.tags["trtflow.stage.build.key"] == first_run["stages"]["fp32"][0].key
    assert child.data.tags["trtflow.gates_passed"] == "true"
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"validation.json", "latency.png"} <= artifacts
    model = Path(mlflow.artifacts.download_artifacts(child.data.tags["trtflow.engine_model_uri"]))
    engine_files = {p.name for p in model.rglob("*")}  # the engine as a runnable pyfunc
    assert {"MLmodel", "engine_pyfunc.py", "engine.onnx", "session.json"} <= engine_files

    parent = client.get_run(first_run["run_ids"]["parent"])
    assert parent.data.tags["trtflow.params_digest"]
    assert len(parent.data.tags["trtflow.data.evaluation.sha256"]) == 64
    assert parent.data.tags["trtflow.data.evaluation.dvc_md5"] == "not DVC-tracked"  # tmp dir
    assert parent.data.tags["trtflow.stage.export.version"] == "export-1"
    assert "stage_seconds.cleanup" in parent.data.metrics
    assert "cleanup_report.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.name == "digits" and "mlartifacts" in exp.artifact_location
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # not GenAI
    assert not first_run["reused_runs"]


def test_digits_int8_keeps_accuracy_and_logs_calibration(first_run: dict) -> None:
    calibrate, build, validate = first_run["stages"]["int8"]
    drop = ValidationReport.of(validate).quality.accuracy_drop
    assert drop is not None and drop <= 0.003  # issue target
    assert (BuildReport.of(build).engine_ops or {}).get("QLinearConv", 0) >= 3  # integer convs
    assert build.report["qdq"]["activation_dtype"] == "uint8"
    client = mlflow.MlflowClient()
    run = client.get_run(first_run["run_ids"]["int8"])
    assert run.data.params["calibration.method_chosen"] == calibrate.report["method"]
    assert run.data.metrics["calibration.samples"] == 240
    files = {a.path for a in client.list_artifacts(run.info.run_id, "calibration")}
    assert {"calibration/scales.json", "calibration/calibration.cache",
            "calibration/thresholds.png", "calibration/model.qdq.onnx"} <= files


def test_cached_rerun_runs_no_stage(first_run: dict, digits_root: Path) -> None:
    again = compile_flow(str(write_params(digits_root)), str(digits_root), DEMO_TARGETS)
    stages = _stages(again)
    assert [s.prefect_state for s in stages] == ["Cached"] * 7
    assert [s.key for s in stages] == [s.key for s in _stages(first_run)]
    # nothing new was built or measured: no duplicate runs, a link to the runs that did
    assert again["run_ids"] == first_run["run_ids"] and again["reused_runs"]
    parent = mlflow.MlflowClient().get_run(first_run["run_ids"]["parent"])
    assert int(parent.data.tags["trtflow.cached_reruns"]) >= 1


def test_cached_rerun_of_one_target_links_to_its_earlier_run(first_run: dict,
                                                             digits_root: Path) -> None:
    """`-t int8` after a run of every target: every stage cached, and the int8 engine is
    the target run that logged it, not a new compile run (issue 27 item 8)."""
    one = compile_flow(str(write_params(digits_root)), str(digits_root), ["int8"])
    assert all(s.cached for s in _stages(one))
    assert one["run_ids"] == {"parent": first_run["run_ids"]["parent"],
                              "int8": first_run["run_ids"]["int8"]}
    assert one["reused_runs"]


def test_validate_param_change_reruns_only_validate(first_run: dict, digits_root: Path) -> None:
    path = write_params(digits_root, validate={"batch_sizes": [1, 8]})
    changed = compile_flow(str(path), str(digits_root), DEMO_TARGETS)
    states = [(s.stage, s.prefect_state) for s in _stages(changed)]
    assert states == [("export", "Cached"), ("cleanup", "Cached"),
                      ("build", "Cached"), ("validate", "Completed"),
                      ("calibrate", "Cached"), ("build", "Cached"), ("validate", "Completed")]
    rows = ValidationReport.of(changed["stages"]["fp32"][-1]).latency.engine
    assert [r.batch_size for r in rows] == [1, 8]


def test_an_openvino_engine_is_compiled_validated_registered_and_served(
        first_run: dict, digits_root: Path) -> None:
    """A backend added as one module + one registry line goes through the whole flow: the
    int8 engine is built from the same calibration, validated, registered as a pyfunc."""
    targets = {"openvino-int8": {"backend": "openvino", "precision": "int8"}}
    summary = compile_flow(str(write_params(digits_root, targets=targets)), str(digits_root),
                           ["openvino-int8"])
    calibrate, build, validate = summary["stages"]["openvino-int8"]
    assert calibrate.key == first_run["stages"]["int8"][0].key and calibrate.cached
    assert BuildReport.of(build).backend == "openvino-cpu"
    assert any(k.startswith("Convolution:") and k.endswith(("i8", "u8"))
               for k in build.report["runtime_layers"])  # int8 kernels really ran
    # OpenVINO's kernels compute what the Q/DQ graph says (on digits the fast placement
    # did not, and the build fell back to the TensorRT placement, saying so)
    qdq = build.report["qdq"]
    assert qdq["kernel_cosine"] >= 0.999
    assert qdq["placement"] == "ort_cpu" or "fallback" in qdq
    drop = ValidationReport.of(validate).quality.accuracy_drop
    assert drop is not None and drop <= 0.003
    released = summary["released"]["openvino-int8"]
    assert released["registered"] == "digits-openvino-int8"
    version = mlflow.MlflowClient().get_model_version("digits-openvino-int8",
                                                      str(released["version"]))
    model = mlflow.pyfunc.load_model(f"models:/digits-openvino-int8/{version.version}")
    from trtflow.sources.builtin import digits_splits

    images, labels = digits_splits()["evaluation"]
    logits = model.predict({"image": images[:64]})
    assert logits.shape == (64, 10) and (logits.argmax(1) == labels[:64]).mean() > 0.9


def test_gate_failure_fails_run_and_registers_nothing(first_run: dict,
                                                      digits_root: Path) -> None:
    def registered() -> set[tuple[str, str]]:  # other modules of the session register too
        client = mlflow.MlflowClient()
        return {(v.name, v.version) for m in client.search_registered_models("name LIKE "
                                                                            "'digits-%'")
                for v in client.search_model_versions(f"name='{m.name}'")}

    before = registered()
    path = write_params(digits_root, validate={"gates": {"min_speedup": 1000.0}})
    with pytest.raises(GateError, match=r"min_speedup: measured [\d.]+, allowed 1000"):
        compile_flow(str(path), str(digits_root), DEMO_TARGETS)
    runs = mlflow.search_runs(experiment_names=["digits"], filter_string=
                              "tags.`trtflow.gate_failure` = 'min_speedup'", output_format="list")
    assert runs and all(r.info.status == "FAILED" for r in runs)
    assert before and registered() == before  # the failed compile registered nothing


def test_export_parity_failure_leaves_no_artifact(tmp_path: Path) -> None:
    params_path = tmp_path / "noisy.yaml"
    params_path.write_text(
        "model:\n  name: noisy\n  source: {factory: 'tests.unit.tiny:NoisyNet', weights: none}\n"
        "  inputs: [{name: x, shape: [batch, 4]}]\n")
    ctx = Context.create(load_params(params_path), tmp_path)
    with pytest.raises(ParityError, match="export parity"):
        run_step(EXPORT, ctx, None, [])
    assert not any((tmp_path / ".trtflow" / "store" / "export").glob("*"))
