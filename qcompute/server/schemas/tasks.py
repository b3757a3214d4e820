"""Task documents as submitted. Unknown keys are kept and echoed back, as the dialect expects."""
from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from qcompute._objects import check_bucket_name

from .common import Dependencies, RetrySettings, parse_timespan
from .secrets import Privileges, SecretsAccessRights


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Constant(_Wire):
    key: str = Field(min_length=1, max_length=256)
    value: Optional[str] = ""

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_to_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float, bool)) else value


class _Prefix(_Wire):
    prefix: str = ""


class _PrefixFiltering(_Wire):
    prefix_filtering: Optional[_Prefix] = None


class _StripPrefix(_Wire):
    strip_prefix: Optional[_Prefix] = None


class AdvancedBucket(_Wire):
    bucket_name: str
    filtering: Optional[_PrefixFiltering] = None
    resources_transformation: Optional[_StripPrefix] = None
    cache_ttl_sec: Optional[int] = Field(default=None, alias="cacheTTLSec")

    _name = field_validator("bucket_name")(lambda cls, v: check_bucket_name(v))


def _check_regex(value: Optional[str]) -> Optional[str]:
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


class TaskSubmit(_Wire):
    """``POST /tasks``: one task document (reference §1.5)."""

    name: str = Field(min_length=1, max_length=512)
    shortname: Optional[str] = Field(default=None, max_length=512)
    profile: Optional[str] = None
    pool_uuid: Optional[str] = None
    job_uuid: Optional[str] = None
    instance_count: Optional[int] = Field(default=None, ge=0)
    advanced_ranges: Optional[str] = None
    constants: Optional[list[Constant]] = None
    tags: Optional[list[str]] = None
    labels: Optional[dict[str, str]] = None
    advanced_resource_buckets: Optional[list[AdvancedBucket]] = None
    resource_buckets: Optional[list[str]] = None  # legacy plain names
    result_bucket: Optional[str] = None
    results_whitelist: Optional[str] = None
    results_blacklist: Optional[str] = None
    upload_results_on_cancellation: Optional[bool] = None
    snapshot_whitelist: Optional[str] = None  # snapshots' defaults (services.snapshots)
    snapshot_blacklist: Optional[str] = None
    hardware_constraints: Optional[list[dict[str, Any]]] = None  # services.hardware
    secrets_access_rights: Optional[SecretsAccessRights] = None
    privileges: Optional[Privileges] = None
    retry_settings: Optional[RetrySettings] = None
    max_retries_per_instance: Optional[int] = Field(default=None, ge=0, le=1000)  # legacy
    max_time_queue_seconds: Optional[int] = Field(default=None, ge=1)
    auto_delete_on_completion: Optional[bool] = None
    completion_time_to_live: Optional[str] = None
    dependencies: Optional[Dependencies] = None
    wait_for_pool_resources_synchronization: Optional[bool] = None

    _regexes = field_validator("results_whitelist", "results_blacklist", "snapshot_whitelist",
                               "snapshot_blacklist")(lambda cls, v: _check_regex(v))

    @field_validator("completion_time_to_live")
    @classmethod
    def _timespan(cls, value: Optional[str]) -> Optional[str]:
        if value:
            parse_timespan(value)
        return value

    @field_validator("result_bucket")
    @classmethod
    def _result_bucket_name(cls, value: Optional[str]) -> Optional[str]:
        return check_bucket_name(value) if value else None

    @field_validator("resource_buckets")
    @classmethod
    def _resource_bucket_names(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        return [check_bucket_name(v) for v in value] if value else value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: Optional[list[str]]) -> Optional[list[str]]:
        for tag in value or ():
            if not tag or len(tag) > 256:
                raise ValueError("tags must be 1 to 256 characters long")
        return value


class TaskUpdate(_Wire):
    """``PUT /tasks/{uuid}``: the whole document; only the mutable fields may differ."""

    name: Optional[str] = Field(default=None, min_length=1, max_length=512)
    shortname: Optional[str] = Field(default=None, max_length=512)
    tags: Optional[list[str]] = None
    labels: Optional[dict[str, str]] = None

    _tags = field_validator("tags")(lambda cls, v: TaskSubmit._tags(v))


class PageRequest(_Wire):
    """``POST /tasks/paginate``: ``{"filter", "token", "maximumResults"}``."""

    filter: Optional[dict[str, Any]] = None
    token: Optional[str] = None
    maximum_results: Optional[int] = Field(default=None, ge=1, le=1000)


class WaitRequest(_Wire):
    """``POST /tasks/wait``: hold until all (or any) of these tasks are final, or the timeout."""

    uuids: list[str] = Field(min_length=1, max_length=10_000)
    return_when: Literal["ALL", "ANY"] = "ALL"
    timeout: float = Field(default=30.0, ge=0)
