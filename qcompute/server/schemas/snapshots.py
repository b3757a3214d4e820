"""Snapshot requests (reference §1.3): ``POST /tasks/{uuid}/snapshot[/periodic]``."""
from __future__ import annotations

from typing import Optional

from pydantic import Field, StrictInt, field_validator

from qcompute._objects import check_bucket_name

from .common import Wire
from .tasks import _check_regex

__all__ = ["SnapshotConfig", "PeriodicSnapshot"]


class SnapshotConfig(Wire):
    """Which files go where; null fields take the task's defaults."""

    whitelist: Optional[str] = None
    blacklist: Optional[str] = None
    bucket: Optional[str] = None
    bucket_prefix: Optional[str] = Field(default=None, max_length=1024)

    _regexes = field_validator("whitelist", "blacklist")(lambda cls, v: _check_regex(v))

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: Optional[str]) -> Optional[str]:
        return check_bucket_name(value) if value else None


class PeriodicSnapshot(SnapshotConfig):
    interval: StrictInt = Field(gt=0, le=10 * 365 * 86400)  # seconds
