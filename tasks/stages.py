"""One Prefect task per stage; the cache key is the artifact store's key.

Prefect keeps a result record per key (JSON, never pickle). If the store lost the
artifact (pruned, another machine), the stale record is dropped before Prefect
looks at it, so a record never points at a missing artifact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy

from trtflow.pipeline import (
    CLEANUP,
    EXPORT,
    Context,
    StageResult,
    Step,
    build_step,
    run_step,
    step_key,
    validate_step,
)


def make_step(stage: str, target: str | None) -> Step:
    if stage == "export":
        return EXPORT
    if stage == "cleanup":
        return CLEANUP
    if stage == "build":
        return build_step(target or "")
    if stage == "validate":
        return validate_step(target or "")
    if stage == "calibrate":
        from trtflow.pipeline import CALIBRATE

        return CALIBRATE
    raise ValueError(f"unknown stage {stage}")


class StoreKey(CachePolicy):
    """Cache key = trtflow's content-addressed key for this stage and these inputs."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        ctx: Context = inputs["ctx"]
        step = make_step(inputs["stage"], inputs.get("target"))
        key = step_key(step, ctx, *inputs["upstream"])
        if ctx.store.get(step.name, key) is None:
            results = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
            for stale in results.glob(f"{step.name}-{key}*"):
                stale.unlink(missing_ok=True)
        return f"{step.name}-{key}"


@task(cache_policy=StoreKey(), persist_result=True, result_serializer="json",
      task_run_name="{stage} {target}")
def stage_task(ctx: Context, stage: str, target: str | None,
               upstream: list[StageResult]) -> StageResult:
    return run_step(make_step(stage, target), ctx, *upstream)
