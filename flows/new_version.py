"""`compile-on-new-version`: compile a model version that just appeared, one compile per model
at a time, with a failed state that names the stage and the reason.

A version is a registered MLflow model version (`models:/<model>-model/<N>`,
what retrain registers, or any `models:/NAME/VERSION`). The flow writes a
params file for it (the model's params with the source swapped for that
version) under `.trtflow/params/`, then runs the compile flow as a subflow.
No version: the newest registered `<model>-model` version, or, when nothing is
registered yet, the params file as it is.

Failures end the run as Failed with `<model>: compile failed at stage <stage>:
<Error>: <reason>`. trtflow's own errors (bad params, data, a failed gate) fail
at once; an unreachable MLflow or S3 server, or any error trtflow did not foresee,
compiles again after 30 s and 120 s first ($TRTFLOW_COMPILE_RETRY_DELAYS; stages
already done are cached; stage tasks also retry OS-level errors, 2 s and 4 s).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import deployment, flow_run
from prefect.states import Failed, State

from flows.limits import failed_stage, failure_message, is_bad_input, model_slot, resolve
from trtflow.atomic import atomic_file
from trtflow.errors import ParamsError
from trtflow.yamlfile import dump_yaml, load_yaml

COMPILE_RETRY_DELAYS = (30, 120)  # seconds before the 2nd and 3rd try of a transient failure


def retry_delays() -> list[float]:
    """COMPILE_RETRY_DELAYS, or $TRTFLOW_COMPILE_RETRY_DELAYS ("30,120"; "" = no retry)."""
    text = os.environ.get("TRTFLOW_COMPILE_RETRY_DELAYS")
    if text is None:
        return list(COMPILE_RETRY_DELAYS)
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ParamsError(f"TRTFLOW_COMPILE_RETRY_DELAYS={text!r}: expected seconds separated "
                          "by commas, e.g. 30,120") from None


def trained_name(model: str) -> str:
    """Registered MLflow name of the trained PyTorch model (engines are `<model>-<target>`)."""
    return f"{model}-model"


def latest_version(registered: str) -> str:
    """Newest version of a registered model, or '' when it is not registered."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{registered}'")
    return str(max(int(v.version) for v in versions)) if versions else ""


def model_uri(model: str, version: str) -> str:
    return version if version.startswith("models:/") else \
        f"models:/{trained_name(model)}/{version}"


def params_for_version(root: Path, params_file: Path, model: str, uri: str) -> Path:
    """A copy of the model's params whose source is the registered version `uri`."""
    from trtflow.params import TensorSpec, parse_params
    from trtflow.sources.builtin import BUILTIN_INPUTS, BUILTIN_OUTPUTS

    if not params_file.is_file():
        raise ParamsError(f"params file {params_file} does not exist (the event's params_path, "
                          f"default params/{model}.yaml)")
    doc = load_yaml(params_file)
    params = parse_params(doc, str(params_file))
    if params.model.name != model:
        raise ParamsError(f"{params_file}: model.name is '{params.model.name}', but the event "
                          f"is for model '{model}'")
    source = params.model.source
    doc["model"]["source"] = {"mlflow": uri}
    if source.builtin:  # a builtin's names and ranges are in code, not in its params
        specs: list[TensorSpec] = BUILTIN_INPUTS[source.builtin]
        doc["model"].setdefault("inputs", [s.model_dump(mode="json") for s in specs])
        doc["model"].setdefault("outputs", BUILTIN_OUTPUTS[source.builtin])
    parse_params(doc, f"{params_file} with source {uri}")
    slug = uri.removeprefix("models:/").replace("/", "-v").replace("@", "-")
    out = root / ".trtflow" / "params" / f"{params_file.stem}-{slug}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, "w") as f:
        f.write(dump_yaml(doc))
    return out


def compile_locked(model: str, params_file: Path, root: Path, targets: list[str] | None,
                   reason: str) -> dict[str, Any] | State:
    """The compile flow as a subflow under the model's concurrency slot: a summary, or a
    Failed state naming the stage and the reason.

    Retries happen here, not as flow retries: Prefect's server retries a flow run on any
    Failed state, which would re-run bad params three times. A transient failure (not a
    TrtflowError) runs the compile again after a backoff (cached stages are not redone);
    trtflow's own errors fail at once."""
    from flows.compile import compile_flow

    logger = get_run_logger()
    with model_slot(model):
        for attempt, delay in enumerate([*retry_delays(), None], start=1):
            logger.info("compiling %s from %s (%s, attempt %d)", model, params_file, reason,
                        attempt)
            state = compile_flow(str(params_file), str(root), targets or None,
                                 return_state=True)
            if state.is_completed():
                break
            exc = state.result(raise_on_failure=False)
            if not isinstance(exc, BaseException):
                exc = RuntimeError(state.message or state.name)
            message = failure_message(model, exc,
                                      failed_stage(state.state_details.flow_run_id, exc))
            if is_bad_input(exc) or delay is None:
                logger.error(message)
                return Failed(message=message)
            logger.warning("%s; transient, compiling again in %d s", message, delay)
            time.sleep(delay)
    summary = state.result()
    out = {"model": summary["model"], "params": str(params_file), "run_ids": summary["run_ids"],
           "released": summary["released"], "flow_run_id": str(flow_run.get_id())}
    _tag_runs(summary["run_ids"], reason)
    _emit_engines(model, summary["released"])
    _summarize(model, summary["run_ids"], summary["released"], reason)
    return out


def engines_table(model: str, run_ids: dict[str, str], released: dict[str, dict[str, Any]],
                  ui: str) -> str:
    """Markdown: one row per target with its registry version, promotion and MLflow links
    (`ui`: the MLflow UI address; '' leaves the run ids as text), the gate's reasons below."""
    from trtflow.track.release import ReleaseSummary

    rows = ["| target | registered | promotion | MLflow run |", "|---|---|---|---|"]
    reasons = []
    for target, info in released.items():
        run = run_ids.get(target, "")
        run_cell = f"[{run[:12]}]({ui}/#/runs/{run})" if ui and run else f"`{run[:12]}`"
        promo = "-"
        summary = ReleaseSummary.of(info)
        if summary.registered:
            page = f"{ui}/#/models/{summary.name}/versions/{summary.version}"
            reg = f"[{summary.registered}]({page})" if ui else summary.registered
            if not summary.created:
                reg += " (same engine)"
            if summary.verdict:
                promo = "production" if summary.verdict == "production" else "refused"
                reasons.append(f"- {summary.registered}, {promo}: {summary.reason}")
        else:
            reg = "not registered (failed a validation gate)"
        rows.append(f"| {target} | {reg} | {promo} | {run_cell} |")
    return (f"## {model}: compiled engines\n\n" + "\n".join(rows) + "\n\n" +
            "\n".join(reasons) + "\n")


def _summarize(model: str, run_ids: dict[str, str], released: dict[str, dict[str, Any]],
               reason: str) -> None:
    """The engines in the flow run's log and as a markdown artifact in the Prefect UI, linked
    to the MLflow UI when `trtflow serve` started one (TRTFLOW_MLFLOW_UI)."""
    from prefect.artifacts import create_markdown_artifact

    from trtflow.track.release import ReleaseSummary

    ui = os.environ.get("TRTFLOW_MLFLOW_UI", "").rstrip("/")
    table = engines_table(model, run_ids, released, ui)
    logger = get_run_logger()  # plain lines: the log view shows markdown as raw text
    for target, info in released.items():
        summary = ReleaseSummary.of(info)
        said = (f"{summary.registered}" + ("" if summary.created else " (same engine)")
                if summary.registered else "not registered (failed a validation gate)")
        if summary.verdict:
            said += f"; {summary.verdict}: {summary.reason}"
        logger.info("%s/%s: %s; MLflow run %s", model, target, said, run_ids.get(target, ""))
    key = re.sub(r"[^a-z0-9-]+", "-", model.lower()) + "-engines"  # Prefect's key alphabet
    create_markdown_artifact(markdown=f"{table}\nTriggered by: {reason}", key=key,
                             description=f"{model} engines compiled by this run")


def _tag_runs(run_ids: dict[str, str], reason: str) -> None:
    """Link the MLflow runs back to the Prefect flow run (and deployment) that made them."""
    import mlflow

    client = mlflow.MlflowClient()
    tags = {"trtflow.prefect.flow_run_id": str(flow_run.get_id()),
            "trtflow.prefect.flow_run_name": str(flow_run.get_name()),
            "trtflow.prefect.deployment": str(deployment.name or ""),
            "trtflow.prefect.reason": reason}
    for run_id in run_ids.values():
        for key, value in tags.items():
            client.set_tag(run_id, key, value)


def _emit_engines(model: str, released: dict[str, dict[str, Any]]) -> None:
    """`trtflow.engine.registered` per engine the compile registered (informational)."""
    from prefect.events import emit_event

    from flows.events import ENGINE_REGISTERED, RESOURCE_PREFIX

    for target, info in released.items():
        if not info.get("registered"):
            continue
        decision = info.get("decision") or {}
        emit_event(event=ENGINE_REGISTERED,
                   resource={"prefect.resource.id":
                             f"mlflow.model-version.{info['registered']}.{info['version']}",
                             "trtflow.model": model, "trtflow.target": target},
                   related=[{"prefect.resource.id": f"{RESOURCE_PREFIX}{model}",
                             "prefect.resource.role": "model"}],
                   payload={"registered": info["registered"], "version": str(info["version"]),
                            "promoted": bool(decision.get("promoted")),
                            "reason": decision.get("reason", ""),
                            "published": info.get("published") or ""})


def _run_name() -> str:
    params = flow_run.get_parameters()
    version = str(params.get("version") or "").strip()
    return f"compile {params['model']}" + (f" {version}" if version else " (newest)")


@flow(name="compile-on-new-version", flow_run_name=_run_name)
def compile_new_version(model: str, version: str = "", params_path: str = "", root: str = ".",
                        targets: str = "", reason: str = "manual") -> dict[str, Any] | State:
    """Compile `model` at registry `version` (number or models:/ URI; '' = newest, or the
    params' own source when none is registered) for `targets` (comma-separated; '' = the
    params' CPU targets)."""
    project = Path(root).resolve()
    params_file = resolve(project, params_path.strip() or f"params/{model}.yaml")
    version = version.strip() or latest_version(trained_name(model))
    try:
        if version:
            params_file = params_for_version(project, params_file, model,
                                             model_uri(model, version))
    except ParamsError as exc:
        message = failure_message(model, exc, "setup (params for the new version)")
        get_run_logger().error(message)
        return Failed(message=message)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    return compile_locked(model, params_file, project, names, reason.strip() or "manual")
