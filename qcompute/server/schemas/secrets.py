"""Secrets on the wire: keys, values, and the ``secretsAccessRights`` / ``privileges`` documents
of tasks and pools (reference §1.3 Secrets, §1.5).

Keys are paths (``db/password``): segments of letters, digits, ``.``, ``_`` and ``-`` joined by
single ``/``; ``/`` is stripped from both ends first, as the official SDK does; ``.`` and ``..``
segments are refused (HTTP clients rewrite them in URLs).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

__all__ = ["MAX_KEY_LENGTH", "MAX_VALUE_BYTES", "normalise_key", "normalise_prefix",
           "check_value", "SecretValue", "SecretsAccessRights", "Privileges"]

MAX_KEY_LENGTH = 1024  # the column's size
MAX_VALUE_BYTES = 64 * 1024  # UTF-8 bytes
_SEGMENT = r"[A-Za-z0-9._-]+"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*", re.ASCII)
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*", re.ASCII)


def normalise_key(key: str) -> str:
    """The key with ``/`` stripped from both ends; ValueError if it is not a valid key."""
    key = key.strip("/")
    if not key:
        raise ValueError("a secret key cannot be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"a secret key is at most {MAX_KEY_LENGTH} characters long")
    if not _KEY.fullmatch(key) or any(s in (".", "..") for s in key.split("/")):
        raise ValueError(f"invalid secret key {key!r}: use letters, digits, '.', '_' and '-', "
                         "in segments joined by single '/' ('.' and '..' are not segments)")
    return key


def normalise_prefix(prefix: str) -> str:
    """An access-right prefix: a plain string prefix of keys (leading ``/`` dropped; may be
    empty, which grants every secret)."""
    prefix = prefix.lstrip("/")
    if len(prefix) > MAX_KEY_LENGTH or not _PREFIX.fullmatch(prefix):
        raise ValueError(f"invalid secret prefix {prefix!r}: use letters, digits, "
                         "'.', '_', '-' and '/'")
    return prefix


def check_value(value: Any) -> str:
    """A secret value: a string of at most MAX_VALUE_BYTES bytes, with no NUL (it must fit in
    an environment variable)."""
    if not isinstance(value, str):
        raise ValueError("the secret value must be a string")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValueError(f"the secret value is larger than {MAX_VALUE_BYTES} bytes")
    if "\x00" in value:
        raise ValueError("the secret value cannot contain a NUL character")
    return value


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class SecretValue(BaseModel):
    """``PUT``/``PATCH /secrets-manager/data/{key}`` body (``value`` is accepted too)."""

    value: str = Field(alias="Value", max_length=MAX_VALUE_BYTES)


def _valid(normalise: Callable[[str], str]) -> Callable[[Any, str], str]:
    """A validator that checks with ``normalise`` but keeps the value as sent (it is echoed
    back, and a client's ``PUT`` of the same document must match it)."""
    def check(cls: Any, value: str) -> str:
        normalise(value)
        return value
    return check


class _ByKey(_Wire):
    key: str

    _key = field_validator("key")(_valid(normalise_key))


class _ByPrefix(_Wire):
    prefix: str

    _prefix = field_validator("prefix")(_valid(normalise_prefix))


class SecretsAccessRights(_Wire):
    """``{"bySecret": [{"key"}], "byPrefix": [{"prefix"}]}``: the secrets a payload receives."""

    by_secret: Optional[list[_ByKey]] = Field(default=None, max_length=1000)
    by_prefix: Optional[list[_ByPrefix]] = Field(default=None, max_length=1000)


class Privileges(_Wire):
    """``{"exportApiAndStorageCredentialsInEnvironment": bool}``."""

    export_api_and_storage_credentials_in_environment: Optional[bool] = None
