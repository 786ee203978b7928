"""Where a project keeps its state, and the environment defaults that follow from it.

Everything trtflow writes by default lives under `<root>/.trtflow/` (git-ignored):
the artifact store, Prefect's home and results, and the embedded MLflow sqlite
database with its artifacts. Variables the user already set win.
"""

from __future__ import annotations

import fcntl
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


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


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an HTTP server (an MLflow tracking server) at `uri` does not answer `/health`,
    or None when it answers at all."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered, if not with 200
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


@contextmanager
def project_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive file lock under `.trtflow/locks/` (one machine): check-then-act steps
    such as registering a version or creating a schema run one process at a time."""
    locks = state_dir(root) / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def initialize_databases(root: Path) -> None:
    """Create the embedded Prefect and MLflow schemas once, under a file lock.

    Several first runs in a fresh project would otherwise each start migrating the
    same sqlite files (Prefect's ephemeral server: `NoSuchTableError`; MLflow:
    `_alembic_tmp_tags already exists`). A marker per library version makes later
    runs skip this. A Prefect server (`PREFECT_API_URL`) or a non-sqlite MLflow
    manages its own schema and is left alone.
    """
    locks = state_dir(root) / "locks"
    with project_lock(root, "init-databases"):
        if not os.environ.get("PREFECT_API_URL"):
            _once(locks, "prefect", _create_prefect_db)
        if os.environ.get("MLFLOW_TRACKING_URI", "").startswith("sqlite:"):
            _once(locks, "mlflow", _create_mlflow_db)


def _once(locks: Path, name: str, create: Callable[[], str]) -> None:
    version_file = locks / f"{name}-schema"
    wanted = f"{_version(name)} {_db_location(name)}"
    if version_file.is_file() and version_file.read_text() == wanted:
        return
    create()
    version_file.write_text(wanted)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _db_location(name: str) -> str:
    if name == "mlflow":
        return os.environ.get("MLFLOW_TRACKING_URI", "")
    return os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL", "") or os.environ.get(
        "PREFECT_HOME", "")


def _create_prefect_db() -> str:
    import asyncio

    from prefect.server.database import provide_database_interface

    asyncio.run(provide_database_interface().create_db())
    return "prefect"


def _create_mlflow_db() -> str:
    import mlflow

    mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments(max_results=1)
    return "mlflow"
