"""The embedded Prefect and MLflow databases, created once per project before a flow runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from trtflow.project import project_lock, state_dir


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
