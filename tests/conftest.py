"""Test-wide environment: Prefect, MLflow and the store live in one temp dir per session.

Set before Prefect or MLflow is imported (both read their settings at import).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="trtflow-tests-"))
os.environ["TRTFLOW_TEST_DIR"] = str(_SESSION_DIR)
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect")
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "prefect" / "results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # busy 2-core CI
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_SESSION_DIR / 'mlflow.db'}"
os.environ["TRTFLOW_MLFLOW_ARTIFACTS"] = str(_SESSION_DIR / "mlartifacts")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project dir with the demo data written once per session (digits, minilm, resnet18)."""
    from trtflow.sources.builtin import write_demo_data

    root = tmp_path_factory.mktemp("demo")
    write_demo_data(root)
    return root
