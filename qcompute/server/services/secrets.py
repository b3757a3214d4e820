"""Secrets: each user's key/value store (``/secrets-manager``), what a task or pool may read of
it (``secretsAccessRights``), and what reaches the payload's environment.

Every query is scoped by owner: another user's secret is a 404. Services validate and write;
they never commit. Values are stored sealed (``crypto.py``) and opened when they are read.

**Environment.** Each granted secret is exported as ``QARNOT_SECRET__<NAME>``, where ``NAME``
is the key upper-cased with every character outside ``[A-Za-z0-9_]`` replaced by ``_``
(``db/password`` gives ``QARNOT_SECRET__DB_PASSWORD``). If two granted keys give the same name,
the key that sorts last wins. With ``privileges.exportApiAndStorageCredentialsInEnvironment``
the payload also gets the API and S3 credentials (see :func:`credentials_env`). Values are read
when an instance is dispatched, so an updated secret reaches the instances started after it.
All these values are masked in the task's output (see :mod:`.masking`).
"""
from __future__ import annotations

import re
from typing import Any, Optional

from sqlalchemy import or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..crypto import seal, unseal
from ..db.models import Secret, User, utcnow
from ..errors import BadRequest, Conflict, NotFound
from ..schemas.secrets import check_value, normalise_key

__all__ = ["ENV_PREFIX", "get_secret", "secret_value", "create_secret", "update_secret",
           "delete_secret", "search_secrets", "read_value", "granted_secrets", "secret_env_name",
           "secrets_env", "credentials_env", "exports_credentials", "payload_env"]

ENV_PREFIX = "QARNOT_SECRET__"


def _key(key: str) -> str:
    try:
        return normalise_key(key)
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_secret_key") from None


def read_value(body: Any) -> str:
    """The value of a ``{"Value": ...}`` body (``{"value": ...}`` is accepted too)."""
    if not isinstance(body, dict) or not ({"Value", "value"} & body.keys()):
        raise BadRequest('the body must be {"Value": "<the secret>"}', code="missing_value")
    try:
        return check_value(body["Value"] if "Value" in body else body["value"])
    except ValueError as exc:
        raise BadRequest(str(exc), code="invalid_secret_value") from None


def _find(session: Session, user: User, key: str) -> Optional[Secret]:
    return session.scalar(select(Secret).where(Secret.owner_id == user.id, Secret.key == key))


def get_secret(session: Session, user: User, key: str) -> Secret:
    key = _key(key)
    secret = _find(session, user, key)
    if secret is None:
        raise NotFound(f"secret {key!r} not found", code="secret_not_found")
    return secret


def secret_value(session: Session, user: User, key: str) -> str:
    return unseal(session, get_secret(session, user, key).value)


def create_secret(session: Session, user: User, key: str, value: str) -> Secret:
    """A new secret; 409 if the key is taken (also when a concurrent create won the race)."""
    key = _key(key)
    taken = Conflict(f"secret {key!r} already exists: update it with PATCH",
                     code="secret_exists")
    if _find(session, user, key) is not None:
        raise taken
    now = utcnow()
    secret = Secret(owner_id=user.id, key=key, value=seal(session, value), created_at=now,
                    updated_at=now)
    try:
        with session.begin_nested():
            session.add(secret)
    except IntegrityError:
        raise taken from None
    return secret


def update_secret(session: Session, user: User, key: str, value: str) -> Secret:
    secret = get_secret(session, user, key)
    secret.value, secret.updated_at = seal(session, value), utcnow()
    return secret


def delete_secret(session: Session, user: User, key: str) -> str:
    secret = get_secret(session, user, key)
    session.delete(secret)
    return secret.key


def search_secrets(session: Session, user: User, prefix: str) -> list[str]:
    """The keys one level under the folder ``prefix`` (``""``: the top), relative to it;
    deeper keys give their first folder, with a trailing ``/`` (``["a", "sub/"]``)."""
    prefix = _key(prefix) if prefix.strip("/") else ""
    folder = f"{prefix}/" if prefix else ""
    query = select(Secret.key).where(Secret.owner_id == user.id)
    if folder:
        query = query.where(Secret.key.startswith(folder, autoescape=True))
    entries = set()
    for key in session.scalars(query):
        head, sep, _ = key[len(folder):].partition("/")
        entries.add(head + sep)
    return sorted(entries)


# -- what a payload receives -------------------------------------------------------------------

def granted_secrets(session: Session, owner_id: int,
                    rights: Optional[dict[str, Any]]) -> dict[str, str]:
    """``{key: value}`` of the owner's secrets that a ``secretsAccessRights`` document grants
    (``bySecret``: exact keys; ``byPrefix``: keys starting with the prefix string, ``""`` for
    all). Keys that do not exist are skipped."""
    if not isinstance(rights, dict):
        return {}
    keys = [r["key"].strip("/") for r in rights.get("bySecret") or ()
            if isinstance(r, dict) and isinstance(r.get("key"), str)]
    prefixes = [r["prefix"].lstrip("/") for r in rights.get("byPrefix") or ()
                if isinstance(r, dict) and isinstance(r.get("prefix"), str)]
    conditions = [Secret.key.startswith(p, autoescape=True) if p else true() for p in prefixes]
    if keys:
        conditions.append(Secret.key.in_(keys))
    if not conditions:
        return {}
    rows = session.execute(select(Secret.key, Secret.value).where(
        Secret.owner_id == owner_id, or_(*conditions)))
    return {key: unseal(session, value) for key, value in rows}


def secret_env_name(key: str) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", key).upper()


def secrets_env(granted: dict[str, str]) -> dict[str, str]:
    return {secret_env_name(key): granted[key] for key in sorted(granted)}


def credentials_env(*, api_url: str, token: str, email: str, storage_url: Optional[str],
                    region: str = "us-east-1",
                    s3_keys: Optional[tuple[str, str]] = None) -> dict[str, str]:
    """What ``exportApiAndStorageCredentialsInEnvironment`` exports: the API URL and token
    (``QARNOT_*`` and ``QCOMPUTE_*`` names, which the SDKs read), and the S3 endpoint and keys
    (``s3_keys``, by default the e-mail as access key and the token as secret key; ``AWS_*``
    names, which boto3 and the AWS CLI read)."""
    access_key, secret_key = s3_keys or (email, token)
    env = {"QARNOT_CLUSTER_URL": api_url, "QCOMPUTE_CLUSTER_URL": api_url,
           "QARNOT_CLIENT_TOKEN": token, "QCOMPUTE_CLIENT_TOKEN": token,
           "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
           "AWS_DEFAULT_REGION": region}
    if storage_url:
        env.update({"QARNOT_STORAGE_URL": storage_url, "QCOMPUTE_STORAGE_URL": storage_url,
                    "AWS_ENDPOINT_URL": storage_url})
    return env


def merge_rights(*rights: Optional[dict[str, Any]]) -> dict[str, list]:
    """``secretsAccessRights`` of a pool and of a task in it, together."""
    return {"bySecret": [r for each in rights if each for r in each.get("bySecret") or ()],
            "byPrefix": [r for each in rights if each for r in each.get("byPrefix") or ()]}


def exports_credentials(document: dict[str, Any]) -> bool:
    """Whether a task's (or pool's) document grants
    ``privileges.exportApiAndStorageCredentialsInEnvironment``."""
    privileges = document.get("privileges")
    return isinstance(privileges, dict) and \
        privileges.get("exportApiAndStorageCredentialsInEnvironment") is True


def payload_env(session: Session, *, owner_id: int, document: dict[str, Any],
                exported_token: Optional[str], api_url: str, storage_url: Optional[str],
                region: str = "us-east-1",
                s3: Optional[Any] = None) -> tuple[dict[str, str], list[str]]:
    """The environment a task's (or pool's) payload gets from its granted secrets and, given
    ``exported_token`` (the owner's token, when exported), its credentials, with the S3 keys of
    ``s3`` (the owner's ``S3Access``) when given; and the values to mask in its output."""
    granted = granted_secrets(session, owner_id, document.get("secretsAccessRights"))
    env, masked = secrets_env(granted), list(granted.values())
    if exported_token:
        owner = session.get(User, owner_id)
        if owner is not None:
            keys = (s3.access_key, s3.secret_key) if s3 is not None else None
            env.update(credentials_env(api_url=api_url, token=exported_token, email=owner.email,
                                       storage_url=storage_url, region=region, s3_keys=keys))
            masked.append(exported_token)
            if keys and keys[1] != exported_token:
                masked.append(keys[1])
    return env, masked
