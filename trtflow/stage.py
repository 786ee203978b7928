"""What a stage *is*, independent of which stages exist: a declaration, a key, a run.

A `Step` declares its upstream stages, the params sections it reads and the
libraries whose versions shape its output; its cache key is *derived* from that
declaration (plus the facts it names, such as a data digest or the host's CPU
flags), never written by hand. `run_step` returns the stored artifact when the
key exists, else produces it atomically. The stage plan itself (which steps, in
which order, for which targets) is `trtflow.plan`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from trtflow.store import make_key

if TYPE_CHECKING:
    from trtflow.context import Context
    from trtflow.params import Target


class StageResult(BaseModel):
    """What a stage hands to the next one (and what Prefect caches): JSON only."""

    stage: str
    version: str
    key: str
    path: str
    digest: str
    report: dict[str, Any]
    seconds: float
    cached: bool = False
    prefect_state: str | None = Field(default=None, description="Prefect's state name, "
                                      "when run by the flow (Completed / Cached)")
    run_seconds: float = Field(default=0.0, description="time this run spent on the stage, "
                               "cache lookup included")

    def file(self, name: str) -> Path:
        return Path(self.path) / name


@dataclass(frozen=True)
class Upstream:
    """One input of a step: another stage's artifact, needed always or only for some
    targets (`when`: e.g. the calibration only for quantized targets)."""

    stage: str
    when: Callable[[Target], bool] | None = None

    def needed(self, target: Target | None) -> bool:
        return self.when is None or (target is not None and self.when(target))


Produce = Callable[..., dict[str, Any]]  # (ctx, target, out_dir, *inputs) -> report
Facts = Callable[["Context", "str | None"], dict[str, Any]]


def no_facts(ctx: Context, target: str | None) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Step:
    """The declaration of one stage. Everything its key covers is named here."""

    name: str
    version: str
    produce: Produce
    inputs: tuple[Upstream, ...] = ()
    reads: tuple[str, ...] = field(default=(), metadata={
        "doc": "params sections hashed into the key; '{target}' stands for the target name"})
    libraries: tuple[str, ...] = field(default=(), metadata={
        "doc": "distributions whose installed versions shape the output"})
    facts: Facts = no_facts  # key parts that are not params: file digests, host, backend
    per_target: bool = False
    # False for a stored report that must be redone rather than reused (a selection that
    # decided nothing: it is a measurement under load, not a result)
    reusable: Callable[[dict[str, Any]], bool] | None = None

    def sections(self, target: str | None) -> tuple[str, ...]:
        return tuple(s.format(target=target) for s in self.reads)


@functools.cache
def library_version(distribution: str) -> str:
    """The installed version of a distribution, read from its metadata (nothing imported)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def step_key(step: Step, ctx: Context, target: str | None, inputs: list[StageResult]) -> str:
    """The content address of `step` run on `inputs`: derived from the declaration."""
    return make_key(step.name, step.version, inputs=[i.digest for i in inputs],
                    libraries={lib: library_version(lib) for lib in step.libraries},
                    params=ctx.params.section_digest(*step.sections(target)),
                    **step.facts(ctx, target))


def cached_result(step: Step, ctx: Context, key: str) -> StageResult | None:
    """The stored result for `key`, or None: missing, damaged (the store sets it aside) or
    not reusable by the step's own rule (set aside here, so the re-run can store anew)."""
    art = ctx.store.get(step.name, key)
    if art is None:
        return None
    stored = art.meta()
    if step.reusable is not None and not step.reusable(stored["report"]):
        ctx.store.discard(step.name, key)
        return None
    return StageResult(stage=step.name, version=step.version, key=key, path=str(art.path),
                       digest=art.digest, report=stored["report"], seconds=stored["seconds"],
                       cached=True)


def run_step(step: Step, ctx: Context, target: str | None, inputs: list[StageResult]
             ) -> StageResult:
    key = step_key(step, ctx, target, inputs)
    found = cached_result(step, ctx, key)
    if found is not None:
        return found
    start = time.perf_counter()
    meta: dict[str, Any] = {"version": step.version}
    with ctx.store.writer(step.name, key, meta) as tmp:  # meta is written when complete
        report = step.produce(ctx, target, tmp, *inputs)
        meta.update(report=report, seconds=time.perf_counter() - start)
    art = ctx.store.get(step.name, key)
    assert art is not None
    return StageResult(stage=step.name, version=step.version, key=key, path=str(art.path),
                       digest=art.digest, report=report, seconds=meta["seconds"])
