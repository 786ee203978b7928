"""The deployments `trtflow serve` serves: a scheduled `retrain` and an event-triggered
`compile-on-new-version`.

Both are served by this process (`prefect.serve`): each flow run is a child
process started by Prefect's runner, with this process's environment (the
project's store, MLflow URI and Prefect API). Entry points are module paths
(`flows.retrain.retrain`), so runs work from any working directory.

Schedule: `retrain` runs on a cron schedule (TRTFLOW_RETRAIN_CRON, default
nightly at 03:00) or, for demos and tests, every `interval` seconds.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

DEFAULT_CRON = "0 3 * * *"
CRON_ENV = "TRTFLOW_RETRAIN_CRON"
RETRAIN = "retrain"
COMPILE_ON_NEW_VERSION = "compile-on-new-version"


def retrain_cron() -> str:
    return os.environ.get(CRON_ENV) or DEFAULT_CRON


def build_deployments(root: Path, params_path: str, model: str = "digits",
                      cron: str | None = None, interval: float | None = None,
                      epochs: int = 30) -> list[Any]:
    """The two RunnerDeployments, with `root` and the params file as default parameters."""
    from prefect.deployments.runner import EntrypointType

    from flows.events import compile_trigger
    from flows.new_version import compile_new_version
    from flows.retrain import retrain

    schedule: dict[str, Any] = ({"interval": dt.timedelta(seconds=interval)} if interval
                                else {"cron": cron or retrain_cron()})
    retrain_deployment = retrain.to_deployment(
        name=RETRAIN, entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"model": model, "params_path": params_path, "root": str(root),
                    "epochs": epochs},
        description=f"Retrain {model} on its DVC-tracked training data, register it as "
                    f"{model}-model, compile each target.",
        tags=["trtflow", model], **schedule)
    compile_deployment = compile_new_version.to_deployment(
        name=COMPILE_ON_NEW_VERSION, entrypoint_type=EntrypointType.MODULE_PATH,
        parameters={"root": str(root)}, triggers=[compile_trigger()],
        description="Compile a model version when trtflow.model.registered or "
                    "trtflow.dataset.updated is emitted (one compile per model at a time).",
        tags=["trtflow"])
    return [retrain_deployment, compile_deployment]


def serve(deployments: list[Any], limit: int | None = None) -> None:
    """Register the deployments (schedules, triggers) and run their flow runs until stopped."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments, limit=limit, print_starting_message=False)
