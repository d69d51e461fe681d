"""A model repository in an S3 bucket (AWS S3, MinIO, SeaweedFS, QingStor/OIS) through boto3.

Which service it is only changes the endpoint, region and addressing style (see
:mod:`.presets`). Credentials come from ``s3.access.key``/``s3.secret.key`` when set, otherwise
from boto3's standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``); they
are handed to boto3 and never logged or shown.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import SourceError
from .base import ModelSource, Progress
from .presets import PRESETS, split_s3_path

log = logging.getLogger(__name__)

# Part size of our uploads; ETags of multipart objects are MD5s of the parts' MD5s.
PART_SIZE = 8 << 20


def call_limits(seconds: float | None) -> dict[str, Any]:
    """botocore settings that bound one S3 call to about ``2 * seconds`` (plus a short backoff).

    Interactive commands (``models push``, ``models ls``) keep botocore's patient defaults. The
    agent passes its sync interval: a hung store (accepting connections, never answering) then
    fails a cycle within a couple of intervals instead of boto's 60 s read timeout times five
    attempts, and a stopped one (connection refused) fails at once, so the next cycle -- one
    interval later -- finds the store the moment it is back.
    """
    if seconds is None:
        return {"retries": {"max_attempts": 5, "mode": "standard"},
                "connect_timeout": 10, "read_timeout": 60}
    return {"retries": {"total_max_attempts": 2, "mode": "standard"},
            "connect_timeout": min(max(2.0, seconds / 2), 10.0),
            "read_timeout": min(max(5.0, float(seconds)), 60.0)}


@dataclass(frozen=True)
class S3Location:
    """Everything needed to reach one bucket/prefix (secrets excluded from repr)."""

    s3_type: str
    bucket: str
    prefix: str
    endpoint: str | None
    region: str
    path_style: bool
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)

    @classmethod
    def from_settings(cls, s3_type: str, base_path: str, endpoint: str, region: str,
                      access_key: str, secret_key: str) -> "S3Location":
        preset = PRESETS.get(s3_type)
        if preset is None:
            raise SourceError(f"unknown s3.type {s3_type!r}; valid: none, {', '.join(PRESETS)}")
        parsed = split_s3_path(base_path)
        if parsed is None:
            raise SourceError(f"model.base.path must be s3://bucket[/prefix], got {base_path!r}")
        bucket, prefix = parsed
        region = (region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                  or preset.region)
        return cls(s3_type, bucket, f"{prefix}/" if prefix else "",
                   preset.endpoint_for(endpoint, region), region, preset.path_style,
                   access_key, secret_key)


class S3Source(ModelSource):
    """``s3://<bucket>/<prefix>/<name>/<version>/...``."""

    kind = "s3"

    def __init__(self, location: S3Location, max_connections: int = 10,
                 call_seconds: float | None = None) -> None:
        self.location = location
        boto_config = BotoConfig(
            region_name=location.region,
            s3={"addressing_style": "path" if location.path_style else "auto"},
            max_pool_connections=max(10, max_connections + 2),
            **call_limits(call_seconds),
            # ETag (MD5) is our integrity check; don't add CRC trailers stores may not know.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        kwargs: dict[str, Any] = {"config": boto_config}
        if location.endpoint:
            kwargs["endpoint_url"] = location.endpoint
        if location.access_key or location.secret_key:
            kwargs["aws_access_key_id"] = location.access_key
            kwargs["aws_secret_access_key"] = location.secret_key
        self.client = boto3.session.Session().client("s3", **kwargs)
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                       max_concurrency=max(4, max_connections))

    def describe(self) -> str:
        where = self.location.endpoint or "AWS"
        return f"{self.location.s3_type} s3://{self.location.bucket}/{self.location.prefix} at {where}"

    def _error(self, action: str, key: str, exc: Exception) -> SourceError:
        """A SourceError naming the bucket, key and endpoint (never a credential)."""
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code", "?")
            hint = {
                "NoSuchBucket": "create the bucket, or fix model.base.path",
                "InvalidAccessKeyId": "check s3.access.key / AWS_ACCESS_KEY_ID",
                "SignatureDoesNotMatch": "check s3.secret.key / AWS_SECRET_ACCESS_KEY",
                "AccessDenied": "the key may not read this bucket",
            }.get(code, "")
            detail = f"{code}: {err.get('Message', '')}".rstrip(": ")
            if hint:
                detail += f" ({hint})"
        else:
            detail = str(exc)
        return SourceError(f"cannot {action} s3://{self.location.bucket}/{key} "
                           f"at {self.location.endpoint or 'AWS'}: {detail}")

    def _full(self, key: str) -> str:
        return self.location.prefix + key

    def _list(self, prefix: str) -> Iterator[tuple[str, int, str]]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.location.prefix)
        try:
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=self._full(prefix)):
                for item in page.get("Contents", []):
                    yield item["Key"][strip:], int(item["Size"]), item.get("ETag", "")
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", self._full(prefix), exc) from exc

    def _open(self, key: str, start: int, length: int) -> BinaryIO:
        try:
            resp = self.client.get_object(Bucket=self.location.bucket, Key=self._full(key),
                                          Range=f"bytes={start}-{start + length - 1}")
        except (ClientError, BotoCoreError) as exc:
            raise self._error("read", self._full(key), exc) from exc
        return resp["Body"]

    def _read_small(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.location.bucket, Key=self._full(key))
            return resp["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error("read", self._full(key), exc) from exc

    def part_size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.location.bucket, Key=self._full(key),
                                           PartNumber=1)
        except (ClientError, BotoCoreError) as exc:
            log.debug("HEAD partNumber=1 of %s failed: %s", key, exc)
            return None
        return int(head["ContentLength"])

    def _put_file(self, path: Path, key: str, progress: Progress) -> None:
        try:
            self.client.upload_file(str(path), self.location.bucket, self._full(key),
                                    Config=self.transfer, Callback=progress)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("upload", self._full(key), exc) from exc
        except Exception as exc:   # s3transfer wraps ClientError in S3UploadFailedError
            raise self._error("upload", self._full(key), exc) from exc

    def _put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.location.bucket, Key=self._full(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("write", self._full(key), exc) from exc

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._full(k)} for k in keys[start:start + 1000]]
            try:
                self.client.delete_objects(Bucket=self.location.bucket,
                                           Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise self._error("delete in", self._full(keys[start]), exc) from exc

    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing; True when it was created."""
        try:
            self.client.head_bucket(Bucket=self.location.bucket)
            return False
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error("check bucket", "", exc) from exc
        except BotoCoreError as exc:
            raise self._error("check bucket", "", exc) from exc
        try:
            self.client.create_bucket(Bucket=self.location.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("create bucket", "", exc) from exc
        return True
