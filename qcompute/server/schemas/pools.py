"""Pool and job documents as submitted (reference §1.6, §1.7). Unknown keys are echoed back."""
from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, model_validator

from .common import (MAX_LIST, MAX_SECONDS, Count, Labels, Name, ProfileName, RetrySettings,
                     Seconds, ShortText, Tags, TimeSpan, UuidRef, Wire, bounded_text)
from .secrets import Privileges, SecretsAccessRights
from .tasks import AdvancedBucket, BucketName, Constant

__all__ = ["PoolSubmit", "PoolUpdate", "ElasticProperty", "JobSubmit"]


class ElasticProperty(Wire):
    is_elastic: bool = False
    min_total_slots: Count = 0
    max_total_slots: Count = 1
    min_idle_slots: Count = 0
    resize_period: Seconds = 90  # seconds between two resizes
    ramp_resize_factor: float = Field(default=1.0, gt=0, le=1)  # share of the gap grown at once
    min_idle_time_seconds: Seconds = 0

    @model_validator(mode="after")
    def _bounds(self) -> "ElasticProperty":
        if self.is_elastic and self.min_total_slots > self.max_total_slots:
            raise ValueError(f"minTotalSlots ({self.min_total_slots}) is above maxTotalSlots "
                             f"({self.max_total_slots})")
        return self


Command = bounded_text(65536)


class PreparationTask(Wire):
    command_line: Optional[Command] = None


class MultiSlots(Wire):
    slots_per_node: Optional[int] = Field(default=None, ge=1, le=1024)


class PoolSubmit(Wire):
    """``POST /pools``."""

    name: Name
    shortname: Optional[ShortText] = None
    profile: Optional[ProfileName] = None
    instance_count: Optional[Count] = None  # nodes of a static pool
    constants: Optional[list[Constant]] = None
    tags: Optional[Tags] = None
    labels: Optional[Labels] = None
    advanced_resource_buckets: Optional[list[AdvancedBucket]] = Field(default=None,
                                                                      max_length=MAX_LIST)
    resource_buckets: Optional[list[BucketName]] = Field(default=None, max_length=MAX_LIST)
    preparation_task: Optional[PreparationTask] = None
    elastic_property: Optional[ElasticProperty] = None
    multi_slots_settings: Optional[MultiSlots] = None
    task_default_wait_for_pool_resources_synchronization: Optional[bool] = None
    default_retry_settings: Optional[RetrySettings] = None
    auto_delete_on_completion: Optional[bool] = None
    completion_time_to_live: Optional[TimeSpan] = None
    max_time_queue_seconds: Optional[int] = Field(default=None, ge=1, le=MAX_SECONDS)
    default_resources_cache_ttl_sec: Optional[Seconds] = Field(
        default=None, alias="defaultResourcesCacheTTLSec")
    hardware_constraints: Optional[list[dict[str, Any]]] = Field(default=None, max_length=100)
    secrets_access_rights: Optional[SecretsAccessRights] = None
    privileges: Optional[Privileges] = None

    def slots_per_node(self) -> int:
        return (self.multi_slots_settings.slots_per_node if self.multi_slots_settings else None) or 1


class PoolUpdate(Wire):
    """``PUT /pools/{uuid}``: what may change on an open pool."""

    name: Optional[Name] = None
    shortname: Optional[ShortText] = None
    tags: Optional[Tags] = None
    labels: Optional[Labels] = None
    elastic_property: Optional[ElasticProperty] = None
    task_default_wait_for_pool_resources_synchronization: Optional[bool] = None
    default_retry_settings: Optional[RetrySettings] = None


class JobSubmit(Wire):
    """``POST /jobs/``. The official SDK also sends its local ``state`` (``""``): ignored."""

    name: Name
    shortname: Optional[ShortText] = None
    pool_uuid: Optional[UuidRef] = None
    tags: Optional[Tags] = None
    use_dependencies: bool = False
    max_wall_time: Optional[TimeSpan] = None
    auto_delete_on_completion: Optional[bool] = None
    completion_time_to_live: Optional[TimeSpan] = None
