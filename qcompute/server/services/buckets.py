"""Browsing a user's buckets on their behalf: list, download, upload, delete.

The server reaches S3 with its admin keys (:attr:`StorageBackend.admin_access`), so the scope
is enforced here, and it is exactly the user's own S3 identity's: the buckets whose name starts
with the user's bucket prefix (the owner, whose prefix is ``""``, has every bucket). "Folders"
are the common prefixes of a listing with the delimiter ``/``.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Iterator, Optional

from ..errors import BadRequest, DomainError, Forbidden, NotFound, StorageUnavailable
from ..executors.base import S3Access

__all__ = ["BucketBrowser", "Listing", "Folder", "StoredObject", "Download", "UploadTooLarge",
           "PAGE_SIZE"]

PAGE_SIZE = 100  # entries (folders and objects) per listing page
CHUNK = 64 * 1024  # download chunks
MAX_KEY_BYTES = 1024  # S3's limit


class UploadTooLarge(DomainError):
    status_code = 413
    code = "upload_too_large"


@dataclass(frozen=True)
class Folder:
    prefix: str  # the whole prefix, ending with "/"

    @property
    def name(self) -> str:
        return self.prefix.rstrip("/").rsplit("/", 1)[-1] + "/"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: Optional[datetime]

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Listing:
    bucket: str
    prefix: str
    folders: list[Folder]
    objects: list[StoredObject]
    next_token: Optional[str]  # pass it back for the next page; None on the last


@dataclass(frozen=True)
class Download:
    key: str
    size: int
    content_type: str
    chunks: Iterator[bytes]


@functools.lru_cache(maxsize=8)
def _client(access: S3Access):
    """One boto3 client per key pair (thread-safe; making one costs tens of milliseconds)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=access.endpoint_url, aws_access_key_id=access.access_key,
        aws_secret_access_key=access.secret_key, region_name=access.region,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5,
                      read_timeout=60, signature_version="s3v4"))


class _Limited:
    """A read-only file that raises :class:`UploadTooLarge` past ``limit`` bytes."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw, self._limit, self.read_bytes = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.read_bytes += len(data)
        if self.read_bytes > self._limit:
            raise UploadTooLarge(f"the file is larger than the upload limit of {self._limit} "
                                 "bytes")
        return data


class BucketBrowser:
    """What ``user`` may do with the buckets of its S3 scope, through ``access`` (admin keys)."""

    def __init__(self, access: S3Access, bucket_prefix: str) -> None:
        self._access = access
        self._prefix = bucket_prefix

    def allowed(self, bucket: str) -> bool:
        return bucket.startswith(self._prefix)

    def buckets(self) -> list[str]:
        """The names of the user's buckets, sorted."""
        with _errors():
            found = _client(self._access).list_buckets().get("Buckets", [])
        return sorted(b["Name"] for b in found if self.allowed(b["Name"]))

    def listing(self, bucket: str, prefix: str = "", token: Optional[str] = None,
                page_size: int = PAGE_SIZE) -> Listing:
        """One page of the folders and objects right under ``prefix``."""
        self._check(bucket)
        args = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": page_size}
        if token:
            args["ContinuationToken"] = token
        with _errors(bucket):
            page = _client(self._access).list_objects_v2(**args)
        return Listing(
            bucket, prefix,
            [Folder(p["Prefix"]) for p in page.get("CommonPrefixes", ())],
            [StoredObject(o["Key"], o.get("Size", 0), o.get("LastModified"))
             for o in page.get("Contents", ()) if o["Key"] != prefix],
            page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def download(self, bucket: str, key: str) -> Download:
        """The object, streamed in chunks (the request is made now: a missing key raises)."""
        self._check(bucket, key)
        with _errors(bucket, key):
            answer = _client(self._access).get_object(Bucket=bucket, Key=key)
        body = answer["Body"]

        def chunks() -> Iterator[bytes]:
            with _errors(bucket, key):
                try:
                    yield from body.iter_chunks(CHUNK)
                finally:
                    body.close()

        return Download(key, answer.get("ContentLength", 0),
                        answer.get("ContentType") or "application/octet-stream", chunks())

    def upload(self, bucket: str, key: str, data: IO[bytes], *, max_bytes: int,
               content_type: Optional[str] = None) -> int:
        """Stream ``data`` to ``bucket/key`` (multipart past 8 MiB); returns its size. Past
        ``max_bytes`` nothing is stored (an unfinished multipart upload is aborted)."""
        self._check(bucket, key)
        with _errors(bucket):
            _client(self._access).head_bucket(Bucket=bucket)  # a clear 404 before any byte
        reader = _Limited(data, max_bytes)
        extra = {"ContentType": content_type} if content_type else None
        with _errors(bucket, key):
            _client(self._access).upload_fileobj(reader, bucket, key, ExtraArgs=extra)
        return reader.read_bytes

    def delete(self, bucket: str, key: str) -> None:
        self._check(bucket, key)
        with _errors(bucket, key):
            _client(self._access).delete_object(Bucket=bucket, Key=key)
        self._drop_empty_folders(bucket, set(_parents(key)))

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object whose key starts with ``prefix`` (not empty); returns how many."""
        self._check(bucket, prefix)
        client, deleted, folders = _client(self._access), 0, set[str]()
        with _errors(bucket):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                         Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
                if not keys:
                    continue
                answer = client.delete_objects(Bucket=bucket, Delete={"Objects": keys,
                                                                      "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise StorageUnavailable(f"S3 did not delete {first.get('Key')!r}: "
                                             f"{first.get('Message')}")
                deleted += len(keys)
                folders.update(f for k in keys for f in _parents(k["Key"]))
        self._drop_empty_folders(bucket, folders)
        return deleted

    def _drop_empty_folders(self, bucket: str, folders: set[str]) -> None:
        """SeaweedFS keeps a folder (``a/``) once its last object is gone, where S3 keeps
        nothing: delete ``folders``, deepest first. There, deleting a folder that still holds
        objects does nothing; on another S3 at most a folder-marker object ``a/`` goes, and
        the folder still shows while objects remain under it."""
        with _errors(bucket):
            for folder in sorted(folders, key=lambda f: f.count("/"), reverse=True):
                _client(self._access).delete_object(Bucket=bucket, Key=folder)

    def _check(self, bucket: str, key: Optional[str] = None) -> None:
        if not self.allowed(bucket):
            raise Forbidden(f"bucket {bucket!r} is not yours: your buckets start with "
                            f"{self._prefix!r}", code="bucket_forbidden")
        if key is not None and not 0 < len(key.encode()) <= MAX_KEY_BYTES:
            raise BadRequest(f"an object key must hold 1 to {MAX_KEY_BYTES} bytes",
                             code="invalid_key")




def _parents(key: str) -> list[str]:
    """The folders above ``key``: ``a/b/c`` → ``a/``, ``a/b/``."""
    parts = key.split("/")[:-1]
    return ["/".join(parts[:n]) + "/" for n in range(1, len(parts) + 1)]


@contextlib.contextmanager
def _errors(bucket: str = "", key: str = "") -> Iterator[None]:
    """Turns S3 failures into the server's errors: 404s name the bucket or the key."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500
        if code == "NoSuchBucket" or (status == 404 and not key):
            raise NotFound(f"no bucket {bucket!r}", code="bucket_not_found") from None
        if code in ("NoSuchKey", "404") or status == 404:
            raise NotFound(f"no object {key!r} in bucket {bucket!r}",
                           code="object_not_found") from None
        raise StorageUnavailable(f"S3 refused: {code or status}") from exc
    except BotoCoreError as exc:
        raise StorageUnavailable(f"S3 does not answer: {exc}") from exc
