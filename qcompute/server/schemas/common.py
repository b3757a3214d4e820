"""Wire shapes shared by tasks, pools and jobs: retry settings, time spans, dependencies; and
the field types that range-check what every document may hold (see ``docs/tasks.rst``,
"Limits"). A value out of range is refused at submit with a message naming the field."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["Wire", "RetrySettings", "Dependencies", "AdvancedDependency", "parse_timespan",
           "format_timespan", "bounded_text", "Text", "ShortText", "Name", "ProfileName",
           "UuidRef", "Tag", "Tags", "Labels", "TimeSpan", "Seconds", "Count", "MAX_SPAN",
           "MAX_SECONDS", "MAX_INSTANCE_ID", "MAX_LIST", "shown"]

# .NET TimeSpan text: "[d.]hh:mm:ss[.fffffff]"
_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?", re.ASCII)

MAX_SPAN = timedelta(days=3650)  # any time span (TTL, wall time, queue time, interval): 10 years
MAX_SECONDS = int(MAX_SPAN.total_seconds())
MAX_INSTANCE_ID = 2**31 - 1  # instance ids are 32-bit integers (a PostgreSQL INTEGER)
MAX_COUNT = 1_000_000  # slots, nodes: far above any cluster, well inside every integer column
MAX_LIST = 1000  # tags, buckets, dependencies... of one document


def shown(text: str, limit: int = 60) -> str:
    """``repr(text)``, cut to about ``limit`` characters: messages never echo a huge input."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _whole(value: str) -> str:
    if not value.strip():
        raise ValueError("cannot be empty")
    return value


def bounded_text(max_length: int, min_length: int = 0) -> Any:
    """A string of ``min_length`` to ``max_length`` characters, with no NUL."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length),
                     AfterValidator(_no_nul)]


Text = Annotated[str, AfterValidator(_no_nul)]  # any string that may reach a process or S3
ShortText = bounded_text(512)  # shortnames
Name = Annotated[bounded_text(512, 1), AfterValidator(_whole)]
Tag = bounded_text(256, 1)
ProfileName = bounded_text(256)
UuidRef = bounded_text(64)  # an object's uuid as sent (looked up as it is)
Seconds = Annotated[int, Field(ge=0, le=MAX_SECONDS)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Tags = Annotated[list[Tag], Field(max_length=MAX_LIST)]
Labels = Annotated[dict[bounded_text(256), bounded_text(4096)], Field(max_length=MAX_LIST)]


class Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


def parse_timespan(text: str) -> timedelta:
    """``"1.02:03:04.5"`` → 1 day 2 h 3 min 4.5 s, at most :data:`MAX_SPAN`. Raises
    ValueError naming the text."""
    match = _TIMESPAN.fullmatch(text.strip()) if len(text) <= 64 else None
    if not match:
        raise ValueError(f"{shown(text)} is not a time span like 'd.hh:mm:ss' or 'hh:mm:ss'")
    days, hours, minutes, seconds, fraction = match.groups()
    if int(minutes) > 59 or int(seconds) > 59:
        raise ValueError(f"{shown(text)}: minutes and seconds must be below 60")
    whole = int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds)
    if whole > MAX_SECONDS:  # checked before timedelta(), which overflows past 999999999 days
        raise ValueError(f"{shown(text)} is longer than {MAX_SPAN.days} days")
    ticks = int((fraction or "0").ljust(7, "0"))  # 100 ns each
    span = timedelta(seconds=whole, microseconds=round(ticks / 10))
    if span > MAX_SPAN:
        raise ValueError(f"{shown(text)} is longer than {MAX_SPAN.days} days")
    return span


def format_timespan(span: timedelta) -> str:
    """The inverse of :func:`parse_timespan` (microseconds kept)."""
    days, rest = span.days, span.seconds
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    if span.microseconds:
        text += f".{span.microseconds:06d}"
    return f"{days}.{text}" if days else text


def _timespan(value: str) -> str:
    parse_timespan(value)
    return value


TimeSpan = Annotated[str, AfterValidator(_timespan)]  # kept as sent; checked once here


class RetrySettings(Wire):
    """``retrySettings``: null or 0 for both means no retries; with both, the stricter wins."""

    max_total_retries: Optional[int] = Field(default=None, ge=0, le=100_000)
    max_per_instance_retries: Optional[int] = Field(default=None, ge=0, le=1000)


Condition = Literal["success", "failure", "cancelled"]


class AdvancedDependency(Wire):
    task_uuid: str = Field(min_length=1, max_length=64)
    # null or empty: any final state will do
    task_final_state_condition: Optional[list[Condition]] = Field(default=None, max_length=3)


class Dependencies(Wire):
    # each parent must end in Success
    depends_on: Optional[list[UuidRef]] = Field(default=None, max_length=MAX_LIST)
    advanced_depends_on: Optional[list[AdvancedDependency]] = Field(default=None,
                                                                    max_length=MAX_LIST)

    def parents(self) -> dict[str, list[str]]:
        """``{parent uuid: accepted final states}`` (lowercase condition names)."""
        if self.depends_on and self.advanced_depends_on:
            raise ValueError("give dependsOn or advancedDependsOn, not both")
        found = {uuid: ["success"] for uuid in self.depends_on or ()}
        for dep in self.advanced_depends_on or ():
            if dep.task_uuid in found:
                raise ValueError(f"task {dep.task_uuid} is listed twice in advancedDependsOn")
            found[dep.task_uuid] = list(dep.task_final_state_condition or ())
        return found
