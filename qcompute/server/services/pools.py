"""Pools: submit, read, update, close and delete; the pool state and the elastic target.

A pool holds executor slots while it is open; the scheduler (``scheduler_pools.PoolKeeper``)
reserves them, runs the preparation task on each, and releases them. Services here validate and
write; they never commit and never call the executor.
"""
from __future__ import annotations

import math
import uuid as uuidlib
from datetime import datetime
from typing import Any, Mapping, Optional

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I
from qcompute.states import PoolState as P
from qcompute.states import TaskState as T

from ..db.models import Instance, Pool, PoolTag, Task, User, utcnow
from ..errors import BadRequest, Forbidden, NotFound, validate
from ..schemas.common import MAX_SPAN, parse_timespan
from ..schemas.pools import ElasticProperty, PoolSubmit, PoolUpdate
from ..settings import ServerSettings
from .hardware import check_constraints
from .owned import find_owned
from .runnable import check_command_line, check_constants, instance_variables
from .tasks import check_bucket_prefix, check_fixed_inputs, request_abort

__all__ = ["submit_pool", "get_pool", "update_pool", "close_pool", "request_delete_pool",
           "derive_pool_state", "elastic_target", "elastic_of", "pool_task_counts",
           "PREPARING", "READY", "FAILED"]

PREPARING, READY, FAILED = "Preparing", "Ready", "Failed"  # the states of a pool slot


def elastic_of(pool: Pool) -> Optional[ElasticProperty]:
    raw = pool.document.get("elasticProperty")
    if not raw:
        return None
    try:
        prop = ElasticProperty.model_validate(raw)
    except ValidationError:  # stored before its values were range-checked: take them as sent
        prop = ElasticProperty.model_construct(**raw)
    return prop if prop.is_elastic else None


def submit_pool(session: Session, settings: ServerSettings, user: User, doc: PoolSubmit,
                capacity: int) -> Pool:
    if not doc.profile or settings.profile(doc.profile) is None:
        known = ", ".join(p.name for p in settings.profiles)
        raise BadRequest(f"unknown profile {doc.profile!r}; available: {known}",
                         code="unknown_profile")
    names = [b.bucket_name for b in doc.advanced_resource_buckets or ()]
    check_bucket_prefix(user, names + list(doc.resource_buckets or ()))
    elastic = doc.elastic_property if doc.elastic_property and doc.elastic_property.is_elastic \
        else None
    if elastic:
        target = elastic.min_total_slots
        if target > capacity:
            raise BadRequest(f"minTotalSlots {target} is above this cluster's {capacity} slots",
                             code="not_enough_slots")
    else:
        nodes = 1 if doc.instance_count is None else doc.instance_count
        if nodes < 1:
            raise BadRequest("instanceCount of a static pool must be at least 1")
        target = nodes * doc.slots_per_node()
        if target > capacity:
            raise BadRequest(f"the pool needs {target} slots ({nodes} nodes x "
                             f"{doc.slots_per_node()} slots); this cluster has {capacity}",
                             code="not_enough_slots")
    check_constraints(settings.node_kinds, doc.hardware_constraints)
    check_constants(doc.constants, settings)
    constants = {**settings.profile(doc.profile).constants,  # type: ignore[union-attr]
                 **{c.key: c.value or "" for c in doc.constants or ()}}
    preparation = doc.preparation_task.command_line if doc.preparation_task else None
    variables = instance_variables(name=doc.name, count=target, last_id=max(target - 1, 0))
    check_command_line("preparationTask.commandLine", preparation or "",
                       {**constants, **variables}, settings)
    now = utcnow()
    pool_uuid = str(uuidlib.uuid4())
    pool = Pool(uuid=pool_uuid, owner_id=user.id, name=doc.name,
                shortname=doc.shortname or pool_uuid, profile=doc.profile,
                document=doc.model_dump(mode="json", by_alias=True, exclude_none=True),
                state=P.SUBMITTED.value, state_transition_time=now, slot_target=target,
                errors=[], created_at=now, updated_at=now,
                tags=[PoolTag(tag=t, position=n) for n, t in enumerate(dict.fromkeys(doc.tags or ()))])
    session.add(pool)
    session.flush()
    return pool


def get_pool(session: Session, user: User, pool_uuid: str) -> Pool:
    return find_owned(session, Pool, user, pool_uuid, "pool")


def open_pool_for_tasks(session: Session, user: User, pool_uuid: str) -> Pool:
    """The pool a new task or job goes into: it must exist (a 400, as the dialect answers for a
    missing pool on submit) and be open (not closing, closed or failed)."""
    try:
        pool = get_pool(session, user, pool_uuid)
    except NotFound as exc:
        raise BadRequest(exc.message, code=exc.code) from None
    if pool.close_requested or P(pool.state).is_final():
        raise BadRequest(f"pool {pool_uuid} is {pool.state}: it takes no new tasks",
                         code="pool_closed")
    return pool


_POOL_MUTABLE = {"name", "shortname", "tags", "labels", "elasticProperty",
                 "taskDefaultWaitForPoolResourcesSynchronization", "defaultRetrySettings"}


def update_pool(session: Session, user: User, pool_uuid: str, body: dict[str, Any],
                capacity: int) -> Pool:
    """Apply a ``PUT``: the mutable fields change (elastic settings take effect at the next
    scheduler round); the other inputs must be absent or unchanged."""
    pool = get_pool(session, user, pool_uuid)
    changes = validate(PoolUpdate, body, code="invalid_pool")
    inputs = {f.alias or n for n, f in PoolSubmit.model_fields.items()} - _POOL_MUTABLE
    if elastic_of(pool) is not None:
        inputs.discard("instanceCount")  # an elastic pool reports its current size there
    check_fixed_inputs(pool.document, body, inputs)
    updates = changes.model_dump(mode="json", by_alias=True, exclude_unset=True,
                                 exclude_none=True)
    document = dict(pool.document)
    elastic = updates.get("elasticProperty")
    if elastic is not None:
        was_elastic = elastic_of(pool) is not None
        if bool(elastic.get("isElastic")) != was_elastic:
            raise BadRequest("a pool cannot switch between static and elastic",
                             code="field_fixed")
        if was_elastic and elastic.get("minTotalSlots", 0) > capacity:
            raise BadRequest(f"minTotalSlots is above this cluster's {capacity} slots",
                             code="not_enough_slots")
    document.update(updates)
    if "name" in updates:
        pool.name = updates["name"]
    if "shortname" in updates:
        pool.shortname = updates["shortname"] or pool.uuid
    if "tags" in updates:
        pool.tags = [PoolTag(tag=t, position=n)
                     for n, t in enumerate(dict.fromkeys(updates["tags"]))]
    pool.document = document
    pool.updated_at = utcnow()
    return pool


def close_pool(session: Session, user: User, pool_uuid: str) -> Pool:
    """Mark the pool closing; the scheduler cancels its unfinished tasks, then closes it."""
    pool = get_pool(session, user, pool_uuid)
    if P(pool.state).is_final() or pool.state == P.PENDING_DELETE.value:
        raise Forbidden(f"pool {pool_uuid} is already {pool.state}", code="pool_not_open")
    pool.close_requested = True
    pool.updated_at = utcnow()
    return pool


def request_delete_pool(session: Session, user: User, pool_uuid: str) -> tuple[Pool, list[int]]:
    """Mark the pool PendingDelete and its unfinished tasks for abort; the scheduler removes the
    pool once they are final. Returns the pool and the ids of the tasks to abort."""
    pool = get_pool(session, user, pool_uuid)
    aborted = []
    for task in session.scalars(select(Task).where(Task.pool_id == pool.id,
                                                   Task.ended_at.is_(None))):
        if not T(task.state).is_final():
            request_abort(session, user, task.uuid)
            aborted.append(task.id)
    pool.close_requested = True
    set_pool_state(pool, P.PENDING_DELETE, utcnow())
    return pool, aborted


def set_pool_state(pool: Pool, state: P, now: datetime) -> bool:
    """Enter ``state``; True if it changed. The scheduler asks every round: the same state
    leaves the pool (and its ``lastModified``) as it was."""
    return pool.state != state.value and pool.move_to(state.value, now, final=state.is_final())


def derive_pool_state(*, target: int, slots: Mapping[str, int], close_requested: bool,
                      tasks_active: bool) -> P:
    """The pool's state from its slots (a count per slot state).

    * a failed preparation: Failure;
    * closing: Closing while its cancelled tasks stop, then Closed;
    * otherwise: Submitted (no slot yet) → Partially/FullyDispatched (slots held, preparing) →
      Partially/FullyExecuting (slots ready). An elastic pool scaled to 0 is FullyExecuting.
    """
    if slots.get(FAILED):
        return P.FAILURE
    if close_requested:
        return P.CLOSING if tasks_active else P.CLOSED
    held = sum(slots.values())
    ready = slots.get(READY, 0)
    if target == 0:
        return P.FULLY_EXECUTING
    if held == 0:
        return P.SUBMITTED
    if ready == 0:
        return P.FULLY_DISPATCHED if held >= target else P.PARTIALLY_DISPATCHED
    return P.FULLY_EXECUTING if ready >= target else P.PARTIALLY_EXECUTING


def elastic_target(prop: ElasticProperty, *, current: int, busy: int, queued: int,
                   idle_for: float, since_resize: Optional[float]) -> int:
    """How many slots an elastic pool should hold now.

    It grows toward ``maxTotalSlots`` while work waits (queued instances plus ``minIdleSlots``
    spare), by ``rampResizeFactor`` of the gap per resize (at least one slot), at most once per
    ``resizePeriod`` seconds. It shrinks toward ``minTotalSlots`` once more than ``minIdleSlots``
    slots have been idle for ``minIdleTimeSeconds``. ``since_resize`` None: never resized.
    """
    low, high = prop.min_total_slots, max(prop.max_total_slots, prop.min_total_slots)
    if current < low:
        return low
    if current > high:
        return high
    if since_resize is not None and since_resize < prop.resize_period:
        return current
    wanted = min(high, busy + queued + prop.min_idle_slots)
    if wanted > current:
        return min(high, current + max(1, math.ceil((wanted - current) * prop.ramp_resize_factor)))
    idle = current - busy
    if idle > prop.min_idle_slots and idle_for >= prop.min_idle_time_seconds:
        return max(low, busy + prop.min_idle_slots, wanted)
    return current


def pool_task_counts(session: Session, pool_id: int) -> dict[str, int]:
    """Instances of the pool's tasks per instance state (for the pool's document)."""
    rows = session.execute(select(Instance.state, func.count()).join(Task, Instance.task_id == Task.id)
                           .where(Task.pool_id == pool_id).group_by(Instance.state))
    return dict(rows.all())


def completion_deadline(document: dict[str, Any], now: datetime) -> Optional[datetime]:
    """When an object that finished ``now`` is collected (``autoDeleteOnCompletion``)."""
    if not document.get("autoDeleteOnCompletion"):
        return None
    try:
        span = parse_timespan(document.get("completionTimeToLive") or "00:00:00")
    except ValueError:  # stored before time spans were range-checked
        span = MAX_SPAN
    return now + span


def queued_in_pool(session: Session, pool_id: int) -> int:
    return session.scalar(
        select(func.count()).select_from(Instance).join(Task, Instance.task_id == Task.id)
        .where(Task.pool_id == pool_id, Task.waiting_on == 0, Task.abort_requested.is_(False),
               Instance.state == I.QUEUED.value)) or 0
