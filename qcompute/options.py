"""Small option values shared by tasks and pools: retries, secrets access, privileges.

They are mutable: ``task.retry_settings.max_total_retries = 3`` is seen by ``submit()`` (and,
for a field that may change after submit, by ``commit()``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

__all__ = ["RetrySettings", "SecretsAccessRights", "Privileges"]


def _count(value: Any, what: str) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{what} must be an int >= 0 or None, got {value!r}")
    return value


@dataclass
class RetrySettings:
    """How often failed instances are run again (``retrySettings``).

    ``None`` or 0 for both means no retry; with both set, the stricter one applies.

    Attributes:
        max_total_retries: retries over all the instances of the task (or of a pool's task).
        max_per_instance_retries: retries of any one instance.
    """

    max_total_retries: Optional[int] = None
    max_per_instance_retries: Optional[int] = None

    def __post_init__(self) -> None:
        _count(self.max_total_retries, "max_total_retries")
        _count(self.max_per_instance_retries, "max_per_instance_retries")

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> "RetrySettings":
        doc = doc or {}
        return cls(doc.get("maxTotalRetries"), doc.get("maxPerInstanceRetries"))

    def to_json(self) -> dict[str, Optional[int]]:
        return {"maxTotalRetries": self.max_total_retries,
                "maxPerInstanceRetries": self.max_per_instance_retries}


@dataclass
class SecretsAccessRights:
    """Which secrets the payload may read (``secretsAccessRights``): by key and by prefix.

    The ``add_*`` methods return the object, so calls chain::

        task.secrets_access_rights = SecretsAccessRights().add_secret_by_key("db/pwd")
    """

    by_secret: list[str] = field(default_factory=list)
    by_prefix: list[str] = field(default_factory=list)

    def add_secret_by_key(self, key: str) -> "SecretsAccessRights":
        return self.add_secrets_by_keys([key])

    def add_secrets_by_keys(self, keys: Iterable[str]) -> "SecretsAccessRights":
        self.by_secret.extend(k for k in _texts(keys, "key") if k not in self.by_secret)
        return self

    def add_secret_by_prefix(self, prefix: str) -> "SecretsAccessRights":
        return self.add_secrets_by_prefixes([prefix])

    def add_secrets_by_prefixes(self, prefixes: Iterable[str]) -> "SecretsAccessRights":
        self.by_prefix.extend(p for p in _texts(prefixes, "prefix") if p not in self.by_prefix)
        return self

    def __bool__(self) -> bool:
        return bool(self.by_secret or self.by_prefix)

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> "SecretsAccessRights":
        doc = doc or {}
        return cls([s.get("key") for s in doc.get("bySecret") or ()],
                   [p.get("prefix") for p in doc.get("byPrefix") or ()])

    def to_json(self) -> Optional[dict[str, Any]]:
        """The wire form, or ``None`` when empty (the key is then not sent)."""
        if not self:
            return None
        return {"bySecret": [{"key": k} for k in self.by_secret],
                "byPrefix": [{"prefix": p} for p in self.by_prefix]}


@dataclass
class Privileges:
    """What the payload may receive (``privileges``).

    Attributes:
        export_credentials_in_environment: put the API and storage credentials in the
            payload's environment (``exportApiAndStorageCredentialsInEnvironment``).
    """

    export_credentials_in_environment: bool = False

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> "Privileges":
        return cls(bool((doc or {}).get("exportApiAndStorageCredentialsInEnvironment")))

    def to_json(self) -> dict[str, bool]:
        return {"exportApiAndStorageCredentialsInEnvironment":
                bool(self.export_credentials_in_environment)}


def _texts(values: Iterable[str], what: str) -> list[str]:
    items = [values] if isinstance(values, str) else list(values)
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"a secret {what} must be a non-empty string, got {item!r}")
    return items
