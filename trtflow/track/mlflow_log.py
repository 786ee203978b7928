"""Log one compile to MLflow: a parent run per compile, a nested run per target.

Embedded default: a sqlite database and an artifact directory under the
project's `.trtflow/` (set by `trtflow.project.configure_environment`);
`MLFLOW_TRACKING_URI` overrides. The experiment's artifact location is set
explicitly, so nothing lands in `./mlruns` of whatever directory we run from.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trtflow.errors import TrackingError
from trtflow.names import inside
from trtflow.params import Params
from trtflow.stage import StageResult
from trtflow.stages.build_report import BuildReport, SelectionReport
from trtflow.stages.validate import PLOT_FILE
from trtflow.stages.validation_report import REPORT_FILE, ValidationReport
from trtflow.track.health import unreachable


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_digest(root: Path, data_path: str) -> str | None:
    """The md5 DVC recorded for the .dvc file covering `data_path` (file or its folder)."""
    import yaml

    path = Path(data_path)
    path = path if path.is_absolute() else root / path
    for candidate in (path, *path.parents):
        dvc_file = candidate.with_name(candidate.name + ".dvc")
        if dvc_file.is_file():
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
            return str(outs[0].get("md5"))
        if candidate == root:
            break
    return None


def lineage_tags(params: Params, root: Path) -> dict[str, str]:
    """Data lineage: each data source's DVC md5 (when DVC-tracked) and content digest."""
    from trtflow.context import data_digest

    tags = {}
    for split in ("calibration", "evaluation"):
        source = getattr(params.data, split)
        if source is None:
            continue
        tags[f"trtflow.data.{split}.sha256"] = data_digest(root, source)[:64]
        md5 = dvc_digest(root, source.path) if source.path else None
        tags[f"trtflow.data.{split}.dvc_md5"] = md5 or "not DVC-tracked"
    return tags


@contextmanager
def tracking_server_guard(what: str) -> Iterator[None]:
    """Turn "the tracking server went away during `what`" into one TrackingError.

    MLflow's client retries a dead server for minutes by default (7 retries, factor 2:
    ~4 min per request); `configure_environment` lowers that to 3 retries, factor 1, so a
    server that stops mid-run fails the run in seconds. The error says what is safe: the
    stages are complete in the store, and a re-run logs them without recomputing.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    try:
        yield
    except TrackingError:
        raise
    except Exception as exc:
        if not uri.startswith(("http://", "https://")) or not unreachable(uri):
            raise  # not an outage: the original error
        reason = " ".join(str(exc).split())[:300]
        raise TrackingError(
            f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) stopped answering while "
            f"{what}: {reason}. The compiled stages are complete in the store: run the same "
            "command again once the server is back (every stage will be cached)") from exc


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def experiment_id(name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = os.environ.get("TRTFLOW_MLFLOW_ARTIFACTS")
    try:
        return mlflow.create_experiment(
            name, artifact_location=inside(Path(location), name).as_uri() if location else None,
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except Exception:  # created concurrently by another run
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# MLflow 3's UI opens an experiment as GenAI (traces) unless it is tagged as model
# development; its "Model training" mode lists runs with metrics.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_KEY = "trtflow"  # the shared view trtflow writes: `?viewStateShareKey=trtflow`
SHARED_VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def headline_view(params: Params) -> dict[str, Any]:
    """The runs list a user should land on: one row per engine (target runs only, so not
    nested under their compile run), the headline metrics as columns, best quality first.
    MLflow's UI loads it from the experiment tag `mlflow.sharedViewState.<key>`."""
    bs = min(params.validate_.batch_sizes)
    quality = "accuracy" if params.data.evaluation and params.data.evaluation.labels \
        else "agreement"
    metrics = [quality, *(["agreement"] if quality == "accuracy" else []),
               f"engine.bs{bs}.p50_ms", f"speedup.bs{bs}", f"engine.bs{bs}.noise_pct",
               "engine_bytes"]
    if params.model.source.decoder is not None:  # lowest perplexity first; decode speed
        return {**_view_with(["perplexity", "perplexity_increase", "agreement",
                                    "greedy_agreement", f"decode_tokens_per_s.bs{bs}",
                                    f"speedup.bs{bs}", "engine_bytes"]),
                "orderByKey": "metrics.`perplexity`", "orderByAsc": True}
    return {**_view_with(metrics), "orderByKey": f"metrics.`{quality}`",
            "orderByAsc": False}


def _view_with(metrics: list[str]) -> dict[str, Any]:
    """The headline view's columns and filter, with these metrics."""
    columns = [f"params.`{p}`" for p in ("target.backend", "target.precision",
                                         "engine.precision", "calibration.method_chosen")]
    columns += [f"metrics.`{m}`" for m in metrics]
    columns += ["tags.`trtflow.gates_passed`", "tags.`trtflow.registered_version`"]
    # sorting by a metric (not start time) also lists nested runs flat
    return {"selectedColumns": columns, "searchFilter": "tags.`trtflow.target` LIKE '%'"}


def describe_experiment(exp_id: str, params: Params) -> None:
    """Tag the model's experiment for MLflow's UI: model development, the headline view,
    and a description linking that view (idempotent: every compile refreshes them)."""
    import json

    import mlflow

    client = mlflow.MlflowClient()
    client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    client.set_experiment_tag(exp_id, SHARED_VIEW_TAG, json.dumps(headline_view(params)))
    note = client.get_experiment(exp_id).tags.get("mlflow.note.content", "")
    if note and not note.startswith("Engines compiled by trtflow"):
        return  # the user wrote their own description
    client.set_experiment_tag(exp_id, "mlflow.note.content", (
        f"Engines compiled by trtflow for `{params.model.name}`: one run per target "
        f"(nested under its compile run). The headline view lists every engine with its "
        f"quality, p50 latency and speed-up: [{VIEW_KEY} view]({view_path(exp_id)})."))


def view_path(exp_id: str) -> str:
    """The URL fragment of the headline view (append to the MLflow UI's address)."""
    return (f"#/experiments/{exp_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def log_compile(params: Params, params_path: str, root: Path,
                model_stages: list[StageResult], targets: dict[str, list[StageResult]],
                wall_seconds: float) -> dict[str, str]:
    """Log the compile; returns {"parent": run_id, target: run_id, ...}."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    exp = experiment_id(params.model.name)
    describe_experiment(exp, params)
    tags = {"trtflow.git_commit": git_commit(root), "trtflow.params_digest": params.digest(),
            "trtflow.params_file": params_path, "trtflow.model": params.model.name,
            "trtflow.source": params.model.source.kind}
    tags.update(lineage_tags(params, root))
    if params.model.source.mlflow:
        tags["trtflow.source.mlflow"] = params.model.source.mlflow
        tags["trtflow.source.pickle_allowed"] = str(params.model.source.allow_pickle).lower()
    key = compile_key(params, model_stages, targets)
    tags["trtflow.compile_key"] = key
    if all(s.cached for s in [*model_stages, *(s for st in targets.values() for s in st)]):
        earlier = _runs_of_compile(exp, key, list(targets)) or \
            _runs_of_targets(exp, params, model_stages, targets)
        if earlier is not None:  # nothing was built or measured: no new runs
            return earlier
    run_ids: dict[str, str] = {}
    commit = tags["trtflow.git_commit"][:7]
    with mlflow.start_run(experiment_id=exp, run_name=f"{params.model.name} compile "
                          f"{params.digest()[:8]} @{commit}", tags=tags) as parent:
        run_ids["parent"] = parent.info.run_id
        mlflow.log_params({k: str(v)[:500] for k, v in
                           _flatten(params.model_dump(mode="json", by_alias=True,
                                                      exclude={"targets"})).items()})
        _log_stages(model_stages)
        mlflow.log_metric("wall_seconds", wall_seconds)
        for stage in model_stages:
            if stage.stage == "cleanup":
                mlflow.log_artifact(str(stage.file("cleanup_report.json")))
        for name, stages in targets.items():
            with mlflow.start_run(experiment_id=exp, run_name=target_run_name(params, name, stages),
                                  nested=True,
                                  tags={**tags, "trtflow.target": name}) as child:
                run_ids[name] = child.info.run_id
                _log_target(params, name, stages)
    failed = [run_ids[name] for name, stages in targets.items()
              if any(s.stage == "validate" and not ValidationReport.of(s).passed
                     for s in stages)]
    client = mlflow.MlflowClient()
    for run_id in failed + ([run_ids["parent"]] if failed else []):
        client.set_terminated(run_id, status="FAILED")
    return run_ids


def compile_key(params: Params, model_stages: list[StageResult],
                targets: dict[str, list[StageResult]]) -> str:
    """What a compile run stands for: the params and every stage key of every target."""
    import hashlib
    import json

    keys = {"model": [s.key for s in model_stages],
            **{name: [s.key for s in stages] for name, stages in sorted(targets.items())}}
    return hashlib.sha256(json.dumps([params.digest(), keys], sort_keys=True).encode()
                          ).hexdigest()


def _runs_of_compile(exp: str, key: str, targets: list[str]) -> dict[str, str] | None:
    """The run ids of the compile run that built exactly these artifacts, if one exists:
    a fully cached re-run links to it (tag `trtflow.cached_reruns`) instead of logging the
    same engines again."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = client.search_runs([exp], f"tags.`trtflow.compile_key` = '{key}'",
                              order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "trtflow.target" not in r.data.tags and _complete(r, runs)]
    if not parents:
        return None
    parent = parents[0]  # children carry the compile key too
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    run_ids = {"parent": parent.info.run_id,
               **{c.data.tags.get("trtflow.target", ""): c.info.run_id for c in children}}
    if not set(targets) <= set(run_ids):
        return None
    reruns = int(parent.data.tags.get("trtflow.cached_reruns", "0")) + 1
    client.set_tag(parent.info.run_id, "trtflow.cached_reruns", str(reruns))
    return {name: run_ids[name] for name in ["parent", *targets]}


def _runs_of_targets(exp: str, params: Params, model_stages: list[StageResult],
                     targets: dict[str, list[StageResult]]) -> dict[str, str] | None:
    """The target runs that logged exactly these engines in an earlier compile of other
    targets (`-t int8` after a run of every target): each target's run of the same params
    whose stage keys are these, in a compile logged to its end. A fully cached re-run of a
    subset links to them (the compile run's `trtflow.cached_reruns` counts it) instead of
    logging the same engines again; None when any target has no such run."""
    import mlflow

    client = mlflow.MlflowClient()
    found: dict[str, str] = {}
    parents: dict[str, Any] = {}  # parent run id: the run, or None if it does not qualify
    used: set[str] = set()
    for name, stages in targets.items():
        keys = " AND ".join(f"tags.`trtflow.stage.{s.stage}.key` = '{s.key}'" for s in stages)
        runs = client.search_runs(
            [exp], f"tags.`trtflow.target` = '{name}' AND tags.`trtflow.params_digest` = "
            f"'{params.digest()}' AND {keys}", order_by=["attributes.start_time ASC"])
        for run in runs:
            parent_id = run.data.tags.get("mlflow.parentRunId", "")
            if parent_id not in parents:
                parent = client.get_run(parent_id) if parent_id else None
                siblings = client.search_runs(
                    [exp], f"tags.mlflow.parentRunId = '{parent_id}'") if parent else []
                same_model = parent is not None and all(
                    parent.data.tags.get(f"trtflow.stage.{s.stage}.key") == s.key
                    for s in model_stages)
                parents[parent_id] = parent if same_model and _complete(parent, siblings) \
                    else None
            if parents[parent_id] is not None:
                found[name] = run.info.run_id
                found.setdefault("parent", parent_id)
                used.add(parent_id)
                break
        else:
            return None
    for parent_id in used:
        reruns = int(parents[parent_id].data.tags.get("trtflow.cached_reruns", "0")) + 1
        client.set_tag(parent_id, "trtflow.cached_reruns", str(reruns))
    return {name: found[name] for name in ["parent", *targets]}


def _complete(parent: Any, runs: list[Any]) -> bool:
    """Whether a compile run was logged to its end: finished, or failed only because an
    engine missed a gate (a run whose process died mid-logging stays RUNNING, and one
    that raised is FAILED without a gate failure: neither is linked to)."""
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]

    def gated(run: Any) -> bool:
        return run.info.status == "FAILED" and "trtflow.gate_failure" in run.data.tags

    return bool(children) and all(c.info.status == "FINISHED" or gated(c) for c in children) \
        and (parent.info.status == "FINISHED" or
             (parent.info.status == "FAILED" and any(gated(c) for c in children)))


def target_run_name(params: Params, target: str, stages: list[StageResult]) -> str:
    """`digits/int8 onnxruntime-cpu int8 entropy 1db21463`: model, target, the engine that
    was built (the winner for precision best), calibration method and engine key, so runs
    are told apart in MLflow's list without opening them."""
    by_stage = {s.stage: s for s in stages}
    build = by_stage["build"]
    built = BuildReport.of(build)
    engine = built.selection.winner if built.selection else \
        f"{built.backend} {params.targets[target].precision}"
    method = by_stage["calibrate"].report.get("method", "") if "calibrate" in by_stage else ""
    return " ".join(p for p in (f"{params.model.name}/{target}", engine, method,
                                build.key[:8]) if p)


def _log_stages(stages: list[StageResult]) -> None:
    import mlflow

    for s in stages:
        mlflow.set_tag(f"trtflow.stage.{s.stage}.version", s.version)
        mlflow.set_tag(f"trtflow.stage.{s.stage}.key", s.key)
        mlflow.set_tag(f"trtflow.stage.{s.stage}.cached", str(s.cached).lower())
        mlflow.log_metric(f"stage_seconds.{s.stage}", s.seconds)


LOGGED_CALIBRATION = "calibration"  # a run's artifact folder: the calibrate directory's files


def _log_calibration(cal: StageResult) -> None:
    """Scale table, cache, accuracy report, threshold plots; time and memory as metrics."""
    import tempfile

    import mlflow

    from trtflow.quant.artifact import Calibration
    from trtflow.quant.plots import plot_thresholds, sensitive_tensors

    rep = cal.report
    mlflow.log_params({"calibration.method_chosen": rep["method"],
                       "calibration.float_layers": ",".join(rep.get("float_layers", [])) or
                       "none"})
    for key in ("collect_seconds", "peak_rss_mb", "samples", "tensors", "float_fraction"):
        if isinstance(rep.get(key), int | float):
            mlflow.log_metric(f"calibration.{key}", rep[key])
    calibration = Calibration(Path(cal.path))
    for path in calibration.logged_files():  # histograms too: for `trtflow report`
        mlflow.log_artifact(str(path), artifact_path=LOGGED_CALIBRATION)
    weight_only = Path(cal.path) / "weight_only.json"  # a decoder's weight-only settings
    if weight_only.is_file():
        mlflow.log_artifact(str(weight_only), artifact_path=LOGGED_CALIBRATION)
    if calibration.histograms_file.is_file():
        tensors = sensitive_tensors(calibration.accuracy_file, calibration.scales_file)
        with tempfile.TemporaryDirectory() as tmp:
            plot = plot_thresholds(calibration.histograms_file, calibration.scales_file,
                                   tensors, Path(tmp) / "thresholds.png")
            mlflow.log_artifact(str(plot), artifact_path=LOGGED_CALIBRATION)


ENGINE_MODEL_TAG = "trtflow.engine_model_uri"
PYFUNC_FILE = Path(__file__).with_name("engine_pyfunc.py")


PYFUNC_BACKENDS = ("onnxruntime-cpu", "openvino-cpu")  # runnable by engine_pyfunc.py


def _engine_io(engine_dir: Path, backend: str) -> tuple[list[tuple[str, str, tuple]], ...]:
    """(name, numpy dtype, shape with -1 for dynamic) of the engine's inputs and outputs."""
    if backend == "openvino-cpu":
        import openvino as ov

        names = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32",
                 "boolean": "bool"}
        model = ov.Core().read_model(str(engine_dir / "model.xml"))

        def ports(values: Any) -> list[tuple[str, str, tuple]]:
            return [(p.get_any_name(), names.get(p.get_element_type().get_type_name(), "float32"),
                     tuple(d.get_length() if d.is_static else -1 for d in p.get_partial_shape()))
                    for p in values]

        return ports(model.inputs), ports(model.outputs)
    import onnxruntime as ort

    session = ort.InferenceSession(str(engine_dir / "engine.onnx"),
                                   providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": "float32", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}

    def values(vs: list[Any]) -> list[tuple[str, str, tuple]]:
        return [(v.name, dtypes.get(v.type, "float32"),
                 tuple(d if isinstance(d, int) else -1 for d in v.shape)) for v in vs]

    return values(session.get_inputs()), values(session.get_outputs())


def log_engine_pyfunc(engine_dir: Path, backend: str = "onnxruntime-cpu") -> str:
    """Log an engine directory (ONNX Runtime or OpenVINO on the CPU) as an MLflow pyfunc
    model named `engine` in the active run (models from code: no pickle); its model URI."""
    from importlib.metadata import version

    import mlflow
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs, outputs = _engine_io(engine_dir, backend)

    def specs(values: list[tuple[str, str, tuple]]) -> Schema:
        return Schema([TensorSpec(np.dtype(dtype), shape, name) for name, dtype, shape in values])

    runtime = "openvino" if backend == "openvino-cpu" else "onnxruntime"
    with warnings.catch_warnings():  # MLflow's advice on type hints / input examples: the
        warnings.simplefilter("ignore", UserWarning)  # tensor signature covers both
        info = mlflow.pyfunc.log_model(
            name="engine", python_model=str(PYFUNC_FILE), artifacts={"engine": str(engine_dir)},
            signature=ModelSignature(inputs=specs(inputs), outputs=specs(outputs)),
            pip_requirements=[f"{runtime}=={version(runtime)}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}"])
    return str(info.model_uri)


def engine_precision(precision: str, built: BuildReport) -> str:
    """The precision that built the engine: for `best`, the winning candidate's."""
    if precision != "best" or built.selection is None:
        return precision
    won = next((c for c in built.selection.candidates if c.name == built.selection.winner),
               None)
    return str(won.target.get("precision", precision)) if won else precision


def _log_layer_precision(selection: SelectionReport) -> None:
    import mlflow

    won = next((c for c in selection.candidates if c.name == selection.winner), None)
    if selection.class_level is not None:
        mlflow.log_param("engine.class_level", selection.class_level)
    mlflow.log_param("engine.float_layers", len(won.float_layers) if won else 0)
    if selection.layer_precision:
        mlflow.log_dict({"searches": selection.layer_precision},
                        "selection/layer_precision.json")


def _log_target(params: Params, name: str, stages: list[StageResult]) -> None:
    import mlflow

    target = params.targets[name]
    mlflow.log_params({f"target.{k}": v for k, v in target.model_dump(mode="json").items()})
    _log_stages(stages)
    by_stage = {s.stage: s for s in stages}
    if "calibrate" in by_stage:
        _log_calibration(by_stage["calibrate"])
    build, validate = by_stage["build"], by_stage.get("validate")
    built = BuildReport.of(build)
    mlflow.log_param("engine.precision", engine_precision(target.precision, built))
    if built.selection is not None:  # best: the class-level pick and the layers kept float
        _log_layer_precision(built.selection)
    mlflow.log_metric("engine_bytes", built.engine_bytes)
    backend = built.backend
    if backend in PYFUNC_BACKENDS:
        mlflow.set_tag(ENGINE_MODEL_TAG, log_engine_pyfunc(Path(build.path), backend))
    else:  # GPU engines (TensorRT plans, CUDA sessions) do not run here: plain artifacts
        mlflow.log_artifacts(build.path, artifact_path="engine")
    if validate is None:
        return
    report = ValidationReport.of(validate)
    for key, value in report.quality.figures().items():
        mlflow.log_metric(key, value)
    if report.decoder is not None:  # perplexity, greedy agreement, tokens/s
        for key, value in report.decoder.figures().items():
            mlflow.log_metric(key, value)
    qdq = report.qdq_model  # the Q/DQ graph TensorRT would be handed, run in ONNX Runtime
    if qdq is not None:
        figures = {"samples": qdq.samples, "majority_fraction": qdq.majority_fraction,
                   **qdq.figures()}
        for key, figure in figures.items():
            if figure is not None:
                mlflow.log_metric(f"qdq_model.{key}", figure)
    for label, rows in (("engine", report.latency.engine),
                        ("baseline", report.latency.baseline)):
        for row in rows:
            for q, value in (("p50_ms", row.p50_ms), ("p95_ms", row.p95_ms),
                             ("p99_ms", row.p99_ms), ("throughput_per_s", row.throughput_per_s),
                             ("noise_pct", row.noise_pct)):
                mlflow.log_metric(f"{label}.bs{row.batch_size}.{q}", value)
    for bs, speedup in report.speedup_p50.items():
        mlflow.log_metric(f"speedup.bs{bs}", speedup)
    mlflow.set_tag("trtflow.gates_passed", str(report.passed).lower())
    mlflow.set_tag("trtflow.baseline", report.baseline)
    mlflow.log_artifact(str(validate.file(REPORT_FILE)))
    mlflow.log_artifact(str(validate.file(PLOT_FILE)))
    if not report.passed:
        mlflow.set_tag("trtflow.gate_failure", ", ".join(d.gate for d in report.gates.failed))
