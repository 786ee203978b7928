"""One Prefect task per stage; the cache key is the artifact store's key.

Prefect keeps a result record per key (JSON, never pickle). If the store lost the
artifact (pruned, another machine), the stale record is dropped before Prefect
looks at it, so a record never points at a missing artifact.

Retries: a stage that fails with an OS-level error (a connection refused by the
MLflow server a `models:/` source downloads from, a timeout, a busy file) is
retried twice with exponential backoff; trtflow's own errors (bad params, data or
model, a failed parity check) are the same on every try and fail at once.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.tasks import exponential_backoff

from trtflow.context import Context
from trtflow.errors import TrtflowError
from trtflow.plan import STEPS
from trtflow.stage import StageResult, run_step, step_key


class StoreKey(CachePolicy):
    """Cache key = trtflow's content-addressed key for this stage and these inputs."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        ctx: Context = inputs["ctx"]
        step = STEPS[inputs["stage"]]
        key = step_key(step, ctx, inputs.get("target"), inputs["upstream"])
        if ctx.store.get(step.name, key) is None:
            results = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
            for stale in results.glob(f"{step.name}-{key}*"):
                stale.unlink(missing_ok=True)
        return f"{step.name}-{key}"


# OS errors that another try cannot fix: a missing or forbidden file, a full disk.
_PERMANENT_OS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                 FileExistsError)
_PERMANENT_ERRNO = {errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: OS-level errors that may pass (connections, timeouts, busy files)."""
    try:
        state.result()
    except TrtflowError:
        return False
    except _PERMANENT_OS:
        return False
    except OSError as exc:  # ConnectionError, TimeoutError, socket and HTTP client errors
        return exc.errno not in _PERMANENT_ERRNO
    except Exception:
        return False
    return False


@task(cache_policy=StoreKey(), persist_result=True, result_serializer="json",
      task_run_name="{stage} {target}", retries=2,
      retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=transient_failure)
def stage_task(ctx: Context, stage: str, target: str | None,
               upstream: list[StageResult]) -> StageResult:
    return run_step(STEPS[stage], ctx, target, upstream)
