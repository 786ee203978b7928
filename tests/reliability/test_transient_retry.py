"""An unattended compile survives a transient outage: the S3 endpoint it publishes to is
down on the first attempt and back (a real moto server started on that port) before
the second. The compile the deployments run (`compile_locked`, Prefect's ephemeral
API) must retry after its backoff, reuse every cached stage, publish and register.
A bad input, by contrast, is never retried (tests/integration/test_operations.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import boto3
import pytest
from prefect import flow

from flows.new_version import compile_locked

from ..integration.conftest import write_params
from ..integration.s3_server import MotoServer, isolate_aws_env

BUCKET = "engines"


class _RestartOnRetry(logging.Handler):
    """When the compile logs that it will try again, bring S3 back (server + bucket)."""

    def __init__(self, moto: MotoServer) -> None:
        super().__init__(logging.WARNING)
        self.moto = moto
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "transient, compiling again" not in message:
            return
        self.warnings.append(message)
        if len(self.warnings) == 1:
            self.moto.start()
            boto3.client("s3", endpoint_url=self.moto.endpoint).create_bucket(Bucket=BUCKET)


@flow(name="retry-under-test")
def _unattended_compile(params_file: str, root: str) -> object:
    return compile_locked("retrydigits", Path(params_file), Path(root), ["fp32"],
                          "transient-retry test")


def test_compile_retries_an_unreachable_s3_then_publishes(
        tmp_path: Path, demo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_aws_env(monkeypatch, tmp_path)
    monkeypatch.setenv("TRTFLOW_COMPILE_RETRY_DELAYS", "2,2")
    moto = MotoServer(tmp_path / "moto.log")  # its port is chosen; nothing listens yet
    root = tmp_path / "project"
    shutil.copytree(demo_root / "data" / "digits", root / "data" / "digits")
    params = write_params(root, model={"name": "retrydigits"},
                          targets={"fp32": {"precision": "fp32"}},
                          publish={"bucket": BUCKET, "endpoint_url": moto.endpoint})
    handler = _RestartOnRetry(moto)
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    try:
        result = _unattended_compile(str(params), str(root))
    finally:
        logger.removeHandler(handler)
        moto.stop()

    assert len(handler.warnings) == 1, handler.warnings  # one failed attempt, then success
    assert "S3UnreachableError" in handler.warnings[0]
    assert f"S3 endpoint {moto.endpoint} is unreachable" in handler.warnings[0]
    assert isinstance(result, dict), result
    fp32 = result["released"]["fp32"]
    assert fp32["published"].startswith(f"s3://{BUCKET}/")
    assert fp32["registered"] == "retrydigits-fp32" and fp32["created"]
