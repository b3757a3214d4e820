"""Secrets: values kept by the cluster and given to the tasks allowed to read them.

Keys are paths: ``"db/password"`` lives in the folder ``"db/"``. Reach the client through
``conn.secrets``::

    conn.secrets.create("db/password", "s3cr3t")
    conn.secrets.list("db", recursive=True)  # ["db/password"]

A task reads only the secrets its ``secrets_access_rights`` name (see
:class:`~qcompute.SecretsAccessRights`).
"""
from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .exceptions import SecretConflictException, SecretNotFoundException

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Secrets"]

_DATA = "/secrets-manager/data/"
_SEARCH = "/secrets-manager/search/"


def _key(key: str) -> str:
    if not isinstance(key, str) or not key.strip("/"):
        raise ValueError(f"a secret key must be a non-empty string, got {key!r}")
    return key.strip("/")


def _folder(prefix: str) -> str:
    """``"a/b"`` → ``"a/b/"``; ``""`` (or ``"/"``) → ``""``."""
    if not isinstance(prefix, str):
        raise ValueError(f"a secret prefix must be a string, got {prefix!r}")
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def _path(base: str, key: str) -> str:
    return base + quote(key, safe="/")


class Secrets:
    """The secrets of the account (``/secrets-manager/...``).

    Args:
        connection: the owning connection.
    """

    def __init__(self, connection: "Connection") -> None:
        self._conn = connection

    def __repr__(self) -> str:
        return f"<Secrets of {self._conn!r}>"

    def get(self, key: str) -> str:
        """The value of a secret: ``GET /secrets-manager/data/{key}``.

        Raises:
            SecretNotFoundException: no secret under ``key``.
        """
        reply: Any = self._conn._http.get(_path(_DATA, _key(key)),
                                          not_found=SecretNotFoundException)
        return str((reply or {}).get("value", ""))

    def create(self, key: str, value: str) -> str:
        """Create a secret: ``PUT /secrets-manager/data/{key}`` with ``{"Value": value}``.

        Returns:
            The key (without leading or trailing ``/``).

        Raises:
            SecretConflictException: a secret already exists under ``key``.
        """
        key = _key(key)
        self._conn._http.put(_path(_DATA, key), json={"Value": _value(value)},
                             conflict=SecretConflictException, not_found=SecretNotFoundException)
        return key

    def update(self, key: str, value: str) -> None:
        """Change a secret's value: ``PATCH /secrets-manager/data/{key}``.

        Raises:
            SecretNotFoundException: no secret under ``key``.
        """
        self._conn._http.patch(_path(_DATA, _key(key)), json={"Value": _value(value)},
                               not_found=SecretNotFoundException)

    def delete(self, key: str) -> None:
        """Delete a secret: ``DELETE /secrets-manager/data/{key}``.

        Raises:
            SecretNotFoundException: no secret under ``key``.
        """
        self._conn._http.delete(_path(_DATA, _key(key)), not_found=SecretNotFoundException)

    def list(self, prefix: str = "", recursive: bool = False) -> builtins.list[str]:
        """The keys in the folder ``prefix``: ``GET /secrets-manager/search/{prefix}``.

        The server answers with keys relative to the folder, sub-folders ending with ``/``.
        This returns full keys (``prefix/name``). Without ``recursive`` the sub-folders are
        listed as such (``prefix/sub/``); with it they are walked (one request per folder)
        and only secrets are returned. A folder that does not exist is empty.
        """
        folder = _folder(prefix)
        try:
            reply: Any = self._conn._http.get(_path(_SEARCH, folder),
                                              not_found=SecretNotFoundException)
        except SecretNotFoundException:
            return []
        keys: builtins.list[str] = []
        for name in (reply or {}).get("keys") or ():
            full = folder + str(name).lstrip("/")
            if recursive and full.endswith("/"):
                keys.extend(self.list(full, recursive=True))
            else:
                keys.append(full)
        return keys


def _value(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a secret value must be a string, got {type(value).__name__}")
    return value
