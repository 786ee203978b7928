"""Where a project keeps its state, the environment defaults that follow, and its locks.

Everything trtflow writes by default lives under `<root>/.trtflow/` (git-ignored):
the artifact store, Prefect's home and results, and the embedded MLflow sqlite
database with its artifacts. Variables the user already set win.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trtflow.names import inside


def state_dir(root: Path) -> Path:
    return root / ".trtflow"


def configure_environment(root: Path) -> None:
    """Set defaults before Prefect/MLflow are imported (they read settings at import)."""
    state = state_dir(root).resolve()
    defaults = {
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_LOCAL_STORAGE_PATH": str(state / "prefect" / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # 20 s is tight on 2 cores
        "PREFECT_LOGGING_LEVEL": "CRITICAL",  # the CLI reports stages and errors itself
        "PREFECT_LOGGING_TO_API_ENABLED": "true",
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "TRTFLOW_MLFLOW_ARTIFACTS": str(state / "mlartifacts"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DVC_SITE_CACHE_DIR": str(state / "dvc-site"),
        "GIT_PYTHON_REFRESH": "quiet",
        "MLFLOW_LOGGING_LEVEL": "WARNING",  # the CLI prints what was logged itself
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        # a tracking server that dies mid-run: ~7 s of retries per request, not MLflow's ~4 min
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    state.mkdir(parents=True, exist_ok=True)


@contextmanager
def project_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive file lock under `.trtflow/locks/` (one machine): check-then-act steps
    such as registering a version or creating a schema run one process at a time."""
    locks = state_dir(root) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(inside(locks, f"{name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
