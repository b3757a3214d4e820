"""An S3 store run by someone else (``storage = external``): the server starts nothing, uses the
store's admin keys, and gives each user a key pair limited to the buckets of its prefix.

Where the users' keys come from (``s3_user_keys``):

* ``iam``: the store's IAM API (``s3_iam_url``, else ``s3_url``: SeaweedFS serves IAM on its S3
  port with ``-iam.readOnly=false``). Each user gets an IAM user (:func:`iam_user_name`), an
  inline policy allowing ``s3:*`` on ``arn:aws:s3:::<prefix>*`` and its objects (the owner: on
  every bucket), and one access key, made anew at each (re)provisioning, the old ones deleted.
  The server keeps the pair in the database, the secret sealed (``users.set_storage_keys``).
* ``file``: ``s3_keys_file``, JSON ``{email: {"accessKey": ..., "secretKey": ...}}``, written by
  the operator, who scopes each pair to the user's bucket prefix (shown by ``qcompute user
  add``; the owner's: any bucket). Read again when it changes.

The user's keys replace the Qarnot convention (access key = e-mail, secret key = token): runners
and exported credentials use them, and ``GET /info`` hands them to qcompute's SDK as
``storageKeys``. The official ``qarnot`` SDK always signs S3 with the e-mail and the token, which
such a store does not know: its storage calls are refused (docs/external-s3.rst). The S3 front
(``s3front.py``) exists for SeaweedFS's answers as the embedded store; it is not started here.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Optional

from qcompute.server.crypto import SealError
from qcompute.server.executors.base import S3Access
from qcompute.server.settings import ServerSettings

from . import S3Keys, StorageBackend

__all__ = ["ExternalStorage", "NoStorageKeys", "iam_user_name", "bucket_policy"]

log = logging.getLogger(__name__)

POLICY_NAME = "qcompute-buckets"
_IAM_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)


class NoStorageKeys(SealError):
    """The server holds no S3 keys for a user: it cannot act as that user on the store."""


def iam_user_name(email: str) -> str:
    """``qcompute-<email>`` where IAM takes it (64 characters of ``[\\w+=,.@-]``), else
    ``qcompute-<hash of the e-mail>``."""
    name = f"qcompute-{email}"
    if _IAM_NAME.fullmatch(name):
        return name
    return "qcompute-" + hashlib.sha256(email.encode()).hexdigest()[:32]


def bucket_policy(bucket_prefix: Optional[str]) -> str:
    """Every S3 action on the buckets starting with ``bucket_prefix`` and their objects (None:
    every bucket)."""
    pattern = f"arn:aws:s3:::{bucket_prefix or ''}*"
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": ["s3:*"], "Resource": [pattern, f"{pattern}/*"]}]})


class ExternalStorage(StorageBackend):
    """The store at ``settings.s3_url``, reached with ``s3_admin_access_key``/``_secret_key``."""

    def __init__(self, settings: ServerSettings) -> None:
        missing = [name for name in ("s3_url", "s3_admin_access_key", "s3_admin_secret_key")
                   if not getattr(settings, name)]
        if missing:
            raise ValueError("external storage needs " + ", ".join(
                f"{name} (QCOMPUTE_SERVER_{name.upper()})" for name in missing))
        if settings.s3_user_keys == "file" and not settings.s3_keys_file:
            raise ValueError("s3_user_keys = file needs s3_keys_file "
                             "(QCOMPUTE_SERVER_S3_KEYS_FILE)")
        super().__init__()
        self._settings = settings
        self._iam_client: Any = None
        self._file_lock = threading.Lock()
        self._file_keys: dict[str, S3Keys] = {}
        self._file_stamp: Optional[tuple[int, int]] = None

    @property
    def endpoint_url(self) -> str:
        return self._settings.s3_url.rstrip("/")

    @property
    def iam_url(self) -> str:
        return (self._settings.s3_iam_url or self._settings.s3_url).rstrip("/")

    @property
    def issues_keys(self) -> bool:
        return self._settings.s3_user_keys == "iam"

    @property
    def admin_access(self) -> S3Access:
        s = self._settings
        return S3Access(self.endpoint_url, s.s3_admin_access_key, s.s3_admin_secret_key,
                        s.s3_region)

    def describe(self) -> str:
        keys = (f"users' keys from IAM at {self.iam_url}" if self.issues_keys
                else f"users' keys from {self._settings.s3_keys_file}")
        return f"external S3 at {self.endpoint_url} ({keys})"

    def start(self) -> None:
        """Nothing to start; the store is probed by ``check()`` (``/health``)."""

    def stop(self) -> None:
        pass

    def is_running(self) -> bool:
        return True

    # -- users' keys ---------------------------------------------------------------------------

    def user_keys(self, email: str, stored: Optional[S3Keys]) -> Optional[S3Keys]:
        if self.issues_keys:
            return stored
        return self._read_file().get(email)

    def owner_access(self, email: str, token: str, stored: Optional[S3Keys] = None) -> S3Access:
        keys = self.user_keys(email, stored)
        if keys is None:
            where = ("none was issued by the store's IAM API" if self.issues_keys else
                     f"{self._settings.s3_keys_file} has no entry for it")
            raise NoStorageKeys(f"the server holds no S3 keys for {email} on the external "
                                f"store: {where}")
        return S3Access(self.endpoint_url, keys[0], keys[1], self._settings.s3_region)

    def provision_user(self, email: str, token: str,
                       bucket_prefix: Optional[str]) -> Optional[S3Keys]:
        if not self.issues_keys:
            if email not in self._read_file():
                log.warning("external S3: %s has no keys in %s yet: the operator adds a pair "
                            "limited to buckets starting with %r", email,
                            self._settings.s3_keys_file, bucket_prefix or "")
            return None
        iam, name = self._iam(), iam_user_name(email)
        try:
            iam.create_user(UserName=name)
        except iam.exceptions.EntityAlreadyExistsException:
            pass
        iam.put_user_policy(UserName=name, PolicyName=POLICY_NAME,
                            PolicyDocument=bucket_policy(bucket_prefix))
        self._delete_keys(name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        log.info("external S3: IAM user %s has a new key %s (buckets %s*)", name,
                 key["AccessKeyId"], bucket_prefix or "")
        return key["AccessKeyId"], key["SecretAccessKey"]

    def ensure_user(self, email: str, token: str, bucket_prefix: Optional[str],
                    stored: Optional[S3Keys]) -> Optional[S3Keys]:
        """Keys are issued once (at ``user add``, or at the first start on this store)."""
        if self.issues_keys and stored is not None:
            return None
        return self.provision_user(email, token, bucket_prefix)

    def remove_user(self, email: str) -> None:
        if not self.issues_keys:
            log.info("external S3: the operator revokes the keys of %s in %s", email,
                     self._settings.s3_keys_file)
            return
        iam, name = self._iam(), iam_user_name(email)
        self._delete_keys(name)
        for call in (lambda: iam.delete_user_policy(UserName=name, PolicyName=POLICY_NAME),
                     lambda: iam.delete_user(UserName=name)):
            try:
                call()
            except iam.exceptions.NoSuchEntityException:
                pass

    def _delete_keys(self, name: str) -> None:
        iam = self._iam()
        try:
            keys = iam.list_access_keys(UserName=name)["AccessKeyMetadata"]
        except iam.exceptions.NoSuchEntityException:
            return
        for key in keys:
            iam.delete_access_key(UserName=name, AccessKeyId=key["AccessKeyId"])

    def _iam(self) -> Any:
        if self._iam_client is None:
            import boto3
            from botocore.config import Config

            admin = self.admin_access
            self._iam_client = boto3.session.Session().client(
                "iam", endpoint_url=self.iam_url, aws_access_key_id=admin.access_key,
                aws_secret_access_key=admin.secret_key, region_name=admin.region,
                config=Config(connect_timeout=5, read_timeout=30,
                              retries={"mode": "standard", "total_max_attempts": 3}))
        return self._iam_client

    def _read_file(self) -> dict[str, S3Keys]:
        """The operator's file, read again when its size or mtime changed; ValueError if it
        cannot be read or is not ``{email: {"accessKey", "secretKey"}}``."""
        path = Path(self._settings.s3_keys_file or "")
        with self._file_lock:
            try:
                stat = path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._file_stamp:
                    self._file_keys = _parse_keys(json.loads(path.read_text()), path)
                    self._file_stamp = stamp
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"cannot read the S3 keys file {path}: {exc}") from None
            return self._file_keys


def _parse_keys(doc: Any, path: Path) -> dict[str, S3Keys]:
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must hold a JSON object {{email: {{accessKey, secretKey}}}}")
    keys = {}
    for email, pair in doc.items():
        if not (isinstance(pair, dict) and isinstance(pair.get("accessKey"), str)
                and isinstance(pair.get("secretKey"), str)
                and pair["accessKey"] and pair["secretKey"]):
            raise ValueError(f"{path}: the entry of {email!r} needs accessKey and secretKey "
                             "(non-empty strings)")
        keys[email] = (pair["accessKey"], pair["secretKey"])
    return keys
