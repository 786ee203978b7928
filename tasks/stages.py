"""One Prefect task per stage; the cache key is the artifact store's key.

Prefect keeps a result record per key (JSON, never pickle). If the store lost the
artifact (pruned, another machine), the stale record is dropped before Prefect
looks at it, so a record never points at a missing artifact.

Retries: a stage that fails with an OS-level error (a connection refused by the
MLflow server a `models:/` source downloads from, a timeout, a busy file) is
retried twice with exponential backoff; trtflow's own errors (bad params, data or
model, a failed parity check) are the same on every try and fail at once.

Concurrent runs: a stage runs under a file lock on its key (next to the store,
one machine), so a second `trtflow run` of the same params waits for the stage the
first is computing, says so, and then finds its result in the store instead of
computing it again (and measuring latency while the other run loads the host).
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.tasks import exponential_backoff

from trtflow.context import Context
from trtflow.errors import TrtflowError
from trtflow.names import inside
from trtflow.plan import steps_for
from trtflow.stage import StageResult, cached_result, run_step, step_key


class StoreKey(CachePolicy):
    """Cache key = trtflow's content-addressed key for this stage and these inputs."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        ctx: Context = inputs["ctx"]
        step = steps_for(ctx.params)[inputs["stage"]]
        key = step_key(step, ctx, inputs.get("target"), inputs["upstream"])
        if cached_result(step, ctx, key) is None:  # missing, damaged or not reusable
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
    step = steps_for(ctx.params)[stage]
    with computing(ctx, stage, target, step_key(step, ctx, target, upstream)):
        return run_step(step, ctx, target, upstream)


@contextmanager
def computing(ctx: Context, stage: str, target: str | None, key: str) -> Iterator[None]:
    """Hold the lock of this stage key while it runs; when another process holds it, say
    so and wait (the stage is then found in the store)."""
    locks = ctx.store.root.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(inside(locks, f"stage-{stage}-{key[:24]}.lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another run"
            where = f" [{target}]" if target else ""
            message = (f"{stage}{where}: waiting for {holder}, which is computing the same "
                       "stage; its result will be used")
            if ctx.progress:
                ctx.progress(message)
            else:
                print(message, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
