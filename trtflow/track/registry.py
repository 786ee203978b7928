"""The MLflow model registry: engines as model versions, aliases moved only by the gate.

One registered model per model and target (`digits-int8`): versions of it are
engines that passed validation. `candidate` points at the newest registered
engine; `production` moves to a version only when the promotion gate passes:

- quality drop vs the FP32 reference within `registry.max_drop_vs_fp32`
  (accuracy points when the evaluation data has labels, else 1 - cosine; a decoder:
  ln(perplexity / FP32's perplexity), the drop of its mean token log-likelihood, about
  the relative perplexity increase);
- quality drop vs the current production within `max_drop_vs_production`;
- p50 latency not slower than production by more than
  `max_latency_regression_pct` (geometric mean over the batch sizes both
  measured). Each engine's p50 is taken relative to the baseline measured side
  by side in the same validation, so a busy host slowing both does not read as
  a regression. Latency is a property of the host: on another host the check
  is skipped and the decision says so.

- a quantized engine not slower than the same run's FP32 engine (same backend and
  device) beyond the noise, unless `registry.allow_slower_than_fp32`;
- an engine this host could not run (`engine_ran`: quality measured on a stand-in,
  no latency) never moves `production` by itself: only `trtflow promote --force`.

A latency comparison carries its noise: the two measurements' intervals combined.
An interval as wide as the measurement itself (±100% or more) means the two are
not comparable: the check says so and neither passes nor fails.

Every decision is written to the version's tags (`trtflow.promotion`,
`trtflow.promotion.reason`), so `trtflow history` shows why an engine is or is
not in production. Identical engines are one version: a registration whose build key
or engine file digest (sha256 of the engine's bytes: calibration methods that give
the same engine) is known returns the existing version. A file lock under
`.trtflow/locks/` makes that check-then-create safe for concurrent compiles on
one machine.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trtflow.errors import RegistryError
from trtflow.latency import combined_noise_pct
from trtflow.params import RegistryConfig
from trtflow.project import project_lock

if TYPE_CHECKING:
    from trtflow.stages.validation_report import ValidationReport

CANDIDATE = "candidate"
PRODUCTION = "production"
TAG = "trtflow."
FP32_TAG = f"{TAG}fp32_engine"  # the same run's FP32 engine facts, as JSON


def registered_name(model: str, target: str) -> str:
    return f"{model}-{target}"


@dataclass(frozen=True)
class EngineFacts:
    """What the gate compares, read from a validate report (and stored as version tags)."""

    quality: float  # top-1 accuracy with labels, else cosine agreement with FP32 (a
    # decoder: its mean token log-likelihood, -ln perplexity)
    quality_metric: str  # "accuracy" | "cosine"
    drop_vs_fp32: float
    p50_ms: dict[str, float]  # batch size -> p50 latency
    host: str
    relative_p50: dict[str, float] = field(default_factory=dict)  # engine / same-run baseline
    noise_pct: dict[str, float] = field(default_factory=dict)  # of p50 (or of relative p50)
    precision: str = ""  # the precision that built the engine ("" when unknown)
    engine_ran: str | None = None  # quality came from this stand-in; latency not measured

    @classmethod
    def from_report(cls, report: ValidationReport, host: str, precision: str = ""
                    ) -> EngineFacts:
        q = report.quality
        drop = q.accuracy_drop
        if report.decoder is not None:  # mean token log-likelihood: drops are ln(ppl ratio)
            d = report.decoder
            quality, metric = -math.log(d.perplexity), "log_likelihood"
            drop = math.log(d.perplexity / d.reference_perplexity)
        elif q.labelled and q.accuracy is not None and drop is not None:
            quality, metric = q.accuracy, "accuracy"
        else:
            quality, metric, drop = q.agreement, "cosine", 1.0 - q.agreement
        p50 = {str(r.batch_size): r.p50_ms for r in report.latency.engine}
        base = {str(r.batch_size): r.p50_ms for r in report.latency.baseline}
        relative = {b: p50[b] / base[b] for b in p50 if base.get(b)}
        base_noise = {str(r.batch_size): r.noise_pct for r in report.latency.baseline}
        noise = {str(r.batch_size): combined_noise_pct(
            r.noise_pct, base_noise.get(str(r.batch_size), 0.0) if relative else 0.0)
            for r in report.latency.engine}
        return cls(quality, metric, drop, p50, host, relative, noise, precision,
                   report.engine_ran)

    def tags(self) -> dict[str, str]:
        return {f"{TAG}quality": repr(self.quality), f"{TAG}quality_metric": self.quality_metric,
                f"{TAG}drop_vs_fp32": repr(self.drop_vs_fp32),
                f"{TAG}p50_ms": json.dumps(self.p50_ms, sort_keys=True), f"{TAG}host": self.host,
                f"{TAG}relative_p50": json.dumps(self.relative_p50, sort_keys=True),
                f"{TAG}p50_noise_pct": json.dumps(self.noise_pct, sort_keys=True),
                f"{TAG}precision": self.precision,
                **({f"{TAG}engine_ran": self.engine_ran} if self.engine_ran else {})}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> EngineFacts:
        try:
            return cls(float(tags[f"{TAG}quality"]), tags[f"{TAG}quality_metric"],
                       float(tags[f"{TAG}drop_vs_fp32"]), json.loads(tags[f"{TAG}p50_ms"]),
                       tags[f"{TAG}host"], json.loads(tags.get(f"{TAG}relative_p50", "{}")),
                       json.loads(tags.get(f"{TAG}p50_noise_pct", "{}")),
                       tags.get(f"{TAG}precision", ""), tags.get(f"{TAG}engine_ran"))
        except (KeyError, ValueError) as exc:
            raise RegistryError(f"model version tags lack trtflow's gate facts ({exc}); was "
                                "it registered by trtflow?") from None


@dataclass
class Decision:
    promote: bool
    checks: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, passed: bool | None, detail: str) -> None:
        """passed None: not applicable (skipped), with the reason in `detail`."""
        self.checks.append({"check": name, "passed": passed, "detail": detail})
        if passed is False:
            self.promote = False

    @property
    def reason(self) -> str:
        failed = [c["detail"] for c in self.checks if c["passed"] is False]
        if failed:
            return "; ".join(failed)
        return "; ".join(c["detail"] for c in self.checks)


def latency_noise_pct(candidate: EngineFacts, production: EngineFacts,
                      batch_sizes: list[str]) -> float:
    """The noise of the candidate/production latency ratio: both engines' p50 intervals
    combined, root-mean-square over the batch sizes compared (0 when unknown)."""
    per_size = [combined_noise_pct(candidate.noise_pct.get(b, 0.0),
                                   production.noise_pct.get(b, 0.0)) for b in batch_sizes]
    return math.sqrt(sum(x * x for x in per_size) / len(per_size)) if per_size else 0.0


NOT_COMPARABLE_PCT = 100.0  # an interval this wide spans the measurement itself


@dataclass(frozen=True)
class LatencyComparison:
    """Candidate vs another engine: the geometric-mean p50 change and its noise."""

    pct: float  # + is slower
    noise_pct: float
    batch_sizes: list[str]
    relative: bool  # each p50 taken relative to its own run's baseline

    def said(self, who: str) -> str:
        what = "p50 latency (relative to each run's baseline)" if self.relative else "p50 latency"
        noise = (f"±{self.noise_pct:.1f}%" if self.noise_pct < NOT_COMPARABLE_PCT
                 else f"±{NOT_COMPARABLE_PCT:.0f}% or more")
        return (f"{what} {self.pct:+.1f}% ({noise}: both measurements' intervals combined) "
                f"vs {who} over batch sizes {','.join(self.batch_sizes)}")

    @property
    def comparable(self) -> bool:
        return self.noise_pct < NOT_COMPARABLE_PCT


def compare_latency(candidate: EngineFacts, other: EngineFacts) -> LatencyComparison | None:
    """None when no batch size was measured by both."""
    relative = bool(candidate.relative_p50 and other.relative_p50)
    cand, prod = ((candidate.relative_p50, other.relative_p50) if relative
                  else (candidate.p50_ms, other.p50_ms))
    common = sorted(set(cand) & set(prod), key=int)
    if not common:
        return None
    ratio = math.exp(sum(math.log(cand[b] / prod[b]) for b in common) / len(common))
    return LatencyComparison((ratio - 1.0) * 100.0, latency_noise_pct(candidate, other, common),
                             common, relative)


def _check_latency(d: Decision, candidate: EngineFacts, production: EngineFacts, who: str,
                   allowed_pct: float) -> None:
    if production.host != candidate.host:
        d.check("latency", None, f"latency not compared: {who} was measured on another host")
        return
    cmp = compare_latency(candidate, production)
    if cmp is None:
        d.check("latency", None, f"latency not compared: no batch size in common with {who}")
        return
    said = f"{cmp.said(who)} (allowed +{allowed_pct:.1f}%)"
    if not cmp.comparable:
        d.check("latency", None, f"{said}: not comparable, the interval is wider than the "
                "measurement (re-run with --remeasure on a quieter host)")
    elif cmp.pct > allowed_pct and cmp.pct - cmp.noise_pct <= allowed_pct:
        d.check("latency", None, f"{said}: too noisy to compare")
    else:
        d.check("latency", cmp.pct <= allowed_pct, said)


def _check_vs_fp32(d: Decision, candidate: EngineFacts, fp32: EngineFacts | None,
                   policy: RegistryConfig) -> None:
    """A quantized engine must not be slower than the FP32 engine of the same run."""
    if candidate.precision in ("", "fp32") or candidate.engine_ran:
        return
    if fp32 is None:
        d.check("faster_than_fp32", None, "speed vs FP32 not compared: no FP32 engine of the "
                "same backend in this run")
        return
    cmp = compare_latency(candidate, fp32)
    if cmp is None or not cmp.comparable:
        d.check("faster_than_fp32", None, "speed vs FP32 not compared: " + (
            "no batch size in common" if cmp is None else f"{cmp.said('the FP32 engine')}, "
            "not comparable (interval wider than the measurement)"))
        return
    said = cmp.said("this run's FP32 engine")
    if cmp.pct - cmp.noise_pct <= 0.0:
        d.check("faster_than_fp32", True, said)
    elif policy.allow_slower_than_fp32:
        d.check("faster_than_fp32", None, f"{said}: slower, allowed by "
                "registry.allow_slower_than_fp32")
    else:
        d.check("faster_than_fp32", False, f"{candidate.precision} engine slower than FP32: "
                f"{said} (set registry.allow_slower_than_fp32: true to promote it anyway)")


def decide(candidate: EngineFacts, production: EngineFacts | None, policy: RegistryConfig,
           production_version: str | None = None, fp32: EngineFacts | None = None
           ) -> Decision:
    """The promotion gate on given numbers (pure: tested without MLflow). `fp32`: the FP32
    engine of the same run, for a quantized candidate."""
    d = Decision(promote=True)
    d.check("drop_vs_fp32", candidate.drop_vs_fp32 <= policy.max_drop_vs_fp32,
            f"{candidate.quality_metric} drop vs FP32 {candidate.drop_vs_fp32:.4f} "
            f"(allowed {policy.max_drop_vs_fp32:.4f})")
    if candidate.engine_ran:
        d.check("engine_ran", False, f"quality measured on a stand-in ({candidate.engine_ran}), "
                "latency not measured: production moves only with --force")
    _check_vs_fp32(d, candidate, fp32, policy)
    if production is None:
        d.check("vs_production", None, "no production version yet")
        return d
    who = f"production v{production_version}" if production_version else "production"
    if production.quality_metric != candidate.quality_metric:
        d.check("drop_vs_production", None, f"{who} measured {production.quality_metric}, "
                f"this engine {candidate.quality_metric}: not comparable")
    else:
        drop = production.quality - candidate.quality
        d.check("drop_vs_production", drop <= policy.max_drop_vs_production,
                f"{candidate.quality_metric} drop vs {who} {drop:.4f} "
                f"(allowed {policy.max_drop_vs_production:.4f})")
    _check_latency(d, candidate, production, who, policy.max_latency_regression_pct)
    return d


def _client() -> Any:
    import mlflow

    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    return mlflow.MlflowClient()


def version_of_engine(name: str, engine_key: str) -> Any | None:
    """The registered version of `name` holding the engine with this build key, if any."""
    return next((v for v in _versions(_client(), name)
                 if v.tags.get(f"{TAG}engine_key") == engine_key), None)


def _versions(client: Any, name: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    try:
        return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    except MlflowException:
        return []


def _alias_version(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    created: bool  # False: an identical engine (same build key) was already registered
    decision: dict[str, Any] | None  # the promotion gate's outcome, when it ran


def register(root: Path, name: str, model_uri: str, run_id: str, engine_key: str,
             facts: EngineFacts, tags: dict[str, str], policy: RegistryConfig,
             engine_digest: str | None = None, fp32: EngineFacts | None = None
             ) -> Registration:
    """Register `model_uri` as a version of `name` (once per build key and per engine file
    digest); move `candidate` to it; with `policy.promote == "auto"` run the promotion gate.
    `fp32`: the same run's FP32 engine, kept on the version for the gate."""
    client = _client()
    with project_lock(root, f"registry-{name}"):
        existing = [v for v in _versions(client, name)
                    if v.tags.get(f"{TAG}engine_key") == engine_key
                    or (engine_digest and v.tags.get(f"{TAG}engine_sha256") == engine_digest)]
        if existing:
            return Registration(name, str(existing[0].version), False, None)
        from mlflow.exceptions import MlflowException

        try:
            client.create_registered_model(name, tags={f"{TAG}kind": "engine"})
        except MlflowException:
            pass  # exists already
        all_tags = {**tags, **facts.tags(), f"{TAG}engine_key": engine_key,
                    f"{TAG}promotion": "pending"}
        if engine_digest:
            all_tags[f"{TAG}engine_sha256"] = engine_digest
        if fp32 is not None:
            all_tags[FP32_TAG] = json.dumps(fp32.tags(), sort_keys=True)
        # a logged model (`models:/m-<id>`) is named by its id too: a tracking server
        # refuses the source without it (a sqlite store does not check)
        logged = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") \
            else None
        version = client.create_model_version(name, source=model_uri, run_id=run_id,
                                              tags=all_tags, model_id=logged).version
        client.set_registered_model_alias(name, CANDIDATE, version)
    decision = promote(name, version, policy) if policy.promote == "auto" else None
    return Registration(name, str(version), True, decision)


def promote(name: str, version: str, policy: RegistryConfig, force: bool = False
            ) -> dict[str, Any]:
    """Run the gate for `name` version `version`; move `production` only if it passes
    (or `force`, recorded as such). The decision is tagged on the version either way."""
    client = _client()
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"registered model '{name}' has no version {version} (see "
                            f"`trtflow history`)") from None
    facts = EngineFacts.from_tags(mv.tags)
    current = _alias_version(client, name, PRODUCTION)
    if current is not None and str(current.version) == str(version):
        return {"promoted": True, "reason": f"v{version} is already production", "checks": []}
    prod_facts = EngineFacts.from_tags(current.tags) if current is not None else None
    fp32 = (EngineFacts.from_tags(json.loads(mv.tags[FP32_TAG])) if FP32_TAG in mv.tags
            else None)
    decision = decide(facts, prod_facts, policy, current.version if current else None, fp32)
    promoted = decision.promote or force
    reason = decision.reason + ("; forced by the user despite the gate"
                                if force and not decision.promote else "")
    if promoted:
        client.set_registered_model_alias(name, PRODUCTION, str(version))
    client.set_model_version_tag(name, str(version), f"{TAG}promotion",
                                 "promoted" if promoted else "refused")
    client.set_model_version_tag(name, str(version), f"{TAG}promotion.reason", reason[:4900])
    client.set_model_version_tag(name, str(version), f"{TAG}promotion.checks",
                                 json.dumps(decision.checks)[:4900])
    return {"promoted": promoted, "reason": reason, "checks": decision.checks,
            "previous_production": current.version if current else None}


def candidate_version(name: str) -> str:
    mv = _alias_version(_client(), name, CANDIDATE)
    if mv is None:
        raise RegistryError(f"registered model '{name}' has no '{CANDIDATE}' version (see "
                            "`trtflow history`)")
    return str(mv.version)


def status(promotion: str | None, aliases: list[str], superseded_by: str | None) -> str:
    """What a version is now: a version the gate once promoted that `production` has since
    left is 'superseded by vN', not 'promoted'."""
    if promotion == "promoted" and PRODUCTION not in aliases and superseded_by:
        return f"superseded by v{superseded_by}"
    return promotion or ""


@dataclass(frozen=True)
class VersionRow:
    """One registered engine as `trtflow history` shows it (from its version's tags)."""

    name: str
    version: str
    aliases: list[str]
    status: str
    created: int  # ms since the epoch
    run_id: str
    quality: str | None
    quality_metric: str | None
    p50_ms: str | None  # JSON: batch size -> p50
    promotion: str | None
    reason: str
    published: str
    git_commit: str
    data: str

    def p50_by_batch_size(self) -> dict[str, float]:
        """Batch size -> p50, in numeric order (the tag's JSON sorts keys as text)."""
        p50 = json.loads(self.p50_ms or "{}")
        return {b: p50[b] for b in sorted(p50, key=lambda b: (len(b), b))}


def history(model: str) -> list[VersionRow]:
    """Every registered version of every target of `model`, oldest first."""
    client = _client()
    rows = []
    for rm in client.search_registered_models(f"name LIKE '{model}-%'"):
        aliases: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        production = str((rm.aliases or {}).get(PRODUCTION, "")) or None
        for mv in _versions(client, rm.name):
            t = mv.tags
            version_aliases = sorted(aliases.get(str(mv.version), []))
            rows.append(VersionRow(
                name=rm.name, version=str(mv.version), aliases=version_aliases,
                status=status(t.get(f"{TAG}promotion"), version_aliases, production),
                created=mv.creation_timestamp, run_id=mv.run_id,
                quality=t.get(f"{TAG}quality"), quality_metric=t.get(f"{TAG}quality_metric"),
                p50_ms=t.get(f"{TAG}p50_ms"), promotion=t.get(f"{TAG}promotion"),
                reason=t.get(f"{TAG}promotion.reason", ""),
                published=t.get(f"{TAG}published_uri", ""),
                git_commit=t.get(f"{TAG}git_commit", ""),
                data=t.get(f"{TAG}data.calibration.dvc_md5", "")))
    if not rows:
        raise RegistryError(f"no registered engines for model '{model}' (registered models "
                            f"are named '{model}-<target>'; run `trtflow run` first)")
    return sorted(rows, key=lambda r: (r.name, int(r.version)))
