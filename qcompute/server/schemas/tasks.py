"""Task documents as submitted. Unknown keys are kept and echoed back, as the dialect expects."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, \
    model_validator
from pydantic.alias_generators import to_camel

from qcompute._objects import check_bucket_name

from .common import (MAX_INSTANCE_ID, MAX_LIST, MAX_SECONDS, Dependencies, Labels, Name,
                     ProfileName, RetrySettings, Seconds, ShortText, Tags, Text, TimeSpan,
                     UuidRef, bounded_text, shown)
from .secrets import Privileges, SecretsAccessRights

__all__ = ["Constant", "AdvancedBucket", "TaskSubmit", "TaskUpdate", "PageRequest",
           "WaitRequest", "ARG_STRLEN", "MAX_RANGE_TEXT", "MAX_FILTER_DEPTH",
           "MAX_FILTER_LEAVES", "MAX_FILTER_VALUES", "MAX_FILTER_TEXT", "MAX_PAGE_TOKEN",
           "Regex", "BucketName"]

ARG_STRLEN = 131072  # the kernel's MAX_ARG_STRLEN: one argument or "KEY=value", NUL included
MAX_RANGE_TEXT = 100_000  # characters of an advancedRanges string


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


def _env_name(key: str) -> str:
    if "=" in key:
        raise ValueError(f"{shown(key)} contains '=' (a constant becomes an environment "
                         "variable, whose name cannot hold '=')")
    return key


ConstantKey = bounded_text(256, 1)
KeyPrefix = bounded_text(1024)  # of S3 keys


class Constant(_Wire):
    """``{"key", "value"}``: exported to the instance's environment as ``key=value``."""

    key: Annotated[ConstantKey, AfterValidator(_env_name)]
    value: Optional[Text] = ""

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_to_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float, bool)) else value

    @model_validator(mode="after")
    def _fits_a_process(self) -> "Constant":
        size = len(self.key.encode()) + 1 + len((self.value or "").encode())
        if size >= ARG_STRLEN:
            raise ValueError(f"{self.key}=<value> is {size} bytes: no process can take an "
                             f"environment string of {ARG_STRLEN} bytes or more (the kernel's "
                             "MAX_ARG_STRLEN); pass large data as a resource file")
        return self


def _check_regex(value: Optional[str]) -> Optional[str]:
    if value:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"{shown(value)} is not a valid regular expression: {exc}") \
                from None
    return value


Regex = Annotated[bounded_text(4096), AfterValidator(_check_regex)]
BucketName = Annotated[str, Field(max_length=255), AfterValidator(check_bucket_name)]


class _Prefix(_Wire):
    prefix: KeyPrefix = ""


class _PrefixFiltering(_Wire):
    prefix_filtering: Optional[_Prefix] = None


class _StripPrefix(_Wire):
    strip_prefix: Optional[_Prefix] = None


class AdvancedBucket(_Wire):
    bucket_name: BucketName
    filtering: Optional[_PrefixFiltering] = None
    resources_transformation: Optional[_StripPrefix] = None
    cache_ttl_sec: Optional[Seconds] = Field(default=None, alias="cacheTTLSec")


class TaskSubmit(_Wire):
    """``POST /tasks``: one task document (reference §1.5). The server's own limits (instance
    count, constants' number and size) are checked by ``services.runnable``."""

    name: Name
    shortname: Optional[ShortText] = None
    profile: Optional[ProfileName] = None
    pool_uuid: Optional[UuidRef] = None
    job_uuid: Optional[UuidRef] = None
    instance_count: Optional[int] = Field(default=None, ge=0, le=MAX_INSTANCE_ID)
    advanced_ranges: Optional[str] = Field(default=None, max_length=MAX_RANGE_TEXT)
    constants: Optional[list[Constant]] = None
    tags: Optional[Tags] = None
    labels: Optional[Labels] = None
    advanced_resource_buckets: Optional[list[AdvancedBucket]] = Field(default=None,
                                                                      max_length=MAX_LIST)
    resource_buckets: Optional[list[BucketName]] = Field(default=None, max_length=MAX_LIST)
    result_bucket: Optional[str] = None
    results_whitelist: Optional[Regex] = None
    results_blacklist: Optional[Regex] = None
    upload_results_on_cancellation: Optional[bool] = None
    snapshot_whitelist: Optional[Regex] = None  # snapshots' defaults (services.snapshots)
    snapshot_blacklist: Optional[Regex] = None
    hardware_constraints: Optional[list[dict[str, Any]]] = Field(  # services.hardware
        default=None, max_length=100)
    secrets_access_rights: Optional[SecretsAccessRights] = None
    privileges: Optional[Privileges] = None
    retry_settings: Optional[RetrySettings] = None
    max_retries_per_instance: Optional[int] = Field(default=None, ge=0, le=1000)  # legacy
    max_time_queue_seconds: Optional[int] = Field(default=None, ge=1, le=MAX_SECONDS)
    auto_delete_on_completion: Optional[bool] = None
    completion_time_to_live: Optional[TimeSpan] = None
    dependencies: Optional[Dependencies] = None
    wait_for_pool_resources_synchronization: Optional[bool] = None

    @field_validator("result_bucket")
    @classmethod
    def _result_bucket_name(cls, value: Optional[str]) -> Optional[str]:
        return check_bucket_name(value) if value else None  # "" means none


class TaskUpdate(_Wire):
    """``PUT /tasks/{uuid}``: the whole document; only the mutable fields may differ."""

    name: Optional[Name] = None
    shortname: Optional[ShortText] = None
    tags: Optional[Tags] = None
    labels: Optional[Labels] = None


# Listing filters (services.listing): bounded so that any filter compiles to a query the
# database can run (SQLite refuses expressions more than 1000 deep).
MAX_FILTER_DEPTH = 32  # And/Or levels
MAX_FILTER_LEAVES = 256  # comparisons in one filter
MAX_FILTER_VALUES = 1000  # values of one In/NotIn
MAX_FILTER_TEXT = 1024  # characters of one value
MAX_PAGE_TOKEN = 2**63 - 1  # tokens are row ids


def _filter_value(value: Any, where: str) -> None:
    if isinstance(value, str) and len(value) > MAX_FILTER_TEXT:
        raise ValueError(f"{where}: a value is longer than {MAX_FILTER_TEXT} characters")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError(f"{where}: a value contains a NUL character")
    if isinstance(value, int) and not -MAX_PAGE_TOKEN <= value <= MAX_PAGE_TOKEN:
        raise ValueError(f"{where}: {value} is out of the 64-bit integer range")


def _filter_size(node: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """Refuse a filter too deep, with too many leaves, or too large values; what the filter
    means is checked where it is compiled (``services.listing``)."""
    if node is None:
        return None
    leaves = 0
    stack: list[tuple[Any, str, int]] = [(node, "", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_FILTER_DEPTH:
            raise ValueError(f"the filter is nested more than {MAX_FILTER_DEPTH} levels deep")
        children = item.get("filters") if isinstance(item, dict) else None
        if isinstance(children, list):
            stack.extend((child, f"{where}filters[{n}].", depth + 1)
                         for n, child in enumerate(children))
            continue
        leaves += 1
        if leaves > MAX_FILTER_LEAVES:
            raise ValueError(f"the filter has more than {MAX_FILTER_LEAVES} comparisons; "
                             "use In with a list of values")
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, list):
            if len(value) > MAX_FILTER_VALUES:
                raise ValueError(f"{where}value has more than {MAX_FILTER_VALUES} values")
            for element in value:
                _filter_value(element, f"{where}value")
        else:
            _filter_value(value, f"{where}value")
    return node


def _page_token(token: Optional[str]) -> Optional[str]:
    if token and not (re.fullmatch(r"[0-9]{1,19}", token, re.ASCII)
                      and int(token) <= MAX_PAGE_TOKEN):
        raise ValueError(f"invalid page token {shown(token)}: use the nextToken of the "
                         "previous page")
    return token


class PageRequest(_Wire):
    """``POST /tasks/paginate``: ``{"filter", "token", "maximumResults"}``."""

    filter: Annotated[Optional[dict[str, Any]], AfterValidator(_filter_size)] = None
    token: Annotated[Optional[str], AfterValidator(_page_token)] = None
    maximum_results: Optional[int] = Field(default=None, ge=1, le=1000)


class WaitRequest(_Wire):
    """``POST /tasks/wait``: hold until all (or any) of these tasks are final, or the timeout."""

    uuids: list[UuidRef] = Field(min_length=1, max_length=10_000)
    return_when: Literal["ALL", "ANY"] = "ALL"
    timeout: float = Field(default=30.0, ge=0, allow_inf_nan=False)
