"""S3 faults against a real moto server process: the server stopped mid-upload and
restarted, a publisher killed mid-upload, and a tampered object on fetch.

A version is published exactly when its manifest exists (written last), so none of
these may ever make a partial upload fetchable.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trtflow.errors import StoreError
from trtflow.track.publish import fetch, publish, s3_client

from ..integration.s3_server import TEST_ENV, MotoServer, isolate_aws_env
from .conftest import project_env, trtflow

MiB = 1024 * 1024


@pytest.fixture
def server(tmp_path: Path) -> Iterator[MotoServer]:
    with pytest.MonkeyPatch.context() as env:
        isolate_aws_env(env, tmp_path)
        moto = MotoServer(tmp_path / "moto.log").start()
        try:
            yield moto
        finally:
            moto.stop()


def _engine(root: Path, big_mib: int = 24) -> Path:
    engine = root / "engine"
    engine.mkdir()
    (engine / "engine.onnx").write_bytes(os.urandom(big_mib * MiB))  # multipart: 5 MiB parts
    (engine / "session.json").write_text('{"threads": 2}')
    return engine


def _client(moto: MotoServer) -> Any:
    return s3_client(moto.endpoint, max_attempts=2, connect_timeout=2)


def _wait_for_upload(client: Any, bucket: str) -> None:
    """Until a multipart upload is in flight (parts on the server, nothing complete)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.list_multipart_uploads(Bucket=bucket).get("Uploads"):
            return
        time.sleep(0.05)
    raise AssertionError("no upload started")


PUBLISH_SCRIPT = """
import json, sys
from pathlib import Path
from trtflow.track.publish import publish, s3_client
client = s3_client(sys.argv[1], max_attempts=2, connect_timeout=2)
publish(Path(sys.argv[2]), "engines", "t", "m", "1", {}, client=client,
        multipart_threshold=5 * 1024 * 1024)
"""


def test_publisher_killed_mid_upload_never_looks_published(server: MotoServer,
                                                           tmp_path: Path) -> None:
    client = _client(server)
    client.create_bucket(Bucket="engines")
    engine = _engine(tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", PUBLISH_SCRIPT, server.endpoint,
                             str(engine)], env=os.environ.copy())
    _wait_for_upload(client, "engines")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="engines").get("Contents", [])]
    assert "t/m/1/manifest.json" not in keys
    with pytest.raises(StoreError, match="is not published"):
        fetch("engines", "t", "m", "1", tmp_path / "got", client=client)
    assert not (tmp_path / "got").exists()
    # publishing again completes the version; fetch verifies every file
    result = publish(engine, "engines", "t", "m", "1", {}, client=client,
                     multipart_threshold=5 * MiB)
    assert not result.already_published
    fetched = fetch("engines", "t", "m", "1", tmp_path / "got", client=client)
    assert (fetched.dest / "engine.onnx").read_bytes() == (engine / "engine.onnx").read_bytes()


def test_server_stopped_mid_upload_fails_clearly_then_publishes_after_restart(
        server: MotoServer, tmp_path: Path) -> None:
    client = _client(server)
    client.create_bucket(Bucket="engines")
    engine = _engine(tmp_path)
    errors: list[BaseException] = []

    import threading

    def run() -> None:
        try:
            publish(engine, "engines", "t", "m", "1", {}, client=client,
                    multipart_threshold=5 * MiB)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    _wait_for_upload(_client(server), "engines")
    server.stop()
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], StoreError), errors
    assert "unreachable" in str(errors[0]) or "refused" in str(errors[0])
    assert server.endpoint in str(errors[0])

    server.start()  # same port; moto keeps no state across restarts: the bucket is new
    client = _client(server)
    client.create_bucket(Bucket="engines")
    assert publish(engine, "engines", "t", "m", "1", {}, client=client,
                   multipart_threshold=5 * MiB).uploaded == ["engine.onnx", "session.json"]
    fetched = fetch("engines", "t", "m", "1", tmp_path / "got", client=client)
    assert sorted(fetched.manifest["files"]) == ["engine.onnx", "session.json"]


def test_fetch_of_a_tampered_object_is_refused(server: MotoServer, tmp_path: Path) -> None:
    client = _client(server)
    client.create_bucket(Bucket="engines")
    engine = _engine(tmp_path, big_mib=1)
    publish(engine, "engines", "t", "m", "1", {}, client=client)
    client.put_object(Bucket="engines", Key="t/m/1/session.json", Body=b'{"threads": 64}')
    env = project_env(**TEST_ENV, AWS_CONFIG_FILE=str(tmp_path / "absent"),
                      AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "absent"))
    res = trtflow("fetch", "m", "1", "got", "--bucket", "engines", "--prefix", "t",
                  "--endpoint-url", server.endpoint, cwd=tmp_path, env=env)
    assert res.returncode == 2, res.stderr
    message = " ".join(res.stderr.split())
    assert "session.json fails verification" in message and "Traceback" not in res.stderr
    assert not (tmp_path / "got").exists()
    assert [p.name for p in tmp_path.iterdir() if ".fetch-" in p.name] == []
