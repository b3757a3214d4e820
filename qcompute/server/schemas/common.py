"""Wire shapes shared by tasks, pools and jobs: retry settings, time spans, dependencies."""
from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["Wire", "RetrySettings", "Dependencies", "AdvancedDependency", "parse_timespan",
           "format_timespan"]

# .NET TimeSpan text: "[d.]hh:mm:ss[.fffffff]"
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d{1,7}))?$")


class Wire(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


def parse_timespan(text: str) -> timedelta:
    """``"1.02:03:04.5"`` → 1 day 2 h 3 min 4.5 s. Raises ValueError naming the text."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a time span like 'd.hh:mm:ss' or 'hh:mm:ss'")
    days, hours, minutes, seconds, fraction = match.groups()
    if int(minutes) > 59 or int(seconds) > 59:
        raise ValueError(f"{text!r}: minutes and seconds must be below 60")
    return timedelta(days=int(days or 0), hours=int(hours), minutes=int(minutes),
                     seconds=int(seconds) + float(f"0.{fraction or 0}"))


def format_timespan(span: timedelta) -> str:
    total = int(span.total_seconds())
    days, rest = divmod(total, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}.{text}" if days else text


class RetrySettings(Wire):
    """``retrySettings``: null or 0 for both means no retries; with both, the stricter wins."""

    max_total_retries: Optional[int] = Field(default=None, ge=0, le=100_000)
    max_per_instance_retries: Optional[int] = Field(default=None, ge=0, le=1000)


Condition = Literal["success", "failure", "cancelled"]


class AdvancedDependency(Wire):
    task_uuid: str = Field(min_length=1, max_length=64)
    # null or empty: any final state will do
    task_final_state_condition: Optional[list[Condition]] = None


class Dependencies(Wire):
    depends_on: Optional[list[str]] = None  # each parent must end in Success
    advanced_depends_on: Optional[list[AdvancedDependency]] = None

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
