"""Pool and job documents as submitted (reference §1.6, §1.7). Unknown keys are echoed back."""
from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from .common import RetrySettings, Wire, parse_timespan
from .secrets import Privileges, SecretsAccessRights
from .tasks import AdvancedBucket, Constant, TaskSubmit

__all__ = ["PoolSubmit", "PoolUpdate", "ElasticProperty", "JobSubmit"]


class ElasticProperty(Wire):
    is_elastic: bool = False
    min_total_slots: int = Field(default=0, ge=0)
    max_total_slots: int = Field(default=1, ge=0)
    min_idle_slots: int = Field(default=0, ge=0)
    resize_period: int = Field(default=90, ge=0)  # seconds between two resizes
    ramp_resize_factor: float = Field(default=1.0, gt=0, le=1)  # share of the gap grown at once
    min_idle_time_seconds: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> "ElasticProperty":
        if self.is_elastic and self.min_total_slots > self.max_total_slots:
            raise ValueError(f"minTotalSlots ({self.min_total_slots}) is above maxTotalSlots "
                             f"({self.max_total_slots})")
        return self


class PreparationTask(Wire):
    command_line: Optional[str] = Field(default=None, max_length=65536)


class MultiSlots(Wire):
    slots_per_node: Optional[int] = Field(default=None, ge=1, le=1024)


def _ttl(value: Optional[str]) -> Optional[str]:
    if value:
        parse_timespan(value)
    return value


class PoolSubmit(Wire):
    """``POST /pools``."""

    name: str = Field(min_length=1, max_length=512)
    shortname: Optional[str] = Field(default=None, max_length=512)
    profile: Optional[str] = None
    instance_count: Optional[int] = Field(default=None, ge=0)  # nodes of a static pool
    constants: Optional[list[Constant]] = None
    tags: Optional[list[str]] = None
    labels: Optional[dict[str, str]] = None
    advanced_resource_buckets: Optional[list[AdvancedBucket]] = None
    resource_buckets: Optional[list[str]] = None
    preparation_task: Optional[PreparationTask] = None
    elastic_property: Optional[ElasticProperty] = None
    multi_slots_settings: Optional[MultiSlots] = None
    task_default_wait_for_pool_resources_synchronization: Optional[bool] = None
    default_retry_settings: Optional[RetrySettings] = None
    auto_delete_on_completion: Optional[bool] = None
    completion_time_to_live: Optional[str] = None
    hardware_constraints: Optional[list[dict]] = None
    secrets_access_rights: Optional[SecretsAccessRights] = None
    privileges: Optional[Privileges] = None

    _tags = field_validator("tags")(lambda cls, v: TaskSubmit._tags(v))
    _ttl = field_validator("completion_time_to_live")(lambda cls, v: _ttl(v))

    def slots_per_node(self) -> int:
        return (self.multi_slots_settings.slots_per_node if self.multi_slots_settings else None) or 1


class PoolUpdate(Wire):
    """``PUT /pools/{uuid}``: what may change on an open pool."""

    name: Optional[str] = Field(default=None, min_length=1, max_length=512)
    shortname: Optional[str] = Field(default=None, max_length=512)
    tags: Optional[list[str]] = None
    labels: Optional[dict[str, str]] = None
    elastic_property: Optional[ElasticProperty] = None
    task_default_wait_for_pool_resources_synchronization: Optional[bool] = None
    default_retry_settings: Optional[RetrySettings] = None

    _tags = field_validator("tags")(lambda cls, v: TaskSubmit._tags(v))


class JobSubmit(Wire):
    """``POST /jobs/``. The official SDK also sends its local ``state`` (``""``): ignored."""

    name: str = Field(min_length=1, max_length=512)
    shortname: Optional[str] = Field(default=None, max_length=512)
    pool_uuid: Optional[str] = None
    tags: Optional[list[str]] = None
    use_dependencies: bool = False
    max_wall_time: Optional[str] = None
    auto_delete_on_completion: Optional[bool] = None
    completion_time_to_live: Optional[str] = None

    _tags = field_validator("tags")(lambda cls, v: TaskSubmit._tags(v))
    _spans = field_validator("max_wall_time", "completion_time_to_live")(lambda cls, v: _ttl(v))
