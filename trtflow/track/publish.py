"""Publish engines to S3 with a sha256 manifest, and fetch them back verified.

A published version lives under `s3://BUCKET/PREFIX/MODEL/VERSION/`: every file
of the engine directory (relative paths kept) and a `manifest.json` with the
sha256 and size of each file, the model, the version and free-form metadata
(params, lineage). The manifest is written last, with a conditional put, so a
version is published exactly when its manifest exists: an interrupted publish
leaves no manifest and is never fetched, and two publishers of one version
never replace each other's manifest.

Publishing is idempotent and never destructive: a version already published
with the same manifest is verified (every object's size and sha256) and left
alone; a different manifest, or an existing object whose bytes differ from
ours, is refused and nothing is overwritten. Fetching downloads into a temp
directory next to the destination, checks every digest and renames into place
only when all match.

All S3 access goes through boto3: endpoint, credentials and region come from
the standard AWS environment and config files (`AWS_ENDPOINT_URL_S3`,
`AWS_PROFILE`, `AWS_MAX_ATTEMPTS`, ...), multipart through `TransferConfig`, and
bounded retries with backoff through botocore's "standard" retry mode.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from trtflow.errors import ParamsError, S3UnreachableError, StoreError, TrtflowError
from trtflow.names import BUCKET_RULE, RULE, bucket_problem, name_problem
from trtflow.store import file_digest

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_MULTIPART_THRESHOLD = 8 * 1024 * 1024
DEFAULT_MAX_ATTEMPTS = 3  # total attempts per request, the first included
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_UNREACHABLE = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                ConnectionClosedError)


class NotPublishedError(StoreError):
    """No manifest under the asked version label: it was never published (or not whole)."""


@dataclass(frozen=True)
class PublishResult:
    """Where a version was published and what this call uploaded."""

    uri: str  # s3://bucket/prefix/model/version/
    manifest: dict[str, Any]
    uploaded: list[str] = field(default_factory=list)  # relpaths sent by this call
    skipped: list[str] = field(default_factory=list)  # already there, same bytes
    already_published: bool = False  # the same manifest existed; verified, no-op


@dataclass(frozen=True)
class FetchResult:
    """A fetched, verified version: its local directory and manifest."""

    uri: str
    dest: Path
    manifest: dict[str, Any]


def s3_client(endpoint_url: str | None = None, *, max_attempts: int | None = None,
              connect_timeout: float = CONNECT_TIMEOUT_S,
              read_timeout: float = READ_TIMEOUT_S) -> Any:
    """A boto3 S3 client from the standard AWS environment/config, with bounded retries.

    `endpoint_url` overrides `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` (which boto3
    reads itself). Attempts per request: `max_attempts`, else `AWS_MAX_ATTEMPTS`
    or the config file's `max_attempts`, else 3; backoff is botocore's standard
    mode (jittered exponential), so an unreachable endpoint fails in seconds.
    """
    core = botocore.session.get_session()
    attempts = max_attempts or core.get_config_variable("max_attempts") or DEFAULT_MAX_ATTEMPTS
    config = Config(retries={"total_max_attempts": int(attempts), "mode": "standard"},
                    connect_timeout=connect_timeout, read_timeout=read_timeout)
    return boto3.Session(botocore_session=core).client("s3", endpoint_url=endpoint_url,
                                                       config=config)


def version_prefix(prefix: str, model: str, version: str) -> str:
    """The key prefix of one published version: `PREFIX/MODEL/VERSION/` (no leading slash)."""
    for name, value in (("model", model), ("version", version)):
        problem = name_problem(value)
        if problem is not None:
            raise ParamsError(f"publish {name} {value[:80]!r} is not a valid name ({problem}); "
                              f"it must be {RULE}")
    for part in (p for p in prefix.strip("/").split("/") if p):
        problem = name_problem(part)
        if problem is not None:
            raise ParamsError(f"publish prefix {prefix[:80]!r}: the part {part[:80]!r} is not "
                              f"a valid name ({problem}); each part must be {RULE}")
    parts = [p for p in prefix.strip("/").split("/") if p] + [model, version]
    return "/".join(parts) + "/"


def build_manifest(engine_dir: Path, model: str, version: str,
                   metadata: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a local engine directory: sha256 and size of every file."""
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise TrtflowError(f"engine directory {engine_dir} does not exist or is not a directory")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(engine_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(engine_dir).as_posix()
            if rel == MANIFEST:
                raise TrtflowError(f"{path}: '{MANIFEST}' is reserved for the publish manifest")
            files[rel] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    if not files:
        raise TrtflowError(f"engine directory {engine_dir} has no files to publish")
    try:  # round-trip so comparing with a manifest read back from S3 is exact
        metadata = json.loads(json.dumps(metadata, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TrtflowError(f"publish metadata must be plain JSON: {exc}") from None
    return {"trtflow_manifest": MANIFEST_FORMAT, "model": model, "version": version,
            "files": files, "metadata": metadata}


def check_bucket(bucket: str, endpoint_url: str | None = None) -> None:
    """Fail now, naming the endpoint, when the bucket cannot be reached or read: checked
    before anything is built for publishing, so a dead endpoint leaves no artifact."""
    s3 = _S3(s3_client(endpoint_url), bucket)
    with s3._errors("reach", ""):
        s3.client.head_bucket(Bucket=bucket)


def publish(engine_dir: Path, bucket: str, prefix: str, model: str, version: str,
            metadata: dict[str, Any], *, client: Any = None,
            multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD) -> PublishResult:
    """Upload `engine_dir` and its manifest to `s3://bucket/prefix/model/version/`.

    Objects go first, the manifest last. An identical published version is
    verified and left as is (`already_published=True`); a different one, or a
    leftover object with other bytes, raises `StoreError` and overwrites nothing.
    """
    manifest = build_manifest(engine_dir, model, version, metadata)
    s3 = _S3(client or s3_client(), bucket)
    base = version_prefix(prefix, model, version)
    uri = f"s3://{bucket}/{base}"

    remote = s3.read_manifest(base + MANIFEST)
    if remote is not None:
        _verify_same_version(s3, base, uri, manifest, remote)
        return PublishResult(uri, remote, already_published=True)

    transfer = _transfer_config(multipart_threshold)
    uploaded: list[str] = []
    skipped: list[str] = []
    for rel, entry in manifest["files"].items():
        key = base + rel
        state = s3.compare(key, entry)
        if state == "same":
            skipped.append(rel)  # left by an interrupted publish of these same bytes
            continue
        if state != "absent":
            raise StoreError(
                f"{uri}{rel} already exists with different content ({state}) but {uri} "
                f"has no {MANIFEST} (an interrupted publish?); nothing was overwritten: "
                f"delete the leftover objects under {uri} to publish again")
        s3.upload(Path(engine_dir) / rel, key, entry, transfer)
        uploaded.append(rel)

    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    if not s3.put_if_absent(base + MANIFEST, body):  # another publisher won the race
        remote = s3.read_manifest(base + MANIFEST)
        if remote is None:
            raise StoreError(f"{uri}{MANIFEST} was reported as existing but cannot be read")
        _verify_same_version(s3, base, uri, manifest, remote)
        return PublishResult(uri, remote, uploaded, skipped, already_published=True)
    return PublishResult(uri, manifest, uploaded=uploaded, skipped=skipped)


def fetch(bucket: str, prefix: str, model: str, version: str, dest: Path, *,
          client: Any = None) -> FetchResult:
    """Download a published version into `dest`, verifying every file's sha256.

    Files land in a temp directory next to `dest`, which is renamed into place
    only after every digest matches the manifest; on any mismatch `StoreError`
    names the file and both digests and nothing appears at `dest`. `dest` must
    not exist (an empty directory is replaced). The manifest is written too.
    """
    dest = Path(dest)
    s3 = _S3(client or s3_client(), bucket)
    base = version_prefix(prefix, model, version)
    uri = f"s3://{bucket}/{base}"
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise StoreError(f"fetch destination {dest} already exists; remove it or choose another")
    manifest = s3.read_manifest(base + MANIFEST)
    if manifest is None:
        raise NotPublishedError(f"{model} version {version} is not published: "
                                f"{uri}{MANIFEST} does not exist")
    files = _manifest_files(manifest, uri)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    except OSError as exc:
        raise StoreError(f"cannot write the fetch destination {dest}: {exc}") from None
    try:
        transfer = _transfer_config(DEFAULT_MULTIPART_THRESHOLD)
        for rel, entry in files.items():
            local = tmp / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            s3.download(base + rel, local, transfer)
            actual = file_digest(local)
            if actual != entry["sha256"]:
                raise StoreError(
                    f"{uri}{rel} fails verification: sha256 {actual} but the manifest "
                    f"says {entry['sha256']}; the fetch was refused and {dest} left untouched")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if dest.is_dir():
            dest.rmdir()  # the empty directory checked above
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return FetchResult(uri, dest, manifest)


def _verify_same_version(s3: _S3, base: str, uri: str, local: dict[str, Any],
                         remote: dict[str, Any]) -> None:
    """Refuse a different published manifest; check every object of an identical one."""
    files = _manifest_files(remote, uri)
    if files != local["files"] or remote.get("metadata") != local["metadata"]:
        changed = sorted(rel for rel in set(files) | set(local["files"])
                         if files.get(rel) != local["files"].get(rel))
        if remote.get("metadata") != local["metadata"]:
            changed.append("metadata")
        what = ", ".join(changed)
        raise StoreError(f"{uri} is already published with different content ({what}); "
                         f"nothing was overwritten: publish under a new version")
    for rel, entry in files.items():
        state = s3.compare(base + rel, entry)
        if state != "same":
            raise StoreError(f"{uri} is published but {rel} fails verification ({state}); "
                             f"nothing was overwritten")


def _manifest_files(manifest: dict[str, Any], uri: str) -> dict[str, dict[str, Any]]:
    """The manifest's file table, refusing an unknown format or unsafe paths."""
    files = manifest.get("files")
    if manifest.get("trtflow_manifest") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise StoreError(f"{uri}{MANIFEST} is not a trtflow manifest "
                         f"(format {MANIFEST_FORMAT} with a 'files' table)")
    for rel, entry in files.items():
        parts = PurePosixPath(rel).parts
        if (not parts or rel.startswith("/") or ".." in parts or rel == MANIFEST
                or not isinstance(entry, dict) or not {"sha256", "bytes"} <= entry.keys()):
            raise StoreError(f"{uri}{MANIFEST} has an invalid file entry {rel!r}")
    return files


def missing_bucket(bucket: str, endpoint: str) -> str:
    """What to do when the bucket is not there: trtflow never creates one."""
    flag = "" if "amazonaws.com" in endpoint else f" --endpoint-url {endpoint}"
    return (f"S3 bucket '{bucket}' does not exist at {endpoint} (404); trtflow never creates "
            f"buckets: create it first (`aws s3 mb s3://{bucket}{flag}`, or boto3's "
            f"create_bucket), or name an existing one in publish.bucket / --bucket. To try "
            f"publishing without AWS, run a local S3 as the README shows (Lineage: "
            f"`.venv/bin/moto_server -p 9000 &`, then create the bucket there)")


def _transfer_config(multipart_threshold: int) -> TransferConfig:
    # "classic" keeps s3transfer (not the optional CRT client), whose checksum
    # handling is the one described here; parts are at least 5 MiB (S3's minimum).
    return TransferConfig(multipart_threshold=multipart_threshold,
                          multipart_chunksize=max(multipart_threshold, 5 * 1024 * 1024),
                          preferred_transfer_client="classic")


def _b64_sha256(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class _S3:
    """The few S3 calls publishing needs, each turning boto errors into `StoreError`."""

    def __init__(self, client: Any, bucket: str) -> None:
        problem = bucket_problem(bucket)
        if problem is not None:  # every publish, fetch and bucket check comes through here
            raise ParamsError(f"S3 bucket {bucket[:80]!r} is not a valid bucket name "
                              f"({problem}); S3 needs {BUCKET_RULE}")
        self.client = client
        self.bucket = bucket

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        where = f"s3://{self.bucket}/{key}"
        endpoint = self.client.meta.endpoint_url
        try:
            yield
        except _UNREACHABLE as exc:
            attempts = self.client.meta.config.retries.get("total_max_attempts", "?")
            raise S3UnreachableError(f"S3 endpoint {endpoint} is unreachable ({action} "
                                     f"{where}, {attempts} attempts): {exc}") from None
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(f"no usable AWS credentials to {action} {where} "
                             f"(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE): "
                             f"{exc}") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket" or (action == "reach" and code in _NOT_FOUND):
                raise StoreError(missing_bucket(self.bucket, endpoint)) from None
            hint = ("; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                    "AWS_PROFILE) and that they may use this bucket"
                    if code in ("403", "AccessDenied", "InvalidAccessKeyId",
                                "SignatureDoesNotMatch") else "")
            raise StoreError(f"S3 refused to {action} {where} at {endpoint}: {exc}{hint}"
                             ) from None
        except (S3UploadFailedError, BotoCoreError) as exc:
            if "NoSuchBucket" in str(exc):
                raise StoreError(missing_bucket(self.bucket, endpoint)) from None
            raise StoreError(f"S3 refused to {action} {where} at {endpoint}: {exc}") from None

    def read_manifest(self, key: str) -> dict[str, Any] | None:
        """The parsed manifest at `key`, or None when there is none."""
        with self._errors("read", key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                    return None
                raise
        try:
            manifest = json.loads(body)
        except ValueError as exc:
            raise StoreError(f"s3://{self.bucket}/{key} is not valid JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"s3://{self.bucket}/{key} is not a JSON object")
        return manifest

    def compare(self, key: str, entry: dict[str, Any]) -> str:
        """"absent", "same", or why the object at `key` differs from `entry`.

        A full-object SHA256 checksum stored by S3 is compared directly; a
        multipart object's checksum is a checksum of part checksums, so that
        object (or one stored without SHA256) is downloaded and hashed.
        """
        with self._errors("check", key):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key,
                                               ChecksumMode="ENABLED")
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _NOT_FOUND:
                    return "absent"
                raise
            if head["ContentLength"] != entry["bytes"]:
                return f"{head['ContentLength']} bytes, expected {entry['bytes']}"
            stored = head.get("ChecksumSHA256")
            multipart = "-" in head.get("ETag", "") or head.get("ChecksumType") == "COMPOSITE"
            if stored and not multipart:
                actual = base64.b64decode(stored).hex()
            else:
                digest = hashlib.sha256()
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                for block in body.iter_chunks(1 << 20):
                    digest.update(block)
                actual = digest.hexdigest()
        return "same" if actual == entry["sha256"] else (
            f"sha256 {actual}, expected {entry['sha256']}")

    def upload(self, path: Path, key: str, entry: dict[str, Any],
               transfer: TransferConfig) -> None:
        """Upload one file, SHA256-checksummed; small files carry our digest so S3
        rejects bytes that differ from the manifest (multipart SHA256 is per part)."""
        extra = {"ChecksumAlgorithm": "SHA256"}
        if entry["bytes"] < transfer.multipart_threshold:
            extra["ChecksumSHA256"] = _b64_sha256(entry["sha256"])
        with self._errors("upload", key):
            self.client.upload_file(str(path), self.bucket, key, ExtraArgs=extra,
                                    Config=transfer)

    def put_if_absent(self, key: str, body: bytes) -> bool:
        """Put `body` at `key` unless an object is there; False when one was."""
        args = {"Bucket": self.bucket, "Key": key, "Body": body,
                "ContentType": "application/json", "ChecksumAlgorithm": "SHA256",
                "ChecksumSHA256": _b64_sha256(hashlib.sha256(body).hexdigest())}
        with self._errors("write", key):
            try:
                self.client.put_object(IfNoneMatch="*", **args)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    return False
                if code != "NotImplemented":
                    raise
                # an S3-compatible store without conditional writes: absence was
                # checked just before, so only a concurrent publisher can race us
                self.client.put_object(**args)
        return True

    def download(self, key: str, path: Path, transfer: TransferConfig) -> None:
        with self._errors("download", key):
            self.client.download_file(self.bucket, key, str(path), Config=transfer)
