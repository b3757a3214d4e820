"""Where files live: an S3 endpoint, and the S3 identity of each user on it.

* :class:`EmbeddedStorage` (default): a SeaweedFS ``weed mini`` supervised by the server, data
  under ``<data_dir>/s3``. Each user gets an S3 identity at run time: access key = e-mail,
  secret key = API token (the Qarnot convention), limited to buckets starting with the user's
  bucket prefix (the owner is unrestricted). The official ``qarnot`` SDK is handed a thin S3
  front on another port (:mod:`.s3front`): there CreateBucket of an owned bucket is a 200, and
  so is CreateBucket of a name Qarnot accepts and SeaweedFS refuses (``meshroomIn``), which the
  front creates; qcompute's SDK sends only its CreateBucket requests there.
* :class:`~.external.ExternalStorage`: any S3 endpoint by URL (a SeaweedFS cluster, MinIO, AWS).
  The server uses its admin keys and starts nothing; each user's prefix-scoped keys come from the
  store's IAM API or from the operator's file (:mod:`.external`).

The embedded SeaweedFS is supervised: restarted when it dies, with backoff, up to a limit
(:mod:`.supervisor`). :meth:`StorageBackend.check` says whether S3 answers now (``/health``).

Runners reach S3 as the task's owner (:meth:`StorageBackend.owner_access`), never with the
admin keys.

``make_storage(settings)`` picks one from ``settings.storage``.
"""
from __future__ import annotations

import abc
import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qcompute.server.executors.base import S3Access
from qcompute.server.settings import ServerSettings

from .relay import TcpRelay
from .s3front import S3Front
from .seaweed import SeaweedFS, pick_free_port, port_is_free
from .supervisor import RestartPolicy

__all__ = ["BucketUsage", "S3Keys", "StorageBackend", "EmbeddedStorage", "make_storage"]

USAGE_TTL_SECONDS = 30.0  # GET /info's bucket figures are at most this old

log = logging.getLogger(__name__)

_S3_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # SeaweedFS takes these (not IPs)
PROBE_TIMEOUT = 2.0  # seconds for the connection and the answer of check()'s ListBuckets

S3Keys = tuple[str, str]  # (access key, secret key)


@dataclass(frozen=True)
class BucketUsage:
    buckets: int
    bytes: int


def _list_usage(access: S3Access, prefix: str) -> BucketUsage:
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3", endpoint_url=access.endpoint_url, aws_access_key_id=access.access_key,
        aws_secret_access_key=access.secret_key, region_name=access.region,
        config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30))
    names = [b["Name"] for b in client.list_buckets().get("Buckets", [])
             if b["Name"].startswith(prefix)]
    pages = (page for name in names
             for page in client.get_paginator("list_objects_v2").paginate(Bucket=name))
    size = sum(obj.get("Size", 0) for page in pages for obj in page.get("Contents", ()))
    return BucketUsage(len(names), size)


class StorageBackend(abc.ABC):
    """An S3 endpoint the server and the runners use, and its per-user identities."""

    def __init__(self) -> None:
        self._usage: dict[str, tuple[float, BucketUsage]] = {}  # prefix -> (when, usage)
        self._usage_lock = threading.Lock()

    @property
    @abc.abstractmethod
    def endpoint_url(self) -> str:
        """The S3 endpoint URL given to clients and runners."""

    @property
    @abc.abstractmethod
    def admin_access(self) -> S3Access:
        """The server's own credentials (every bucket)."""

    @abc.abstractmethod
    def owner_access(self, email: str, token: str, stored: Optional[S3Keys] = None) -> S3Access:
        """The S3 identity a runner uses for a task (or pool) of the user ``email``, whose
        token is ``token`` and whose keys kept by the server (issued by the store) ``stored``."""

    def user_keys(self, email: str, stored: Optional[S3Keys]) -> Optional[S3Keys]:
        """The user's key pair when it is not the convention (e-mail, token), for ``GET /info``
        to hand to qcompute's SDK; None here."""
        return None

    @property
    def issues_keys(self) -> bool:
        """Whether the store issues each user's keys, which the server keeps (external IAM)."""
        return False

    @property
    def qarnot_sdk_endpoint_url(self) -> str:
        """The S3 URL ``GET /settings`` hands to the official ``qarnot`` SDK."""
        return self.endpoint_url

    @property
    def create_bucket_url(self) -> Optional[str]:
        """Where qcompute's SDK sends CreateBucket, if not to :attr:`endpoint_url`."""
        return None

    def describe(self) -> str:
        """One line for ``qcompute status``: what serves S3, and where."""
        return f"S3 at {self.endpoint_url}"

    @abc.abstractmethod
    def start(self) -> None:
        """Make the endpoint usable; returns once it answers."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Release it (stop the embedded process)."""

    @abc.abstractmethod
    def is_running(self) -> bool:
        """Whether the endpoint is usable."""

    def check(self) -> Optional[str]:
        """Why S3 cannot be used now, or None: a ListBuckets with the admin keys, one attempt
        of at most :data:`PROBE_TIMEOUT` s each to connect and to read. Any S3 answer below 500
        (an AccessDenied too) shows the endpoint serving."""
        from botocore.exceptions import ClientError

        try:
            self._probe_client().list_buckets()
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500
            if status >= 500:
                return f"S3 at {self.endpoint_url} answers {status}: {exc}"
        except Exception as exc:  # noqa: BLE001 - unreachable, timed out, ...: that is the answer
            return f"S3 at {self.endpoint_url} does not answer: {exc}"
        return None

    def _probe_client(self):
        client = getattr(self, "_probe", None)
        if client is None:
            import boto3
            from botocore.config import Config

            access = self.admin_access
            client = self._probe = boto3.session.Session().client(
                "s3", endpoint_url=access.endpoint_url, aws_access_key_id=access.access_key,
                aws_secret_access_key=access.secret_key, region_name=access.region,
                config=Config(connect_timeout=PROBE_TIMEOUT, read_timeout=PROBE_TIMEOUT,
                              retries={"mode": "standard", "total_max_attempts": 1}))
        return client

    def prepare_result_bucket(self, name: str) -> None:
        """Called when a task naming ``name`` as its result bucket is submitted. Nothing here:
        on an external endpoint a missing result bucket is the user's to create."""

    def usage(self, prefix: str) -> Optional[BucketUsage]:
        """The buckets whose names start with ``prefix`` (a user's; ``""``: all) and the bytes
        their objects hold, listed with the admin keys and kept :data:`USAGE_TTL_SECONDS` per
        prefix (a listing costs one request per 1,000 objects); None if S3 cannot say."""
        with self._usage_lock:
            known = self._usage.get(prefix)
            if known is not None and time.monotonic() - known[0] < USAGE_TTL_SECONDS:
                return known[1]
        try:
            found = _list_usage(self.admin_access, prefix)
        except Exception as exc:  # /info answers without the figures rather than failing
            log.warning("cannot read the bucket usage of prefix %r: %s", prefix, exc)
            return None
        with self._usage_lock:
            self._usage[prefix] = (time.monotonic(), found)
        return found

    @abc.abstractmethod
    def provision_user(self, email: str, token: str,
                       bucket_prefix: Optional[str]) -> Optional[S3Keys]:
        """Give ``email`` S3 access to the buckets starting with ``bucket_prefix`` (None: every
        bucket). Idempotent: replaces an existing identity. Returns the key pair the store
        issued, for the caller to keep (``users.set_storage_keys``), or None where the keys are
        (e-mail, token)."""

    def ensure_user(self, email: str, token: str, bucket_prefix: Optional[str],
                    stored: Optional[S3Keys]) -> Optional[S3Keys]:
        """At server start: make sure the user has its S3 access; what :meth:`provision_user`
        returns. Here the identity is made again (cheap; survives a loss of the S3 data)."""
        return self.provision_user(email, token, bucket_prefix)

    @abc.abstractmethod
    def remove_user(self, email: str) -> None:
        """Revoke the user's keys. Unknown users are ignored."""


class EmbeddedStorage(StorageBackend):
    """SeaweedFS ``weed mini`` under ``<data_dir>/s3``, S3 on ``settings.s3_port``.

    The admin keys come from the settings, or are generated on first use and kept in
    ``<data_dir>/s3-admin.json`` (mode 0600).
    """

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__()
        self._settings = settings
        self._weed: Optional[SeaweedFS] = None
        self._front: Optional[S3Front] = None
        self._relay: Optional[TcpRelay] = None  # S3 on `host`, when beyond loopback

    @property
    def endpoint_url(self) -> str:
        """Loopback, or where the server listens beyond loopback, the advertised host (served
        by the relay)."""
        return self._url(self._settings.s3_port)

    def _url(self, port: int) -> str:
        if not self._settings.beyond_loopback:
            return f"http://127.0.0.1:{port}"
        host = self._settings.advertised_host
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def qarnot_sdk_endpoint_url(self) -> str:
        """The S3 front (CreateBucket of an owned bucket is a 200), unless turned off."""
        return self.create_bucket_url or self.endpoint_url

    @property
    def create_bucket_url(self) -> Optional[str]:
        """The S3 front, which creates buckets whose names SeaweedFS refuses (``meshroomIn``)."""
        front = self._front
        return self._url(front.port) if front is not None and front.is_running() else None

    @property
    def admin_access(self) -> S3Access:
        weed = self._seaweed()
        return S3Access(self.endpoint_url, weed.admin_access_key, weed.admin_secret_key,
                        self._settings.s3_region)

    def owner_access(self, email: str, token: str, stored: Optional[S3Keys] = None) -> S3Access:
        """The user's own identity (e-mail, token): only the buckets of its prefix."""
        return S3Access(self.endpoint_url, email, token, self._settings.s3_region)

    @property
    def seaweed(self) -> SeaweedFS:
        """The supervised SeaweedFS (ports, pid, log)."""
        return self._seaweed()

    def describe(self) -> str:
        weed = self._weed
        state = f"pid {weed.pid}" if weed is not None and weed.is_running() else "not running"
        if weed is not None and weed.restarts:
            state += f", restarted {weed.restarts} time{'s' if weed.restarts > 1 else ''}"
        front = (f"; qarnot SDK front at {self.qarnot_sdk_endpoint_url}"
                 if self._front is not None else "")
        if self._relay is not None:
            state += f", relayed from {weed.endpoint_url}"
        return (f"embedded SeaweedFS ({state}) at {self.endpoint_url}, data in "
                f"{weed.data_dir if weed else '?'}{front}")

    def start(self) -> None:
        weed, settings = self._seaweed(), self._settings
        try:
            if settings.beyond_loopback and self._relay is None:  # first: s3_port is taken
                relay = TcpRelay(settings.host, settings.s3_port, ("127.0.0.1", weed.s3_port))
                relay.start()
                self._relay = relay
            weed.start()
            if settings.s3_front and self._front is None:
                front = S3Front(weed.endpoint_url, port=self._front_port(),
                                host=settings.host if settings.beyond_loopback else "127.0.0.1",
                                make_bucket=weed.make_bucket)
                front.start()
                self._front = front
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
        if self._front is not None:
            self._front.stop()
            self._front = None
        if self._weed is not None:
            self._weed.stop()

    def is_running(self) -> bool:
        return self._weed is not None and self._weed.is_running()

    def check(self) -> Optional[str]:
        """The supervisor's word first (restarting, down past the limit), then the S3 front,
        then the probe."""
        problem = self._weed.problem() if self._weed is not None else "SeaweedFS is not started"
        if not problem and self._settings.beyond_loopback and not (
                self._relay is not None and self._relay.is_running()):
            problem = f"the S3 relay on {self._settings.host} is not running"
        if not problem and self._settings.s3_front and not (
                self._front is not None and self._front.is_running()):
            problem = "the S3 front of the qarnot SDK is not running"
        return problem or super().check()

    def _front_port(self) -> int:
        """The configured port, else the previous start's if still free, else a new one; kept
        in ``<data_dir>/s3-front.port`` so that the front's URL survives restarts."""
        if self._settings.s3_front_port:
            return self._settings.s3_front_port
        path = Path(self._settings.data_dir) / "s3-front.port"
        try:
            saved = int(path.read_text())
            if port_is_free(saved):
                return saved
        except (OSError, ValueError):
            pass
        port = pick_free_port(exclude={self._settings.s3_port})
        path.write_text(str(port))
        return port

    def _weed_s3_port(self) -> int:
        """``s3_port``, unless the relay serves it beyond loopback: then a loopback port of
        SeaweedFS's own, kept in ``<data_dir>/s3-loopback.port`` (``host`` may be 0.0.0.0,
        which takes ``s3_port`` on 127.0.0.1 too)."""
        settings = self._settings
        if not settings.beyond_loopback:
            return settings.s3_port
        path = Path(settings.data_dir) / "s3-loopback.port"
        try:
            saved = int(path.read_text())
            if port_is_free(saved):
                return saved
        except (OSError, ValueError):
            pass
        port = pick_free_port(exclude={settings.s3_port, settings.s3_front_port})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(port))
        return port

    def prepare_result_bucket(self, name: str) -> None:
        """SeaweedFS creates a missing bucket at a task's first upload, except when its
        CreateBucket refuses the name (``meshroomOut``): such a bucket is made now if missing."""
        if not _S3_NAME.fullmatch(name):
            self._seaweed().make_bucket(name)

    def provision_user(self, email: str, token: str,
                       bucket_prefix: Optional[str]) -> Optional[S3Keys]:
        self._seaweed().configure_identity(email, email, token, bucket_prefix)
        return None

    def remove_user(self, email: str) -> None:
        self._seaweed().delete_identity(email)

    def _seaweed(self) -> SeaweedFS:
        if self._weed is None:
            access, secret = self._admin_keys()
            settings = self._settings
            self._weed = SeaweedFS(settings.data_dir / "s3", self._weed_s3_port(), access, secret,
                                   restarts=RestartPolicy(
                                       settings.s3_restart_limit,
                                       settings.s3_restart_window_seconds,
                                       settings.s3_restart_backoff_seconds,
                                       max(30.0, settings.s3_restart_backoff_seconds)))
        return self._weed

    def _admin_keys(self) -> tuple[str, str]:
        settings = self._settings
        if settings.s3_admin_access_key or settings.s3_admin_secret_key:
            if not (settings.s3_admin_access_key and settings.s3_admin_secret_key):
                raise ValueError("set both s3_admin_access_key and s3_admin_secret_key, or neither")
            return settings.s3_admin_access_key, settings.s3_admin_secret_key
        path = Path(settings.data_dir) / "s3-admin.json"
        if path.exists():
            keys = json.loads(path.read_text())
            return keys["access_key"], keys["secret_key"]
        access, secret = "qcompute-admin-" + secrets.token_hex(6), secrets.token_urlsafe(30)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"access_key": access, "secret_key": secret}, handle)
        return access, secret


def make_storage(settings: ServerSettings) -> StorageBackend:
    """The storage backend ``settings.storage`` names."""
    if settings.storage == "external":
        from .external import ExternalStorage

        return ExternalStorage(settings)
    return EmbeddedStorage(settings)
