"""Pools: nodes (slots) kept open for many tasks, static or elastic."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from . import _resource
from ._fields import Field, parse_enum
from ._resource import Dated, OutputMethods, Resource
from ._wire import (
    ResourcesField,
    bucket_list,
    count,
    dump_constants,
    hardware_field,
    instance_of,
    nonempty_name,
    optional_bool,
    optional_count,
    optional_str,
    parse_constants,
    str_dict,
    str_list,
    timespan,
    value_field,
)
from .bucket import Bucket
from .exceptions import (
    FieldError,
    MissingBucketException,
    MissingPoolException,
    MissingPoolInstanceException,
)
from .hardware import HardwareConstraint
from .options import Privileges, RetrySettings, SecretsAccessRights
from .states import PoolState
from .status import Error, Status

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Pool", "ElasticProperty"]

logger = logging.getLogger(__name__)

StateArg = Union[PoolState, str, Iterable[Union[PoolState, str]], None]
_WIRE = (("is_elastic", "isElastic"), ("minimum_total_slots", "minTotalSlots"),
         ("maximum_total_slots", "maxTotalSlots"), ("minimum_idle_slots", "minIdleSlots"),
         ("resize_period", "resizePeriod"), ("resize_factor", "rampResizeFactor"),
         ("minimum_idle_time_seconds", "minIdleTimeSeconds"))


@dataclass(frozen=True)
class ElasticProperty:
    """How an elastic pool grows and shrinks (``elasticProperty``).

    Attributes:
        is_elastic: the pool resizes itself; a static pool keeps ``instancecount`` nodes.
        minimum_total_slots: never fewer slots than this.
        maximum_total_slots: never more slots than this.
        minimum_idle_slots: keep this many idle slots ready.
        resize_period: seconds between two resizes.
        resize_factor: share of the missing slots added at each resize (0 < f <= 1).
        minimum_idle_time_seconds: a slot idle this long may be released.
    """

    is_elastic: bool = False
    minimum_total_slots: int = 0
    maximum_total_slots: int = 1
    minimum_idle_slots: int = 0
    resize_period: int = 90
    resize_factor: float = 1
    minimum_idle_time_seconds: int = 0

    def checked(self) -> "ElasticProperty":
        """Self, once the values are consistent.

        Raises:
            FieldError: a count below 0, a factor outside (0, 1], or (for an elastic pool)
                minimum > maximum.
        """
        for attr, _wire in _WIRE[1:]:
            value = getattr(self, attr)
            if attr == "resize_factor":
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not 0 < value <= 1:
                    raise FieldError(f"resize_factor must be in (0, 1], got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FieldError(f"{attr} must be an int >= 0, got {value!r}")
        if self.is_elastic and self.minimum_total_slots > self.maximum_total_slots:
            raise FieldError(f"minimum_total_slots ({self.minimum_total_slots}) is above "
                             f"maximum_total_slots ({self.maximum_total_slots})")
        return self

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> "ElasticProperty":
        doc = doc or {}
        defaults = cls()
        return cls(**{attr: doc[wire] if doc.get(wire) is not None else getattr(defaults, attr)
                      for attr, wire in _WIRE})

    def to_json(self) -> dict[str, Any]:
        return {wire: getattr(self, attr) for attr, wire in _WIRE}


class _Elastic:
    """A pool attribute that reads and replaces one value of ``elastic_property`` (checked;
    writable on a running pool, then sent by ``commit()``)."""

    def __init__(self, attr: str) -> None:
        self.attr = attr

    def __get__(self, obj: Any, objtype: Optional[type] = None) -> Any:
        return self if obj is None else getattr(obj.elastic_property, self.attr)

    def __set__(self, obj: Any, value: Any) -> None:
        obj.elastic_property = dataclasses.replace(obj.elastic_property, **{self.attr: value})


def _slots_per_node(owner: Any, value: Any) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise FieldError(f"multi_slots must be an int >= 1 or None, got {value!r}")
    return value


_ALWAYS_SENT = frozenset({"name", "profile", "instanceCount", "constants", "tags", "labels",
                          "advancedResourceBuckets", "elasticProperty"})


class Pool(OutputMethods, Dated, Resource):
    """A pool: ``instancecount`` nodes of a profile kept open for tasks (``create_task(...,
    pool=pool)``), or an elastic pool sized between two bounds (:meth:`setup_elastic`).

    Before :meth:`submit` every writable field can be set. Once submitted, ``name``, ``tags``,
    ``labels``, the elastic settings (``elastic_property`` and the ``elastic_*`` attributes),
    ``default_retry_settings`` and ``task_default_wait_for_pool_resources_synchronization``
    stay writable and are sent by :meth:`commit` (``PUT /pools/{uuid}`` with the whole
    document); setting another field raises :class:`~qcompute.ReadOnlyFieldError`.

    Volatile fields (``state``, ``status``, ``errors``, counts, usage, dates ...) refresh the
    pool when its data is older than ``update_cache_time`` (5 s) while ``auto_update`` is on.

    Args:
        connection: the owning connection.
        name: a display name.
        profile: the profile the nodes run.
        instancecount: the number of nodes of a static pool.
        shortname: a unique DNS-compliant name.
    """

    __slots__ = ()
    _path = "pools"
    _not_found = MissingPoolException
    _instance_not_found = MissingPoolInstanceException
    _repr_fields = ("uuid", "name", "state")

    name: Field[str] = Field("name", validate=lambda o, v: nonempty_name(v))
    shortname: Field[Optional[str]] = Field("shortname", fixed_after_submit=True,
                                            validate=optional_str)
    profile: Field[Optional[str]] = Field("profile", fixed_after_submit=True,
                                          validate=optional_str)
    instancecount: Field[int] = Field("instanceCount", fixed_after_submit=True, default=0,
                                      validate=count)
    constants: Field[dict[str, Optional[str]]] = Field(
        "constants", fixed_after_submit=True, parse=parse_constants, dump=dump_constants,
        default=dict, validate=str_dict)
    tags: Field[list[str]] = Field("tags", default=list, validate=str_list)
    labels: Field[dict[str, str]] = Field("labels", default=dict, validate=str_dict)
    resources: Field[list[Bucket]] = ResourcesField(
        "advancedResourceBuckets", fixed_after_submit=True, validate=bucket_list)
    preparation_task: Field[Optional[str]] = Field(
        "preparationTask", fixed_after_submit=True, validate=optional_str,
        parse=lambda raw: raw.get("commandLine") if isinstance(raw, Mapping) else raw,
        dump=lambda command: {"commandLine": command})
    multi_slots: Field[Optional[int]] = Field(
        "multiSlotsSettings", fixed_after_submit=True, validate=_slots_per_node,
        parse=lambda raw: raw.get("slotsPerNode") if isinstance(raw, Mapping) else raw,
        dump=lambda slots: {"slotsPerNode": slots})
    task_default_wait_for_pool_resources_synchronization: Field[Optional[bool]] = Field(
        "taskDefaultWaitForPoolResourcesSynchronization", validate=optional_bool)
    default_retry_settings: Field[RetrySettings] = value_field(RetrySettings,
                                                               "defaultRetrySettings")
    secrets_access_rights: Field[SecretsAccessRights] = value_field(
        SecretsAccessRights, "secretsAccessRights", fixed_after_submit=True)
    privileges: Field[Privileges] = value_field(Privileges, "privileges", fixed_after_submit=True)
    hardware_constraints: Field[list[HardwareConstraint]] = hardware_field(
        "hardwareConstraints", fixed_after_submit=True)
    max_time_queue_seconds: Field[Optional[int]] = Field(
        "maxTimeQueueSeconds", fixed_after_submit=True, validate=optional_count)
    default_resources_cache_ttl_sec: Field[Optional[int]] = Field(
        "defaultResourcesCacheTTLSec", fixed_after_submit=True, validate=optional_count)
    auto_delete: Field[bool] = Field("autoDeleteOnCompletion", fixed_after_submit=True,
                                     default=False, validate=instance_of(bool, optional=False))
    completion_ttl = timespan("completionTimeToLive", fixed_after_submit=True)
    elastic_property: Field[ElasticProperty] = Field(
        "elasticProperty", parse=ElasticProperty.from_json, dump=lambda v: v.to_json(),
        default=ElasticProperty, validate=lambda o, v: instance_of(ElasticProperty)(o, v).checked())

    is_elastic = _Elastic("is_elastic")
    elastic_minimum_total_slots = _Elastic("minimum_total_slots")
    elastic_maximum_total_slots = _Elastic("maximum_total_slots")
    elastic_minimum_idle_slots = _Elastic("minimum_idle_slots")
    elastic_resize_period = _Elastic("resize_period")
    elastic_resize_factor = _Elastic("resize_factor")
    elastic_minimum_idle_time = _Elastic("minimum_idle_time_seconds")

    state: Field[Union[PoolState, str]] = Field(
        "state", volatile=True, parse=parse_enum(PoolState), default=PoolState.UNSUBMITTED)
    previous_state: Field[Union[PoolState, str, None]] = Field(
        "previousState", volatile=True, parse=parse_enum(PoolState))
    status: Field[Optional[Status]] = Field("status", volatile=True, parse=Status.from_json)
    errors: Field[list[Error]] = Field(
        "errors", volatile=True, default=list,
        parse=lambda raw: [e for e in (Error.from_json(doc) for doc in raw) if e is not None])
    execution_time: Field[Optional[str]] = Field("executionTime", volatile=True)
    wall_time: Field[Optional[str]] = Field("wallTime", volatile=True)
    running_instance_count: Field[Optional[int]] = Field("runningInstanceCount", volatile=True)
    running_core_count: Field[Optional[int]] = Field("runningCoreCount", volatile=True)
    pool_usage: Field[Optional[float]] = Field("poolUsage", volatile=True, parse=float)
    total_slot_capacity: Field[Optional[int]] = Field("totalSlotCapacity", volatile=True)
    queued_or_running_task_instances_count: Field[Optional[float]] = Field(
        "queuedOrRunningTaskInstancesCount", volatile=True, parse=float)

    def __init__(self, connection: "Connection", name: str, profile: Optional[str] = None,
                 instancecount: int = 1, shortname: Optional[str] = None) -> None:
        super().__init__(connection)
        if isinstance(instancecount, bool) or not isinstance(instancecount, int) \
                or instancecount < 0:
            raise ValueError(f"instancecount must be an int >= 0, got {instancecount!r}")
        self._data.update({"name": nonempty_name(name), "profile": optional_str(self, profile),
                           "instanceCount": instancecount})
        if shortname is not None:
            self._data["shortname"] = optional_str(self, shortname)

    def setup_elastic(self, minimum_total_slots: int = 0, maximum_total_slots: int = 1,
                      minimum_idle_slots: int = 0, minimum_idle_time_seconds: int = 0,
                      resize_factor: float = 1, resize_period: int = 90) -> "Pool":
        """Make the pool elastic with these bounds (see :class:`ElasticProperty`). On a
        running pool, :meth:`commit` sends the change.

        Raises:
            FieldError: inconsistent values.
        """
        self.elastic_property = ElasticProperty(
            True, minimum_total_slots, maximum_total_slots, minimum_idle_slots, resize_period,
            resize_factor, minimum_idle_time_seconds)
        return self

    def allow_credentials_to_be_exported_to_pool_environment(self) -> None:
        """Let the nodes receive the API and storage credentials in their environment
        (before submit only)."""
        self.privileges = Privileges(export_credentials_in_environment=True)

    # -- lifecycle ---------------------------------------------------------------------------
    def _submit_document(self) -> dict[str, Any]:
        """The ``POST /pools`` document (reference §1.6)."""
        return self._input_document(_ALWAYS_SENT)

    def _refresh(self) -> None:
        self._load(self._conn._http.get(self._url(), not_found=MissingPoolException),
                   now=_resource._clock(), keep_changes=False)

    def submit(self) -> "Pool":
        """Open the pool: ``POST /pools``, then ``GET /pools/{uuid}``.

        Raises:
            ResourceStateError: already submitted.
            MissingBucketException: the server answered 404 (a resource bucket is missing).
            BadRequestError: the server refused the document.
        """
        self._data["uuid"] = self._create("/pools", MissingBucketException)
        self._refresh()
        return self

    def close(self) -> "Pool":
        """Close the pool (its unfinished tasks are cancelled, its nodes are released): ``POST
        /pools/{uuid}/close``, then refresh."""
        self._require_submitted("close")
        self._conn._http.post(self._url("close"), not_found=MissingPoolException)
        self.update(flushcache=True)
        return self

    def update_resources(self) -> "Pool":
        """Make the nodes pull their resource buckets again: ``PATCH /pools/{uuid}``."""
        self._require_submitted("update resources")
        self._conn._http.patch(self._url(), not_found=MissingPoolException)
        self.update(flushcache=True)
        return self

    def delete(self, purge_resources: bool = False) -> None:
        """Close and delete the pool (``DELETE /pools/{uuid}``), then its resource buckets if
        asked. The object keeps its cached fields; ``auto_update`` is turned off."""
        self._require_submitted("delete")
        resources = list(self.resources) if purge_resources else []
        self._conn._http.delete(self._url(), not_found=MissingPoolException)
        self.auto_update = False
        self._mark_local_state(PoolState.PENDING_DELETE.value)
        for bucket in resources:
            try:
                bucket.delete()
            except MissingBucketException:
                logger.debug("bucket %s was already gone", bucket.name)

    def wait(self, state: StateArg = None, timeout: Optional[float] = None) -> bool:
        """Wait until the pool is in ``state`` (or in any final state: Closed, Failure).

        Polls ``GET /pools/{uuid}`` after 0.05 s, then 1.5 times later each time, at most
        every second. A pool that reaches a final state other than ``state`` ends the wait.

        Args:
            state: a state, or several (for example ``PoolState.FULLY_EXECUTING``); ``None``
                waits for a final state.
            timeout: seconds to wait at most; ``None`` waits for ever.

        Returns:
            True when the pool is in ``state`` (a final state for ``None``); False on
            timeout, when it ended in another state, or if it was never submitted.
        """
        wanted = _state_names(state)
        if not self._is_submitted():
            return False

        def there() -> bool:
            now = self._state_now()
            return str(now) in wanted if wanted else _final(now)

        def stop() -> bool:
            self._fetch()
            return there() or _final(self._state_now())

        _resource.poll(stop, timeout)
        return there()


def _final(state: Any) -> bool:
    return isinstance(state, PoolState) and state.is_final()


def _state_names(state: StateArg) -> frozenset[str]:
    if state is None:
        return frozenset()
    items = [state] if isinstance(state, str) else state
    if not isinstance(items, Iterable):
        raise TypeError(f"state must be a PoolState, a state name or several, got {state!r}")
    names = frozenset(s.value if isinstance(s, Enum) else str(s) for s in items)
    unknown = names - {s.value for s in PoolState}
    if unknown:
        raise ValueError(f"unknown pool state(s) {sorted(unknown)}; one of "
                         f"{[s.value for s in PoolState]}")
    return names
