"""The only module that talks S3: boto3 client and resource, transfer settings, sync planning.

boto3 and botocore are imported when a :class:`Storage` is built, never at import time.
Credentials follow the dialect: the access key is the user's email (``GET /info``), the secret
key is the API token. Every botocore error is turned into :class:`~qcompute.StorageError` or
:class:`~qcompute.MissingBucketException` here.

The pure parts (:func:`normalize_key`, :func:`compute_etag`, :func:`plan_sync`) need no network.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Optional, Union

from ._http import USER_AGENT
from .exceptions import MissingBucketException, StorageError

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

__all__ = [
    "Storage",
    "ObjectInfo",
    "SyncPlan",
    "normalize_key",
    "normalize_prefix",
    "join_key",
    "compute_etag",
    "plan_sync",
    "MULTIPART_SIZE",
    "no_continue_for_empty_body",
]

logger = logging.getLogger(__name__)

MULTIPART_SIZE = 8 * 1024 * 1024  # threshold and part size of uploads (ETags depend on it)
MAX_PARTS = 10_000
TRANSFER_CONCURRENCY = 16
REGION = "us-east-1"
_DELETE_BATCH = 1000
_BLOCK = 1024 * 1024

Callback = Callable[[int], None]


# ----------------------------------------------------------------------------- pure helpers
def no_continue_for_empty_body(params: dict, **_: Any) -> None:
    """botocore ``before-call.s3`` hook: no ``Expect: 100-continue`` on an empty body.

    botocore sends it on every PutObject; when the server answers at once (no body to wait
    for, as SeaweedFS does), the *next* request on that pooled connection stalls until the read
    timeout (60 s). See boto/boto3#3757 and botocore's BOTO_EXPERIMENTAL__NO_EMPTY_CONTINUE.
    """
    from botocore.utils import determine_content_length

    body = params.get("body")
    if body is not None and "Expect" in params["headers"] and determine_content_length(body) == 0:
        del params["headers"]["Expect"]


def normalize_key(key: Union[str, "os.PathLike[str]"]) -> str:
    """An object key as a POSIX path: ``\\`` → ``/``, repeated ``/`` collapsed, no leading ``/``.

    Surrounding whitespace is removed. A trailing ``/`` (a folder marker) is kept.
    """
    text = os.fspath(key).strip().replace("\\", "/")
    return re.sub(r"/{2,}", "/", text).lstrip("/")


def normalize_prefix(prefix: Optional[str]) -> str:
    """A folder prefix: normalised and ending with ``/`` (``""`` for none)."""
    text = normalize_key(prefix or "")
    return text if not text or text.endswith("/") else text + "/"


def join_key(prefix: Optional[str], relative: str) -> str:
    """``join_key("out", "a/b.txt")`` → ``out/a/b.txt``."""
    return normalize_key(f"{prefix}/{relative}" if prefix else relative)


def part_size_for(size: int, part_size: int = MULTIPART_SIZE) -> int:
    """The part size boto3 uses for a file: doubled until the file fits in 10,000 parts."""
    while -(-size // part_size) > MAX_PARTS:
        part_size *= 2
    return part_size


def compute_etag(path: Union[str, "os.PathLike[str]"], part_size: int = MULTIPART_SIZE) -> str:
    """The ETag S3 gives a file uploaded by :class:`Storage` (without quotes).

    Below ``part_size`` bytes: the MD5 of the content. From ``part_size`` on (multipart
    upload): the MD5 of the concatenated part MD5s, then ``-<number of parts>``.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if size < part_size:
            digest = hashlib.md5()
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
            return digest.hexdigest()
        part = part_size_for(size, part_size)
        parts = []
        while True:
            digest = hashlib.md5()
            left = part
            while left:
                block = handle.read(min(_BLOCK, left))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
            if left == part:
                break
            parts.append(digest.digest())
            if left:
                break
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


class ObjectInfo(str):
    """One object of a listing: the key itself (a ``str``), with its metadata as attributes.

    Because it is the key, ``sorted(bucket.list_files())`` or ``"a.txt" in bucket.list_files()``
    work on keys; ``.key``, ``.etag`` (no quotes), ``.size`` and ``.last_modified`` give the rest.
    """

    etag: str
    size: int
    last_modified: Optional[datetime]

    def __new__(cls, key: str, etag: str = "", size: int = 0,
                last_modified: Optional[datetime] = None) -> "ObjectInfo":
        obj = super().__new__(cls, key)
        obj.etag = etag
        obj.size = int(size)
        obj.last_modified = last_modified
        return obj

    @property
    def key(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"ObjectInfo({str(self)!r}, etag={self.etag!r}, size={self.size})"


@dataclass(frozen=True)
class SyncPlan:
    """What a sync does: ``upload`` (key, local path) pairs and ``delete`` keys."""

    upload: tuple[tuple[str, str], ...]
    delete: tuple[str, ...]
    unchanged: tuple[str, ...]


def plan_sync(
    local: Mapping[str, str],
    remote: Mapping[str, ObjectInfo],
    *,
    delete_prefix: Optional[str] = "",
    etag_of: Callable[[str], str] = compute_etag,
    workers: int = 8,
) -> SyncPlan:
    """Compare local files with a listing.

    A file is uploaded when its key is not in the listing, its size differs, or its ETag
    differs (ETags are computed, in parallel, only when the sizes match). A listed object
    whose key starts with ``delete_prefix`` and is not a local key is deleted (``None``: delete
    nothing); folder markers (keys ending in ``/``) are kept.

    Args:
        local: key → local path.
        remote: key → listed object.
        delete_prefix: the part of the bucket mirrored by this sync.
        etag_of: ETag function (default :func:`compute_etag`).
        workers: threads hashing files.
    """
    same_size = [
        key for key, path in local.items()
        if key in remote and remote[key].size == os.path.getsize(path)
    ]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        etags = dict(zip(same_size, pool.map(lambda key: etag_of(local[key]), same_size), strict=True))
    upload, unchanged = [], []
    for key in sorted(local):
        if key in etags and etags[key] == remote[key].etag:
            unchanged.append(key)
        else:
            upload.append((key, local[key]))
    delete: list[str] = []
    if delete_prefix is not None:
        delete = sorted(
            key for key in remote
            if key not in local and key.startswith(delete_prefix) and not key.endswith("/")
        )
    return SyncPlan(tuple(upload), tuple(delete), tuple(unchanged))


# ----------------------------------------------------------------------------- error mapping
def _client_error(exc: Any, operation: str, bucket: Optional[str], key: Optional[str]) -> Exception:
    error = exc.response.get("Error", {}) or {}
    meta = exc.response.get("ResponseMetadata", {}) or {}
    code = str(error.get("Code") or meta.get("HTTPStatusCode") or "")
    message = error.get("Message") or str(exc)
    if code == "NoSuchBucket" or (code in ("404", "NotFound") and key is None and bucket):
        return MissingBucketException(
            f"{operation}: bucket {bucket!r} not found", status_code=404, code="NoSuchBucket",
            request_id=meta.get("RequestId"),
        )
    if code in ("NoSuchKey", "404", "NotFound") and key is not None:
        return StorageError(f"{operation}: no object {key!r} in bucket {bucket!r}",
                            code="NoSuchKey", operation=operation)
    return StorageError(f"{operation} failed: {code}: {message}", code=code, operation=operation)


@contextlib.contextmanager
def _errors(operation: str, bucket: Optional[str] = None, key: Optional[str] = None) -> Iterator[None]:
    from boto3.exceptions import Boto3Error, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, operation, bucket, key) from exc
    except S3UploadFailedError as exc:
        if "NoSuchBucket" in str(exc):
            raise MissingBucketException(
                f"{operation}: bucket {bucket!r} not found", status_code=404, code="NoSuchBucket"
            ) from exc
        raise StorageError(f"{operation} failed: {exc}", operation=operation) from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"{operation} failed: {exc}", operation=operation) from exc


# ----------------------------------------------------------------------------- the adapter
class Storage:
    """boto3 client and resource for one endpoint and one identity.

    Args:
        endpoint_url: the S3 URL.
        access_key: the user's email.
        secret_key: the API token.
        verify: TLS verification: True, False, or a CA bundle path.
        retry_count: botocore retries (standard mode).
    """

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        *,
        verify: Union[bool, str] = True,
        retry_count: int = 5,
    ) -> None:
        import boto3.session
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.endpoint_url = endpoint_url
        self._verify = verify
        self._session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
        )
        self._config = Config(
            user_agent_extra=USER_AGENT,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"total_max_attempts": retry_count + 1, "mode": "standard"},
            max_pool_connections=64,
        )
        self.transfer_config: "TransferConfig" = TransferConfig(
            multipart_threshold=MULTIPART_SIZE,
            multipart_chunksize=MULTIPART_SIZE,
            max_concurrency=TRANSFER_CONCURRENCY,
            num_download_attempts=10,
        )
        self.client = self._session.client(
            "s3", endpoint_url=endpoint_url, config=self._config, verify=verify
        )
        self.client.meta.events.register("before-call.s3", no_continue_for_empty_body)
        self._resource: Any = None
        self._lock = threading.Lock()

    @property
    def resource(self) -> Any:
        """A boto3 S3 resource on the same endpoint and identity (built on first use)."""
        with self._lock:
            if self._resource is None:
                self._resource = self._session.resource(
                    "s3", endpoint_url=self.endpoint_url, config=self._config, verify=self._verify
                )
                self._resource.meta.client.meta.events.register(
                    "before-call.s3", no_continue_for_empty_body)
            return self._resource

    # -- buckets
    def create_bucket(self, bucket: str) -> None:
        """CreateBucket; a bucket the caller already owns counts as created."""
        from botocore.exceptions import ClientError

        with _errors("CreateBucket", bucket):
            try:
                self.client.create_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
                logger.debug("bucket %s already exists (owned by this user)", bucket)

    def head_bucket(self, bucket: str) -> None:
        """HeadBucket: raises :class:`MissingBucketException` if it does not exist."""
        with _errors("HeadBucket", bucket):
            self.client.head_bucket(Bucket=bucket)

    def list_buckets(self) -> list[str]:
        """ListBuckets: the names of the caller's buckets."""
        with _errors("ListBuckets"):
            reply = self.client.list_buckets()
        return [entry["Name"] for entry in reply.get("Buckets", [])]

    def delete_bucket(self, bucket: str) -> None:
        """DeleteBucket (the bucket must be empty)."""
        with _errors("DeleteBucket", bucket):
            self.client.delete_bucket(Bucket=bucket)

    # -- objects
    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 of one prefix, page after page."""
        with _errors("ListObjectsV2", bucket):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                for entry in page.get("Contents", []) or []:
                    yield ObjectInfo(
                        key=entry["Key"],
                        etag=str(entry.get("ETag", "")).strip('"'),
                        size=int(entry.get("Size", 0)),
                        last_modified=entry.get("LastModified"),
                    )

    def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """HeadObject: size and ETag of one object."""
        with _errors("HeadObject", bucket, key):
            reply = self.client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(key=key, etag=str(reply.get("ETag", "")).strip('"'),
                          size=int(reply.get("ContentLength", 0)),
                          last_modified=reply.get("LastModified"))

    def upload_file(self, bucket: str, key: str, path: str, callback: Optional[Callback] = None) -> None:
        """Upload a file (multipart from 8 MiB, parts in parallel)."""
        with _errors("PutObject", bucket, key):
            self.client.upload_file(
                Filename=path, Bucket=bucket, Key=key, Config=self.transfer_config,
                Callback=callback,
            )

    def upload_fileobj(self, bucket: str, key: str, fileobj: BinaryIO,
                       callback: Optional[Callback] = None) -> None:
        """Upload from a binary file object."""
        with _errors("PutObject", bucket, key):
            self.client.upload_fileobj(
                Fileobj=fileobj, Bucket=bucket, Key=key, Config=self.transfer_config,
                Callback=callback,
            )

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        """PutObject of a small body."""
        with _errors("PutObject", bucket, key):
            self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def download_file(self, bucket: str, key: str, path: str,
                      callback: Optional[Callback] = None) -> None:
        """Download an object to a file (ranged GETs in parallel for large objects)."""
        with _errors("GetObject", bucket, key):
            self.client.download_file(
                Bucket=bucket, Key=key, Filename=path, Config=self.transfer_config,
                Callback=callback,
            )

    def delete_object(self, bucket: str, key: str) -> None:
        """DeleteObject."""
        with _errors("DeleteObject", bucket, key):
            self.client.delete_object(Bucket=bucket, Key=key)

    def delete_objects(self, bucket: str, keys: Iterable[str]) -> None:
        """DeleteObjects, 1000 keys per request."""
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == _DELETE_BATCH:
                self._delete_batch(bucket, batch)
                batch = []
        if batch:
            self._delete_batch(bucket, batch)

    def _delete_batch(self, bucket: str, keys: list[str]) -> None:
        with _errors("DeleteObjects", bucket):
            reply = self.client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        failed = reply.get("Errors") or []
        if failed:
            detail = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in failed[:10])
            raise StorageError(f"DeleteObjects failed for {len(failed)} keys: {detail}",
                               code=failed[0].get("Code"), operation="DeleteObjects")
