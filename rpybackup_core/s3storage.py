"""The S3 backend: objects in a bucket of any S3-compatible store (AWS S3, Ceph RGW, SeaweedFS).

Credentials come only from the standard AWS chain (environment, shared config and credentials
files, instance or container roles); nothing secret is ever written to our files. Transient
failures (throttling, 5xx, dropped connections, timeouts) are retried by botocore's "standard"
mode with capped exponential backoff and jitter; what is left after that is permanent and
becomes a one-line StorageError (or NotFound).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from .config import ServerConfig, split_s3_url
from .errors import NotFound, StorageError
from .storage import Backend, ObjectInfo, check_object_name

log = logging.getLogger(__name__)
# At debug level botocore logs every request and header; `--log-level debug` is for our code.
for _chatty in ("boto3", "botocore", "s3transfer", "urllib3"):
    logging.getLogger(_chatty).setLevel(logging.INFO)

# S3 wants parts of at least 5 MiB (except the last). One part (plus botocore's copy of it) is
# the most an upload holds in memory, whatever the pack size.
PART_SIZE = 8 * 1024 * 1024
ATTEMPTS = 5
_MISSING = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


class S3Backend(Backend):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        attempts: int = ATTEMPTS,
        part_size: int = PART_SIZE,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.attempts = attempts
        self.part_size = part_size
        config = Config(
            retries={"mode": "standard", "total_max_attempts": attempts},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
            # Ceph RGW and SeaweedFS serve path-style URLs without wildcard DNS; AWS prefers
            # virtual-hosted ones.
            s3={"addressing_style": "path" if endpoint else "auto"},
        )
        # A client (unlike a session) is safe to share between threads.
        self._s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)

    @classmethod
    def from_config(cls, config: ServerConfig) -> S3Backend:
        bucket, prefix = split_s3_url(config.storage_url)
        return cls(bucket, prefix, config.s3_endpoint or None)

    @property
    def location(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {self.endpoint}" if self.endpoint else where

    def _base(self, kind: str) -> str:
        root = f"{self.prefix}/" if self.prefix else ""
        return f"{root}{check_object_name(kind)}/"

    def _key(self, kind: str, name: str) -> str:
        return self._base(kind) + check_object_name(name)

    def _error(self, exc: Exception, what: str) -> StorageError | NotFound:
        """Turn what botocore raised into one line a server admin can act on."""
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no AWS credentials for {self.location} while {what}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials"
            )
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "unknown"))
            if code in _MISSING:
                return NotFound(f"{what}: the object is missing from {self.location}")
            if code == "InvalidRange":
                return StorageError(f"{what}: the object is shorter than the index says")
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist at {self.location}")
            if code in _DENIED:
                return StorageError(
                    f"{self.location} refused access while {what} ({code}): check the AWS "
                    "credentials and the bucket policy"
                )
            message = error.get("Message") or code
            return StorageError(f"S3 failed while {what}: {code}: {message}")
        return StorageError(
            f"cannot reach {self.location} while {what} (gave up after {self.attempts} "
            f"attempts): {exc}"
        )

    def _call(self, what: str, method: str, **params: Any) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = getattr(self._s3, method)(Bucket=self.bucket, **params)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, what) from exc
        retries = reply.get("ResponseMetadata", {}).get("RetryAttempts", 0)
        if retries:
            # Throttling or a flaky store shows here long before it fails a backup.
            log.warning("%s: %s succeeded after %d retries", self.location, what, retries)
        return reply

    def prepare(self) -> tuple[str, ...]:
        notes = (f"created bucket {self.bucket}",) if self._ensure_bucket() else ()
        return notes + super().prepare()

    def _ensure_bucket(self) -> bool:
        """Create the bucket if it does not exist yet; True when it was created."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) not in _MISSING | {"NoSuchBucket"}:
                raise self._error(exc, "checking the bucket") from exc
        except BotoCoreError as exc:
            raise self._error(exc, "checking the bucket") from exc
        region = self._s3.meta.region_name
        params: dict[str, Any] = {}
        if region and region not in ("us-east-1", "aws-global"):
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        self._call("creating the bucket", "create_bucket", **params)
        log.info("created bucket %s", self.bucket)
        return True

    def put(self, kind: str, name: str, data: bytes) -> None:
        self._call(f"storing {kind}/{name}", "put_object", Key=self._key(kind, name), Body=data)

    def put_file(self, kind: str, name: str, local: Path) -> None:
        key = self._key(kind, name)
        try:
            size = local.stat().st_size
            if size <= self.part_size:
                self.put(kind, name, local.read_bytes())
            else:
                self._put_multipart(key, local, f"storing {kind}/{name}")
            local.unlink()
        except OSError as exc:
            raise StorageError(f"cannot read {local} while storing {kind}/{name}: {exc}") from exc

    def _put_multipart(self, key: str, local: Path, what: str) -> None:
        """Upload part by part, holding one part in memory; abort so no orphan parts stay."""
        upload_id = self._call(what, "create_multipart_upload", Key=key)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            with local.open("rb") as handle:
                while data := handle.read(self.part_size):
                    number = len(parts) + 1
                    reply = self._call(
                        what,
                        "upload_part",
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                    )
                    parts.append({"PartNumber": number, "ETag": reply["ETag"]})
            self._call(
                what,
                "complete_multipart_upload",
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            try:
                self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (ClientError, BotoCoreError) as exc:
                log.warning("could not abort the upload of %s: %s", key, exc)
            raise

    def get_range(self, kind: str, name: str, offset: int, length: int) -> bytes:
        what = f"reading {kind}/{name}"
        if length == 0:
            if offset > self.size(kind, name):
                raise StorageError(f"{kind}/{name} is shorter than the index says")
            return b""
        key = self._key(kind, name)
        span = f"bytes={offset}-{offset + length - 1}"
        for attempt in range(1, self.attempts + 1):
            reply = self._call(what, "get_object", Key=key, Range=span)
            if reply.get("ContentLength", length) > length:
                # A store that ignores Range would hand us the whole pack.
                raise StorageError(f"{self.location} ignored the byte range while {what}")
            # botocore retries a request, not a body that breaks off mid-read: that is ours.
            try:
                data = reply["Body"].read()
                break
            except BotoCoreError as exc:
                if attempt == self.attempts:
                    raise self._error(exc, what) from exc
                log.info("retrying %s after a broken read: %s", what, exc)
        if len(data) != length:
            raise StorageError(f"{kind}/{name} is shorter than the index says")
        return data

    def stat(self, kind: str, name: str) -> ObjectInfo:
        reply = self._call(f"reading {kind}/{name}", "head_object", Key=self._key(kind, name))
        return ObjectInfo(name, int(reply["ContentLength"]))

    def delete(self, kind: str, name: str) -> None:
        # S3 answers a delete of a missing key with success, as the interface wants.
        self._call(f"deleting {kind}/{name}", "delete_object", Key=self._key(kind, name))

    def list(self, kind: str) -> Iterator[str]:
        base = self._base(kind)
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(base) :]
                    if _is_ours(name):
                        yield name
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, f"listing {kind}") from exc


def _is_ours(name: str) -> bool:
    """Keys that someone else put under our prefix (or directory markers) are not listed."""
    try:
        check_object_name(name)
    except StorageError:
        return False
    return True
