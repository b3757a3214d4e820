"""Snapshot requests (reference §1.3): ``POST /tasks/{uuid}/snapshot[/periodic]``."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import AfterValidator, Field, StrictInt, field_validator

from qcompute._objects import check_bucket_name

from .common import MAX_SECONDS, Text, Wire, shown
from .tasks import Regex

__all__ = ["SnapshotConfig", "PeriodicSnapshot", "MAX_KEY_BYTES"]

MAX_KEY_BYTES = 1024  # S3's limit on an object key (UTF-8 bytes)


def _key_prefix(prefix: str) -> str:
    """A prefix of result keys must leave room for a file name under S3's key limit."""
    if len(prefix.encode()) >= MAX_KEY_BYTES:
        raise ValueError(f"{shown(prefix)} is {len(prefix.encode())} bytes: every result key "
                         f"under it would pass S3's limit of {MAX_KEY_BYTES} bytes")
    return prefix


class SnapshotConfig(Wire):
    """Which files go where; null fields take the task's defaults."""

    whitelist: Optional[Regex] = None
    blacklist: Optional[Regex] = None
    bucket: Optional[str] = None
    bucket_prefix: Optional[Annotated[Text, AfterValidator(_key_prefix)]] = None

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: Optional[str]) -> Optional[str]:
        return check_bucket_name(value) if value else None


class PeriodicSnapshot(SnapshotConfig):
    interval: StrictInt = Field(gt=0, le=MAX_SECONDS)  # seconds
