"""Every start: the data dir made private, the cluster's instance id, the owner account, and the
client config file that `qcompute up` hands out."""
from __future__ import annotations

import configparser
import logging
import os
import uuid
from pathlib import Path
from typing import Optional

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .services.users import (create_user, get_owner, hash_token, list_users, remember_token,
                             rotate_token, set_storage_keys, storage_keys)
from .settings import ServerSettings

log = logging.getLogger(__name__)

CLIENT_CONFIG_NAME = "qcompute.conf"
INSTANCE_ID_NAME = "instance-id"


def ensure_instance_id(settings: ServerSettings) -> str:
    """The cluster's instance id: a random id made on the data dir's first start and kept there.
    ``GET /health`` carries it, so that ``qcompute up`` tells its own server from another."""
    path = settings.data_dir / INSTANCE_ID_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        instance = uuid.uuid4().hex
        path.write_text(instance + "\n")
        return instance


def make_private(settings: ServerSettings) -> None:
    """The data dir gets mode 0700 and a SQLite database file 0600 (made empty with that mode
    when new, so that SQLite gives its WAL and shared-memory files the same)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.data_dir.chmod(0o700)
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") \
            or url.query.get("uri"):
        return
    path = Path(url.database)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        if name.exists() and name.stat().st_mode & 0o077:
            name.chmod(0o600)
            log.info("made %s private (mode 0600)", name)


def client_config_path(settings: ServerSettings) -> Path:
    return settings.data_dir / CLIENT_CONFIG_NAME


def read_token(path: Path) -> Optional[str]:
    parser = configparser.ConfigParser()
    parser.read(path)
    return parser.get("client", "token", fallback=None)


def write_client_config(path: Path, *, cluster_url: str, token: str,
                        storage_url: Optional[str]) -> None:
    """Write an INI file in Qarnot's format, readable by the official SDK too (mode 0600).

    Without ``storage_url`` the SDKs ask the cluster (``GET /settings``)."""
    parser = configparser.ConfigParser()
    parser["cluster"] = {"url": cluster_url}
    parser["client"] = {"token": token}
    if storage_url:
        parser["storage"] = {"url": storage_url}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        parser.write(fh)
    os.replace(tmp, path)


def ensure_owner(sessions: sessionmaker[Session], settings: ServerSettings, storage) -> str:
    """The owner's token: created on first start, read back from the client config after.

    If the config file was lost, the owner's token is rotated (only its hash is stored)."""
    path = client_config_path(settings)
    with sessions() as session:
        owner = get_owner(session)
        token = read_token(path) if path.exists() else None
        if owner is None:
            owner, token = create_user(session, settings.default_user_email, owner=True)
            log.info("created the owner account %s", owner.email)
        elif token is None or hash_token(token) != owner.token_hash:
            owner, token = rotate_token(session, owner.email)
            log.warning("the owner's token was not found in %s: issued a new one", path)
        else:
            remember_token(session, owner, token)  # an owner made before tokens were sealed
        # Idempotent; survives S3 data loss. The other users: ensure_storage_keys.
        keys = storage.ensure_user(owner.email, token, None, storage_keys(session, owner))
        if keys is not None:
            set_storage_keys(session, owner, keys)
        session.commit()
        # No [storage] url: each SDK asks GET /settings, which hands the official qarnot SDK
        # the S3 front (CreateBucket of an owned bucket is a 200) and qcompute's SDK SeaweedFS.
        write_client_config(path, cluster_url=settings.advertised_url, token=token, storage_url=None)
        return token


def ensure_storage_keys(sessions: sessionmaker[Session], storage) -> None:
    """On a store that issues keys (external, IAM): give each user that has none (made before
    the cluster moved to this store) its identity and keys, one commit per user."""
    if not getattr(storage, "issues_keys", False):
        return
    with sessions() as session:
        for user in list_users(session):
            if storage_keys(session, user) is None:
                keys = storage.ensure_user(user.email, "", user.bucket_prefix or None, None)
                set_storage_keys(session, user, keys)
                session.commit()
                log.info("gave %s its keys on the external S3 store", user.email)
