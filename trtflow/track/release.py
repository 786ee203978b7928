"""After a compile: publish each validated engine, register it, try the promotion gate.

Order matters. Publishing (when `publish.bucket` is set) comes first: if S3 is
unreachable the compile fails after bounded retries and nothing is registered,
so a registered version always has its published copy. Registration then
records the published URI and the lineage on the model version, and the
target's MLflow run gets a description (shown on its run page) linking the
version, the data digests, the params digest, the git commit and every stage's
cache key.

The published version label is content-addressed (`<target>-<build key[:12]>`),
so re-publishing the same engine is a verified no-op and two different engines
never share a label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trtflow.params import Params
from trtflow.stage import StageResult
from trtflow.stages.validate import gate_error
from trtflow.stages.validation_report import ValidationReport
from trtflow.track import registry
from trtflow.track.mlflow_log import ENGINE_MODEL_TAG, git_commit, lineage_tags


def engine_version_label(target: str, build: StageResult) -> str:
    return f"{target}-{build.key[:12]}"


def publish_engine(params: Params, root: Path, target: str, stages: list[StageResult],
                   bucket: str, prefix: str, endpoint_url: str | None,
                   version: str | None = None) -> Any:
    """Upload the target's engine with a manifest (params, lineage, stage keys)."""
    from trtflow.track.publish import publish, s3_client

    build = next(s for s in stages if s.stage == "build")
    validated = [ValidationReport.of(s) for s in stages if s.stage == "validate"]
    if validated and not validated[-1].passed:
        raise gate_error(validated[-1], target)  # never publish a failed engine
    registered = registry.version_of_engine(
        registry.registered_name(params.model.name, target), build.key)
    metadata = {"params": params.model_dump(mode="json", by_alias=True),
                "params_digest": params.digest(), "target": target,
                **built_at(root, registered), "lineage": lineage_tags(params, root),
                "stages": {s.stage: {"version": s.version, "key": s.key} for s in stages},
                "quality": quality_figures(validated[-1]) if validated else None}
    if registered is not None:
        metadata["registered"] = f"{registered.name}/{registered.version}"
    result = publish(Path(build.path), bucket, prefix, params.model.name,
                     version or engine_version_label(target, build), metadata,
                     client=s3_client(endpoint_url) if endpoint_url else None)
    if registered is not None:  # `trtflow history` shows where the engine went
        import mlflow

        mlflow.MlflowClient().set_model_version_tag(
            registered.name, registered.version, f"{registry.TAG}published_uri", result.uri)
    return result


def built_at(root: Path, registered: Any | None) -> dict[str, str]:
    """The commit that built the engine: the one its registered version recorded at
    compile time; unregistered (or just compiled), the current one."""
    commit = (registered.tags.get(f"{registry.TAG}git_commit") if registered else None)
    now = git_commit(root)
    return {"git_commit": commit or now, "git_commit_at_publish": now}


def quality_figures(report: ValidationReport) -> dict[str, Any]:
    """The validation's headline numbers, as the manifest carries them."""
    return {**report.quality.model_dump(mode="json"), "gates_passed": report.passed,
            "p50_ms": {str(bs): p50 for bs, p50 in report.latency.engine_p50_ms().items()},
            "speedup_p50": {str(bs): x for bs, x in report.speedup_p50.items()},
            "baseline": report.baseline,
            # an engine this host could not run: what measured its quality, why no latency
            "engine_ran": report.engine_ran, "latency_note": report.latency_note,
            # a decoder: perplexity, greedy agreement, tokens/s
            **({"decoder": report.decoder.model_dump(mode="json")} if report.decoder else {})}


def release(params: Params, root: Path, per_target: dict[str, list[StageResult]],
            run_ids: dict[str, str], model_stages: list[StageResult] | None = None
            ) -> dict[str, dict[str, Any]]:
    """Publish + register + promote every target whose validation gates passed.
    `model_stages` (export, cleanup) are listed in the lineage with the target's."""
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    client = mlflow.MlflowClient()
    passed = {name: stages for name, stages in per_target.items()
              if stages[-1].stage == "validate" and ValidationReport.of(stages[-1]).passed}
    published: dict[str, str] = {}
    if params.publish.bucket:  # all uploads before any registration
        for name, stages in passed.items():
            result = publish_engine(params, root, name, stages, params.publish.bucket,
                                    params.publish.prefix, params.publish.endpoint_url)
            published[name] = result.uri
    out: dict[str, dict[str, Any]] = {}
    for name, stages in per_target.items():
        run_id = run_ids[name]
        info: dict[str, Any] = {"published": published.get(name)}
        if name in passed and params.registry.enabled:
            info.update(_register(params, root, name, stages, run_id, client, published,
                                  per_target))
        client.set_tag(run_id, "mlflow.note.content",
                       lineage_note(params, root, name, [*(model_stages or []), *stages], info))
        out[name] = info
    return out


def winning_precision(precision: str, build: StageResult) -> str:
    """The precision that built the engine: `best` names the candidate that won."""
    from trtflow.stages.build_report import BuildReport
    from trtflow.track.mlflow_log import engine_precision

    return engine_precision(precision, BuildReport.of(build))


def engine_digest(build: StageResult) -> str | None:
    """sha256 of the engine file's bytes: two builds (e.g. two calibration methods) that
    give the same engine are one registry version."""
    import hashlib

    from trtflow.stages.build_report import BuildReport

    name = BuildReport.of(build).engine_file
    if not name or not build.file(name).is_file():
        return None
    digest = hashlib.sha256()
    with open(build.file(name), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fp32_engine(params: Params, name: str, per_target: dict[str, list[StageResult]],
                 host: str) -> registry.EngineFacts | None:
    """The gate facts of this run's FP32 engine on the same backend and device as `name`."""
    target = params.targets[name]
    for other, stages in per_target.items():
        spec = params.targets[other]
        if (other != name and spec.precision == "fp32" and spec.backend == target.backend
                and spec.device == target.device and stages[-1].stage == "validate"):
            return registry.EngineFacts.from_report(ValidationReport.of(stages[-1]), host,
                                                    "fp32")
    return None


def _register(params: Params, root: Path, name: str, stages: list[StageResult], run_id: str,
              client: Any, published: dict[str, str],
              per_target: dict[str, list[StageResult]]) -> dict[str, Any]:
    from trtflow.latency import host_fingerprint

    run = client.get_run(run_id)
    model_uri = run.data.tags.get(ENGINE_MODEL_TAG) or f"runs:/{run_id}/engine"
    build = next(s for s in stages if s.stage == "build")
    host = host_fingerprint()
    host_name = f"{host['cpu']} [{host['flags_digest']}]"
    target = params.targets[name]
    facts = registry.EngineFacts.from_report(ValidationReport.of(stages[-1]), host_name,
                                             winning_precision(target.precision, build))
    fp32 = _fp32_engine(params, name, per_target, host_name)
    tags = {"trtflow.params_digest": params.digest(), "trtflow.git_commit": git_commit(root),
            "trtflow.target": name, "trtflow.run_id": run_id,
            **lineage_tags(params, root),
            **{f"trtflow.stage.{s.stage}.key": s.key for s in stages}}
    if name in published:
        tags["trtflow.published_uri"] = published[name]
    reg = registry.register(root, registry.registered_name(params.model.name, name), model_uri,
                            run_id, build.key, facts, tags, params.registry,
                            engine_digest(build), fp32)
    client.set_tag(run_id, "trtflow.registered_version", f"{reg.name}/{reg.version}")
    return {"registered": reg.name, "version": reg.version, "created": reg.created,
            "decision": reg.decision}


@dataclass(frozen=True)
class ReleaseSummary:
    """What happened to one target's engine after validation, as every view shows it
    (the CLI's lines, the run page's lineage table, the Prefect engines artifact)."""

    registered: str | None  # "digits-int8 v2"
    name: str | None
    version: str | None
    created: bool  # False: the same engine was already that version
    verdict: str | None  # "production" / "not promoted"; None: no promotion was tried
    reason: str
    published: str | None

    @classmethod
    def of(cls, info: dict[str, Any]) -> ReleaseSummary:
        decision = info.get("decision") or None
        name, version = info.get("registered"), info.get("version")
        return cls(registered=f"{name} v{version}" if name else None, name=name,
                   version=str(version) if name else None, created=bool(info.get("created")),
                   verdict=None if decision is None else
                   ("production" if decision.get("promoted") else "not promoted"),
                   reason=str((decision or {}).get("reason", "")),
                   published=info.get("published"))


def lineage_note(params: Params, root: Path, target: str, stages: list[StageResult],
                 info: dict[str, Any]) -> str:
    """Markdown for the run page: what produced this engine and where it went."""
    lines = [f"### {params.model.name} / {target}: lineage", "",
             "| what | value |", "| --- | --- |",
             f"| model source | `{params.model.source.kind}` |",
             f"| params digest | `{params.digest()[:16]}` |",
             f"| git commit | `{git_commit(root)}` |"]
    for key, value in lineage_tags(params, root).items():
        lines.append(f"| {key.removeprefix('trtflow.')} | `{value[:32]}` |")
    for s in stages:
        lines.append(f"| stage {s.stage} ({s.version}) | `{s.key[:16]}` |")
    summary = ReleaseSummary.of(info)
    if summary.registered:
        lines.append(f"| registered | [{summary.registered}]"
                     f"(#/models/{summary.name}/versions/{summary.version}) |")
        if summary.verdict:
            lines.append(f"| promotion | {summary.verdict}: {summary.reason} |")
    if summary.published:
        lines.append(f"| published | `{summary.published}` |")
    return "\n".join(lines)
