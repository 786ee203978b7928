"""Publishing engines to S3 and fetching them back, against a real moto server process.

The library builds its client from the standard AWS environment
(`AWS_ENDPOINT_URL_S3` points at the server), so these tests exercise the same
boto3 path that talks to AWS.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from trtflow.errors import StoreError
from trtflow.store import file_digest
from trtflow.track.publish import fetch, publish, s3_client

from .s3_server import free_port

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
META = {"params": {"precision": "int8", "opset": 17}, "lineage": {"git": "abc123-dirty"}}


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    return s3_client()


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"engines-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    root = tmp_path / "engine"
    (root / "reports").mkdir(parents=True)
    (root / "model.onnx").write_bytes(os.urandom(300_000))
    (root / "session.json").write_text(json.dumps({"threads": 4}))
    (root / "reports" / "layers.json").write_text(json.dumps({"Conv": 3}))
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def remote_bytes(s3: Any, bucket: str, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_publish_then_fetch_round_trips_every_file_and_manifest(
        bucket: str, engine_dir: Path, tmp_path: Path, s3: Any) -> None:
    result = publish(engine_dir, bucket, "team/engines", "digits", "1", META)

    assert result.uri == f"s3://{bucket}/team/engines/digits/1/"
    assert sorted(result.uploaded) == ["model.onnx", "reports/layers.json", "session.json"]
    assert not result.already_published
    manifest = json.loads(remote_bytes(s3, bucket, "team/engines/digits/1/manifest.json"))
    assert manifest["trtflow_manifest"] == 1
    assert (manifest["model"], manifest["version"], manifest["metadata"]) == ("digits", "1", META)
    assert manifest["files"]["session.json"] == {
        "sha256": file_digest(engine_dir / "session.json"),
        "bytes": (engine_dir / "session.json").stat().st_size}

    fetched = fetch(bucket, "team/engines", "digits", "1", tmp_path / "out")

    files = tree(fetched.dest)
    assert json.loads(files.pop("manifest.json")) == manifest
    assert files == tree(engine_dir)
    assert fetched.manifest == manifest


def test_large_file_goes_up_in_parts_and_comes_back_verified(
        bucket: str, engine_dir: Path, tmp_path: Path, s3: Any) -> None:
    (engine_dir / "model.engine").write_bytes(os.urandom(11 * MiB))

    publish(engine_dir, bucket, "", "resnet18", "2", META, multipart_threshold=5 * MiB)

    head = s3.head_object(Bucket=bucket, Key="resnet18/2/model.engine")
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB-sized parts
    again = publish(engine_dir, bucket, "", "resnet18", "2", META, multipart_threshold=5 * MiB)
    assert again.already_published  # verified by downloading: a composite checksum
    fetched = fetch(bucket, "", "resnet18", "2", tmp_path / "out")
    assert tree(fetched.dest)["model.engine"] == (engine_dir / "model.engine").read_bytes()


def test_republishing_identical_version_is_a_verified_noop(
        bucket: str, engine_dir: Path, s3: Any) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    publish(engine_dir, bucket, "p", "digits", "1", META)

    again = publish(engine_dir, bucket, "p", "digits", "1", META)

    assert again.already_published and again.uploaded == []
    versions = s3.list_object_versions(Bucket=bucket, Prefix="p/digits/1/")["Versions"]
    assert len(versions) == 4  # three files and the manifest, each written once


def test_republishing_a_changed_file_is_refused_and_remote_unchanged(
        bucket: str, engine_dir: Path, s3: Any) -> None:
    publish(engine_dir, bucket, "p", "digits", "1", META)
    original = (engine_dir / "model.onnx").read_bytes()
    manifest = remote_bytes(s3, bucket, "p/digits/1/manifest.json")
    (engine_dir / "model.onnx").write_bytes(os.urandom(300_000))

    refused = r"different content \(model\.onnx\).*nothing was overwritten"
    with pytest.raises(StoreError, match=refused):
        publish(engine_dir, bucket, "p", "digits", "1", META)

    assert remote_bytes(s3, bucket, "p/digits/1/model.onnx") == original
    assert remote_bytes(s3, bucket, "p/digits/1/manifest.json") == manifest


def test_republishing_with_other_metadata_is_refused(bucket: str, engine_dir: Path) -> None:
    publish(engine_dir, bucket, "p", "digits", "1", META)

    with pytest.raises(StoreError, match=r"different content \(metadata\)"):
        publish(engine_dir, bucket, "p", "digits", "1", {**META, "lineage": {"git": "other"}})


def test_republishing_over_a_tampered_object_is_refused(
        bucket: str, engine_dir: Path, s3: Any) -> None:
    publish(engine_dir, bucket, "p", "digits", "1", META)
    s3.put_object(Bucket=bucket, Key="p/digits/1/session.json", Body=b'{"threads": 5}')

    with pytest.raises(StoreError, match="session.json fails verification"):
        publish(engine_dir, bucket, "p", "digits", "1", META)

    assert remote_bytes(s3, bucket, "p/digits/1/session.json") == b'{"threads": 5}'


def test_fetch_refuses_a_tampered_object_and_leaves_nothing(
        bucket: str, engine_dir: Path, tmp_path: Path, s3: Any) -> None:
    publish(engine_dir, bucket, "p", "digits", "1", META)
    good = json.loads(remote_bytes(s3, bucket, "p/digits/1/manifest.json"))
    s3.put_object(Bucket=bucket, Key="p/digits/1/reports/layers.json", Body=b'{"Conv": 4}')
    out = tmp_path / "fetched" / "digits-1"

    with pytest.raises(StoreError) as err:
        fetch(bucket, "p", "digits", "1", out)

    message = str(err.value)
    assert "reports/layers.json" in message
    assert good["files"]["reports/layers.json"]["sha256"] in message
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no temp directory left behind


def test_interrupted_publish_is_not_published_then_completes(
        bucket: str, engine_dir: Path, tmp_path: Path, s3: Any) -> None:
    # an earlier run uploaded one object and died before the manifest
    s3.upload_file(str(engine_dir / "model.onnx"), bucket, "p/digits/1/model.onnx")

    with pytest.raises(StoreError, match="not published"):
        fetch(bucket, "p", "digits", "1", tmp_path / "out")
    result = publish(engine_dir, bucket, "p", "digits", "1", META)

    assert result.skipped == ["model.onnx"] and not result.already_published
    assert tree(fetch(bucket, "p", "digits", "1", tmp_path / "out").dest)["model.onnx"] == (
        engine_dir / "model.onnx").read_bytes()


def test_leftover_object_with_other_bytes_is_never_overwritten(
        bucket: str, engine_dir: Path, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="p/digits/1/session.json", Body=b"{}")

    with pytest.raises(StoreError, match="session.json already exists with different content"):
        publish(engine_dir, bucket, "p", "digits", "1", META)

    assert remote_bytes(s3, bucket, "p/digits/1/session.json") == b"{}"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="p/digits/1/manifest")


def test_fetch_of_an_unpublished_version_says_not_published(bucket: str, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"digits version 9 is not published.*manifest\.json"):
        fetch(bucket, "p", "digits", "9", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_bucket_names_the_fix(engine_dir: Path, tmp_path: Path,
                                        moto_endpoint: str) -> None:
    """Not "404 HeadBucket": the bucket is named, trtflow never creates it, and how to make
    one (or the README's local S3 recipe) is said, for the check, publish and fetch alike."""
    from trtflow.track.publish import check_bucket

    missing = f"absent-{uuid.uuid4().hex[:12]}"
    expected = rf"S3 bucket '{missing}' does not exist at {moto_endpoint}.*never creates " \
               rf"buckets.*aws s3 mb s3://{missing} --endpoint-url {moto_endpoint}.*moto_server"
    with pytest.raises(StoreError, match=expected):
        check_bucket(missing)
    with pytest.raises(StoreError, match=expected):
        publish(engine_dir, missing, "p", "digits", "1", META)
    with pytest.raises(StoreError, match=expected):
        fetch(missing, "p", "digits", "1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreachable_s3_fails_with_a_clear_error_after_bounded_retries(
        engine_dir: Path, tmp_path: Path, moto_endpoint: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(StoreError, match=rf"{closed} is unreachable .*s3://engines/.*3 attempts"):
        publish(engine_dir, "engines", "p", "digits", "1", META,
                client=s3_client(endpoint_url=closed))

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", closed)  # the standard variable, no client given
    with pytest.raises(StoreError, match=rf"{closed} is unreachable"):
        fetch("engines", "p", "digits", "1", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_publishes_a_compiled_engine_and_fetches_it_back(
        bucket: str, moto_endpoint: str, digits_root: Path, tmp_path: Path) -> None:
    """`trtflow publish` / `trtflow fetch` as a user runs them, against the moto server."""
    import os
    import subprocess
    import sys
    import uuid

    from trtflow.params import load_params

    from .conftest import write_params

    model = f"pub{uuid.uuid4().hex[:6]}"  # its own registered models
    params = write_params(digits_root, model={"name": model})
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": moto_endpoint}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "trtflow.cli", *args], cwd=digits_root,
                              capture_output=True, text=True, timeout=300, env=env,
                              check=False)

    compiled = cli("run", str(params), "-t", "fp32")  # registers v1, no publish.bucket
    assert compiled.returncode == 0, compiled.stderr
    first = cli("publish", str(params), "-t", "fp32", "--bucket", bucket, "--version", "1")
    assert first.returncode == 0, first.stderr
    assert f"published: s3://{bucket}/trtflow/{model}/1/" in first.stdout
    again = cli("publish", str(params), "-t", "fp32", "--bucket", bucket, "--version", "1")
    assert again.returncode == 0 and "already published, verified" in again.stdout
    history = json.loads(cli("history", model, "--json").stdout)  # a manual publish shows
    assert [(r["version"], r["published"]) for r in history] == [
        ("1", f"s3://{bucket}/trtflow/{model}/1/")]
    got = cli("fetch", model, "1", str(tmp_path / "engine"), "--bucket", bucket)
    assert got.returncode == 0, got.stderr
    wrong = cli("fetch", model, "7", str(tmp_path / "seven"), "--bucket", bucket)
    assert wrong.returncode != 0  # not a label: the error lists the published ones
    assert f"published: 1 ({model}-fp32 v1)" in " ".join(wrong.stderr.split())
    assert (tmp_path / "engine" / "engine.onnx").is_file()
    manifest = json.loads((tmp_path / "engine" / "manifest.json").read_text())
    assert manifest["metadata"]["target"] == "fp32"
    assert set(manifest["metadata"]["stages"]) == {"export", "cleanup", "build", "validate"}
    quality = manifest["metadata"]["quality"]  # the figures travel with the engine
    assert quality["gates_passed"] and 0.9 < quality["accuracy"] <= 1.0
    assert set(quality["p50_ms"]) == {str(b) for b in load_params(params).validate_.batch_sizes}
    assert manifest["metadata"]["registered"] == f"{model}-fp32/1"
    assert manifest["metadata"]["git_commit"] == history[0]["git_commit"]  # when it was built
