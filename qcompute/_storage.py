"""The only module that talks S3: boto3 client and resource, transfer settings, sync planning.

boto3 and botocore are imported when a :class:`Storage` is built, never at import time.
Credentials follow the dialect: the access key is the user's email (``GET /info``), the secret
key is the API token. Every botocore error is turned into :class:`~qcompute.StorageError` or
:class:`~qcompute.MissingBucketException` here.

The pure parts (keys, ETags, :class:`ObjectInfo`) live in :mod:`qcompute._objects` and are
re-exported here; the sync engine that plans and runs multi-file transfers is
:mod:`qcompute._sync`.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Optional, Union
from urllib.parse import quote, urlsplit

from ._http import USER_AGENT
from ._objects import (COPY_LIMIT, MAX_PARTS, MD5, MULTIPART_SIZE, ObjectInfo,
                       bucket_name_problem, compute_etag, denied_message, etag_for_label,
                       etag_label, join_key, normalize_key, normalize_prefix, part_size_for,
                       upload_label)
from .exceptions import MissingBucketException, StorageError

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

__all__ = [
    "Storage", "no_continue_for_empty_body", "client_config", "TRANSFER_CONCURRENCY",
    # re-exported from ._objects
    "ObjectInfo", "normalize_key", "normalize_prefix", "join_key", "part_size_for",
    "compute_etag", "etag_for_label", "etag_label", "upload_label", "denied_message",
    "MULTIPART_SIZE", "MAX_PARTS", "COPY_LIMIT", "MD5",
]

logger = logging.getLogger(__name__)

# parts of large files in flight. boto3's default is 10; on the 2-core bench box (SeaweedFS on
# the same cores) 1 GB uploads ran 4: 150, 8: 120, 16: 96 MB/s; remote endpoints want more.
TRANSFER_CONCURRENCY = 8
SMALL_CONCURRENCY = 32  # connections of the direct path (16 workers, with room to spare)
REGION = "us-east-1"
_IN_MEMORY_BODY = 256 * 1024  # smaller bodies are read into memory, larger ones streamed
_DELETE_BATCH = 1000
_BLOCK = 1024 * 1024
CONNECT_TIMEOUT = 10.0  # seconds; a read may take botocore's 60 s (a large part on a slow link)
# Standard mode waits random(0, 2**n) s before retry n: 5 retries may all fit in a storage restart
# (< 5 s once in 65 calls); 2 more wait < 10 s once in 3,000.
_EXTRA_S3_RETRIES = 2

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


def client_config(*, retry_count: int, **options: Any) -> Any:
    """The botocore ``Config`` of every S3 client (the runner's too): ``retry_count`` (0: none)
    plus :data:`_EXTRA_S3_RETRIES` retries in standard mode, and ``options``."""
    from botocore.config import Config

    retries = retry_count + _EXTRA_S3_RETRIES if retry_count else 0
    return Config(connect_timeout=CONNECT_TIMEOUT,
                  retries={"mode": "standard", "total_max_attempts": retries + 1}, **options)


# ----------------------------------------------------------------------------- error mapping
def _client_error(exc: Any, operation: str, bucket: Optional[str], key: Optional[str],
                  prefix_of: Optional[Callable[[], Optional[str]]] = None) -> Exception:
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
    if code in ("AccessDenied", "403", "Forbidden") and bucket:
        prefix = None
        if prefix_of is not None:
            try:
                prefix = prefix_of()
            except Exception:  # the hint is best effort: never hide the real error
                logger.debug("could not read the bucket prefix", exc_info=True)
        return StorageError(denied_message(operation, bucket, prefix, message),
                            code="AccessDenied", operation=operation)
    return StorageError(f"{operation} failed: {code}: {message}", code=code, operation=operation)


@contextlib.contextmanager
def _errors(operation: str, bucket: Optional[str] = None, key: Optional[str] = None,
            prefix_of: Optional[Callable[[], Optional[str]]] = None) -> Iterator[None]:
    from boto3.exceptions import Boto3Error, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        raise _client_error(exc, operation, bucket, key, prefix_of) from exc
    except S3UploadFailedError as exc:
        cause = exc.__cause__ or exc.__context__  # boto3 raises it while handling a ClientError
        if isinstance(cause, ClientError):
            raise _client_error(cause, operation, bucket, key, prefix_of) from exc
        if "NoSuchBucket" in str(exc):
            raise MissingBucketException(
                f"{operation}: bucket {bucket!r} not found", status_code=404, code="NoSuchBucket"
            ) from exc
        raise StorageError(f"{operation} failed: {exc}", operation=operation) from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"{operation} failed: {exc}", operation=operation) from exc


# ----------------------------------------------------------------------------- the adapter
def _fast_timestamp(value: Any) -> Any:
    """botocore's timestamp parser, with a fast path for ISO 8601 (every ``LastModified`` of a
    listing): dateutil takes about half the client time of a 1,000-key ListObjectsV2 page."""
    if isinstance(value, str) and len(value) >= 20 and value[10:11] == "T":
        try:
            parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    from botocore.parsers import DEFAULT_TIMESTAMP_PARSER

    return DEFAULT_TIMESTAMP_PARSER(value)


def _etag(value: Any) -> str:
    return str(value or "").strip('"')


class _Direct:
    """Small PutObject / GetObject without botocore's per-request pipeline.

    botocore signs (SigV4, payload hash included) and sends, with its own HTTP session (same TLS
    and proxy handling), but the endpoint rules, event hooks and response parsers are skipped:
    that takes the client's CPU per small request from about 1.3 ms to about 0.5 ms (measured
    on 2 cores, where that CPU is what limits small-file throughput). Only the plain success
    path is handled here: on any other answer or error the methods return None and
    :class:`Storage` makes the same (idempotent) request through boto3, which retries and maps
    errors. After ``_MAX_MISSES`` misses in a row it stops trying.
    """

    _MAX_MISSES = 5

    def __init__(self, endpoint_url: str, credentials: Any, verify: Union[bool, str]) -> None:
        from botocore.auth import S3SigV4Auth
        from botocore.httpsession import URLLib3Session
        from botocore.utils import get_environ_proxies

        parts = urlsplit(endpoint_url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._http = URLLib3Session(
            verify=verify, proxies=get_environ_proxies(endpoint_url), timeout=60,
            max_pool_connections=SMALL_CONCURRENCY,
            # as botocore's clients do; without it each small PUT waits ~40 ms (delayed ACKs)
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self._signer = S3SigV4Auth(credentials, "s3", REGION)
        self._misses = 0

    @property
    def on(self) -> bool:
        return self._misses < self._MAX_MISSES

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, bucket: str, key: str, body: bytes = b"",
              stream: bool = False) -> Any:
        from botocore.awsrequest import AWSRequest

        url = f"{self._origin}{self._prefix}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        request = AWSRequest(method=method, url=url, data=body,
                             headers={"User-Agent": f"{USER_AGENT} direct"})
        self._signer.add_auth(request)
        prepared = request.prepare()
        prepared.stream_output = stream
        return self._http.send(prepared)

    def _miss(self, what: str, detail: Any) -> None:
        self._misses += 1
        logger.debug("direct %s: %s; again through boto3", what, detail)

    def put(self, bucket: str, key: str, body: bytes) -> Optional[str]:
        """PutObject; the ETag, or None (then ask boto3)."""
        try:
            reply = self._send("PUT", bucket, key, body)
        except Exception as exc:  # noqa: BLE001 - any failure: boto3 does it again, properly
            self._miss(f"PUT {bucket}/{key}", exc)
            return None
        etag = reply.headers.get("ETag")
        if reply.status_code != 200 or not etag:
            self._miss(f"PUT {bucket}/{key}", reply.status_code)
            return None
        self._misses = 0
        return _etag(etag)

    def get(self, bucket: str, key: str, path: str,
            callback: Optional[Callback]) -> Optional[str]:
        """GetObject streamed to ``path``; the ETag, or None (then ask boto3)."""
        moved = 0
        try:
            reply = self._send("GET", bucket, key, stream=True)
            try:
                if reply.status_code != 200:
                    self._miss(f"GET {bucket}/{key}", reply.status_code)
                    return None
                expected = int(reply.headers.get("Content-Length", -1))
                with open(path, "wb") as handle:
                    for chunk in reply.raw.stream(_BLOCK):
                        handle.write(chunk)
                        moved += len(chunk)
                        if callback is not None:
                            callback(len(chunk))
                if expected not in (-1, moved):
                    raise OSError(f"body cut short: {moved} of {expected} bytes")
            finally:
                reply.raw.release_conn()
        except Exception as exc:  # noqa: BLE001 - any failure: boto3 does it again, properly
            if callback is not None and moved:
                callback(-moved)
            self._miss(f"GET {bucket}/{key}", exc)
            return None
        self._misses = 0
        return _etag(reply.headers.get("ETag"))


_RETRIED_BODY_ERRORS = ("ResponseStreamingError", "IncompleteReadError", "ReadTimeoutError",
                        "ConnectionClosedError")


class Storage:
    """boto3 client and resource for one endpoint and one identity.

    Args:
        endpoint_url: the S3 URL.
        access_key: the user's email.
        secret_key: the API token.
        verify: TLS verification: True, False, or a CA bundle path.
        retry_count: retries of a failed S3 call, plus two (see :func:`client_config`).
        bucket_prefix: returns the user's bucket-name prefix (``bucketPrefix`` of ``GET /info``;
            ``""``: any name; ``None``: unknown); called only to explain an AccessDenied.
        direct: send small PutObject / GetObject requests of multi-file calls straight through
            urllib3, signed by botocore (see :class:`_Direct`); boto3 remains the fallback.
        create_url: returns where to send CreateBucket (``qcomputeCreateBucketUrl`` of ``GET
            /settings``: the cluster's S3 front, which also creates names such as
            ``meshroomIn``), or None for ``endpoint_url``; called on the first CreateBucket.
    """

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        *,
        verify: Union[bool, str] = True,
        retry_count: int = 5,
        bucket_prefix: Optional[Callable[[], Optional[str]]] = None,
        direct: bool = True,
        create_url: Optional[Callable[[], Optional[str]]] = None,
    ) -> None:
        import boto3.session
        import botocore.session
        from boto3.s3.transfer import TransferConfig

        self.endpoint_url = endpoint_url
        self._verify = verify
        self._prefix_of = bucket_prefix
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_fast_timestamp)
        self._session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION,
            botocore_session=core,
        )
        self._config = client_config(
            retry_count=retry_count,
            user_agent_extra=USER_AGENT,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
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
        self._direct: Optional[_Direct] = None
        if direct:
            self._direct = _Direct(endpoint_url, self._session.get_credentials(), verify)
        self._resource: Any = None
        self._lock = threading.Lock()
        self._create_url = create_url
        self._creator: Any = None  # the client CreateBucket goes through (built on first use)

    def close(self) -> None:
        """Close the pooled connections (boto3's and the direct path's)."""
        self.client.close()
        if self._creator not in (None, self.client):
            self._creator.close()
        if self._resource is not None:
            self._resource.meta.client.close()
        if self._direct is not None:
            self._direct.close()

    def _errors(self, operation: str, bucket: Optional[str] = None,
                key: Optional[str] = None) -> Any:
        return _errors(operation, bucket, key, self._prefix_of)

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
        """CreateBucket; a bucket the caller already owns counts as created. A name Qarnot's
        storage refuses (:func:`~qcompute._objects.bucket_name_problem`) raises
        :class:`~qcompute.StorageError` (code ``InvalidBucketName``) before any request."""
        from botocore.exceptions import ClientError

        problem = bucket_name_problem(bucket)
        if problem:
            raise StorageError(f"CreateBucket: {bucket!r} is not a valid bucket name: {problem}",
                               code="InvalidBucketName", operation="CreateBucket")
        with self._errors("CreateBucket", bucket):
            try:
                self._bucket_creator().create_bucket(Bucket=bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
                logger.debug("bucket %s already exists (owned by this user)", bucket)

    def _bucket_creator(self) -> Any:
        with self._lock:
            if self._creator is None:
                url = self._create_url() if self._create_url is not None else None
                self._creator = self.client if not url or url == self.endpoint_url else (
                    self._session.client("s3", endpoint_url=url, config=self._config,
                                         verify=self._verify))
            return self._creator

    def head_bucket(self, bucket: str) -> None:
        """HeadBucket: raises :class:`MissingBucketException` if it does not exist."""
        with self._errors("HeadBucket", bucket):
            self.client.head_bucket(Bucket=bucket)

    def list_buckets(self) -> list[str]:
        """ListBuckets: the names of the caller's buckets."""
        with self._errors("ListBuckets"):
            reply = self.client.list_buckets()
        return [entry["Name"] for entry in reply.get("Buckets", [])]

    def delete_bucket(self, bucket: str) -> None:
        """DeleteBucket (the bucket must be empty)."""
        with self._errors("DeleteBucket", bucket):
            self.client.delete_bucket(Bucket=bucket)

    # -- objects
    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 of one prefix, page after page."""
        with self._errors("ListObjectsV2", bucket):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                for entry in page.get("Contents", []) or []:
                    yield ObjectInfo(
                        key=entry["Key"],
                        etag=_etag(entry.get("ETag")),
                        size=int(entry.get("Size", 0)),
                        last_modified=entry.get("LastModified"),
                    )

    def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """HeadObject: size and ETag of one object."""
        with self._errors("HeadObject", bucket, key):
            reply = self.client.head_object(Bucket=bucket, Key=key)
        return ObjectInfo(key=key, etag=_etag(reply.get("ETag")),
                          size=int(reply.get("ContentLength", 0)),
                          last_modified=reply.get("LastModified"))

    @contextlib.contextmanager
    def transfer_manager(self) -> Iterator[Any]:
        """One boto3 transfer manager for the large files of a multi-file call: their parts share
        one pool of ``TRANSFER_CONCURRENCY`` requests. Pass it as ``manager`` to
        :meth:`upload_file` / :meth:`download_file`; in-flight transfers are cancelled if the
        block raises."""
        from s3transfer.manager import TransferManager

        manager = TransferManager(self.client, self.transfer_config)
        try:
            yield manager
        except BaseException:
            manager.shutdown(cancel=True)
            raise
        manager.shutdown()

    def upload_file(self, bucket: str, key: str, path: str, callback: Optional[Callback] = None,
                    manager: Any = None) -> None:
        """Upload a file with boto3's transfer manager: multipart from 8 MiB, parts in
        parallel, read from disk part by part (bounded memory)."""
        with self._errors("PutObject", bucket, key):
            if manager is None:
                self.client.upload_file(
                    Filename=path, Bucket=bucket, Key=key, Config=self.transfer_config,
                    Callback=callback,
                )
            else:
                manager.upload(path, bucket, key, subscribers=_subscribers(callback)).result()

    def put_file(self, bucket: str, key: str, path: str, size: int,
                 callback: Optional[Callback] = None) -> str:
        """One PutObject of a file below the multipart threshold (no transfer-manager overhead);
        ``callback(size)`` once it is stored. Returns the new ETag."""
        with open(path, "rb") as handle:
            body: Any = handle.read() if size <= _IN_MEMORY_BODY else handle
            etag = None
            if self._direct is not None and self._direct.on and isinstance(body, bytes):
                etag = self._direct.put(bucket, key, body)
            if etag is None:
                with self._errors("PutObject", bucket, key):
                    if not isinstance(body, bytes):
                        body.seek(0)
                    etag = _etag(self.client.put_object(Bucket=bucket, Key=key,
                                                        Body=body).get("ETag"))
        if callback is not None:
            callback(size)
        return etag

    def upload_fileobj(self, bucket: str, key: str, fileobj: BinaryIO,
                       callback: Optional[Callback] = None) -> None:
        """Upload from a binary file object."""
        with self._errors("PutObject", bucket, key):
            self.client.upload_fileobj(
                Fileobj=fileobj, Bucket=bucket, Key=key, Config=self.transfer_config,
                Callback=callback,
            )

    def put_bytes(self, bucket: str, key: str, data: bytes) -> str:
        """PutObject of a small body; returns the new ETag."""
        with self._errors("PutObject", bucket, key):
            reply = self.client.put_object(Bucket=bucket, Key=key, Body=data)
        return _etag(reply.get("ETag"))

    def copy_object(self, bucket: str, source: str, key: str,
                    if_match: Optional[str] = None) -> str:
        """Server-side CopyObject of ``source`` to ``key`` in one bucket (objects up to 5 GiB).

        With ``if_match``, the copy is refused (``StorageError`` with code
        ``PreconditionFailed``) unless the source still has that ETag. Returns the new ETag.
        """
        args: dict[str, Any] = {"Bucket": bucket, "Key": key,
                                "CopySource": {"Bucket": bucket, "Key": source}}
        if if_match:
            args["CopySourceIfMatch"] = f'"{if_match}"'
        with self._errors("CopyObject", bucket, key):
            reply = self.client.copy_object(**args)
        return _etag((reply.get("CopyObjectResult") or {}).get("ETag"))

    def download_file(self, bucket: str, key: str, path: str,
                      callback: Optional[Callback] = None, manager: Any = None) -> None:
        """Download an object to a file with boto3's transfer manager (ranged GETs in parallel
        for large objects, written to a temporary name, then renamed)."""
        with self._errors("GetObject", bucket, key):
            if manager is None:
                self.client.download_file(
                    Bucket=bucket, Key=key, Filename=path, Config=self.transfer_config,
                    Callback=callback,
                )
            else:
                manager.download(bucket, key, path, subscribers=_subscribers(callback)).result()

    def get_to_file(self, bucket: str, key: str, path: str,
                    callback: Optional[Callback] = None, attempts: int = 3) -> str:
        """One GetObject streamed to a file (for objects below the multipart threshold).

        The body goes to a temporary name next to ``path``, renamed when complete; a body cut
        short is fetched again (``attempts`` in all). Returns the object's ETag.
        """
        from botocore.exceptions import BotoCoreError

        if self._direct is not None and self._direct.on:
            temp = f"{path}.{secrets.token_hex(4)}"
            try:
                etag = self._direct.get(bucket, key, temp, callback)
                if etag is not None:
                    os.replace(temp, path)
                    return etag
            finally:
                with contextlib.suppress(OSError):
                    os.remove(temp)
        for attempt in range(1, attempts + 1):
            temp = f"{path}.{secrets.token_hex(4)}"
            moved = 0
            try:
                with self._errors("GetObject", bucket, key):
                    reply = self.client.get_object(Bucket=bucket, Key=key)
                    try:
                        with open(temp, "wb") as handle:
                            for chunk in reply["Body"].iter_chunks(_BLOCK):
                                handle.write(chunk)
                                moved += len(chunk)
                                if callback is not None:
                                    callback(len(chunk))
                    except BotoCoreError as exc:
                        if attempt == attempts or type(exc).__name__ not in _RETRIED_BODY_ERRORS:
                            raise
                        logger.debug("GetObject %s/%s: body cut short (%s), again", bucket, key,
                                     exc)
                        if callback is not None and moved:
                            callback(-moved)
                        continue
                os.replace(temp, path)
                return _etag(reply.get("ETag"))
            finally:
                with contextlib.suppress(OSError):
                    os.remove(temp)
        raise AssertionError("unreachable")  # pragma: no cover

    def delete_object(self, bucket: str, key: str) -> None:
        """DeleteObject."""
        with self._errors("DeleteObject", bucket, key):
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
        with self._errors("DeleteObjects", bucket):
            reply = self.client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        failed = reply.get("Errors") or []
        if failed:
            detail = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in failed[:10])
            raise StorageError(f"DeleteObjects failed for {len(failed)} keys: {detail}",
                               code=failed[0].get("Code"), operation="DeleteObjects")


def _subscribers(callback: Optional[Callback]) -> list[Any]:
    """s3transfer subscribers that report transferred bytes to ``callback``."""
    if callback is None:
        return []
    from boto3.s3.transfer import ProgressCallbackInvoker

    return [ProgressCallbackInvoker(callback)]
