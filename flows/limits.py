"""One compile per model at a time, and failures that say which stage failed and why.

Every compile the deployments start (retrain, compile-on-new-version) runs the
compile flow inside `model_slot(model)`: a Prefect global concurrency limit
`trtflow-compile-<model>` (1 slot unless TRTFLOW_COMPILE_CONCURRENCY says
otherwise). A second compile of the same model waits for the slot; compiles of
different models run side by side. Slots are leases the holder renews, so a
killed flow run frees its slot when the lease (5 min) runs out. The limit is
created on first use; a limit an operator changed in the UI is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trtflow.errors import GateError, TrtflowError

LIMIT_PREFIX = "trtflow-compile-"
LEASE_SECONDS = 300


def limit_name(model: str) -> str:
    return f"{LIMIT_PREFIX}{model}"


def ensure_limit(name: str, slots: int) -> Any:
    """The global concurrency limit `name`, created with `slots` if it does not exist."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=slots))
        except ObjectAlreadyExists:  # created by a concurrent compile
            pass
        return client.read_global_concurrency_limit_by_name(name)


@contextmanager
def model_slot(model: str) -> Iterator[None]:
    """Hold model's compile slot for the block; logs when it has to wait for one."""
    from prefect import get_run_logger
    from prefect.concurrency.sync import concurrency

    name = limit_name(model)
    limit = ensure_limit(name, int(os.environ.get("TRTFLOW_COMPILE_CONCURRENCY", "1")))
    logger = get_run_logger()
    if limit.active_slots >= limit.limit:
        logger.info("waiting for concurrency limit %s: %d of %d slots taken by other compiles "
                    "of %s", name, limit.active_slots, limit.limit, model)
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        logger.info("acquired concurrency limit %s", name)
        yield


def failed_stage(flow_run_id: Any, exc: BaseException) -> str:
    """Where a compile flow run failed: the failed stage task ('calibrate int8'), the gates,
    the setup before any stage, or the tracking after them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    failed = [r for r in runs if r.state_type in (StateType.FAILED, StateType.CRASHED)]
    if failed:
        return failed[0].name.strip()
    if isinstance(exc, GateError):
        return "validate (gates)"
    if not runs:
        return "setup (params, model source, data)"
    return "tracking (MLflow logging, publish, registry)"


def failure_message(model: str, exc: BaseException, stage: str, action: str = "compile"
                    ) -> str:
    """'digits: compile failed at stage calibrate int8: CalibrationError: ...'."""
    return f"{model}: {action} failed at stage {stage}: {type(exc).__name__}: {exc}"


def is_bad_input(exc: BaseException) -> bool:
    """trtflow's own errors (bad params, data, model; failed gates) are not retried; an
    unreachable MLflow or S3 server (`transient`) and errors trtflow did not foresee are."""
    return isinstance(exc, TrtflowError) and not exc.transient


def resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p
