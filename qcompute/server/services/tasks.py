"""Tasks: submit, read, update, abort, delete and list. Every query is scoped by owner.

Services validate and write; they never commit (the caller does, once) and never call the
executor: the scheduler acts on what was committed.
"""
from __future__ import annotations

import uuid as uuidlib
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from qcompute.explain import RERUN_FIELDS, RERUN_LABEL
from qcompute.states import InstanceState as I
from qcompute.states import TaskState as T

from ..db.models import Instance, Task, TaskTag, User, utcnow
from ..errors import BadRequest, Conflict, Forbidden, NotFound, validate
from ..schemas import PageRequest, TaskSubmit, TaskUpdate
from ..settings import ServerSettings
from . import listing
from .hardware import check_constraints
from .owned import find_owned
from .lifecycle import derive_task_state, format_ranges, parse_ranges
from .runnable import check_command_line, check_constants, instance_variables

__all__ = ["submit_task", "get_task", "task_states", "execution_seconds", "task_instances",
           "instances_of", "update_task", "request_abort",
           "delete_task", "page_tasks", "move_instance", "refresh_task_state", "rerun_document"]

def _instance_ids(doc: TaskSubmit, limit: int) -> list[int]:
    if doc.advanced_ranges:
        if doc.instance_count:
            raise BadRequest("give either instanceCount or advancedRanges, not both")
        try:
            return parse_ranges(doc.advanced_ranges, limit=limit)
        except ValueError as exc:
            raise BadRequest(f"advancedRanges: {exc}", code="invalid_range") from None
    count = 1 if doc.instance_count is None else doc.instance_count
    if count < 1:
        raise BadRequest("instanceCount must be at least 1 (or give advancedRanges)")
    if count > limit:
        raise BadRequest(f"instanceCount {count} is above this server's limit of {limit}")
    return list(range(count))


def _bucket_names(doc: TaskSubmit) -> list[str]:
    names = [b.bucket_name for b in doc.advanced_resource_buckets or ()]
    names += list(doc.resource_buckets or ())
    return names + ([doc.result_bucket] if doc.result_bucket else [])


def check_bucket_prefix(user: User, names: list[str]) -> None:
    for name in names:
        if user.bucket_prefix and not name.startswith(user.bucket_prefix):
            raise Forbidden(f"bucket {name!r} is outside your bucket prefix "
                            f"{user.bucket_prefix!r}", code="bucket_forbidden")


def submit_task(session: Session, settings: ServerSettings, user: User,
                doc: TaskSubmit) -> Task:
    """Validate a task document and store the task with its queued instances."""
    from .placement import place_task, record_dependencies  # noqa: PLC0415 (import cycle)

    place = place_task(session, user, doc)
    if not doc.profile:
        raise BadRequest("profile is required: name one of GET /profiles, or give a poolUuid")
    profile = settings.profile(doc.profile)
    if profile is None:
        known = ", ".join(p.name for p in settings.profiles)
        raise BadRequest(f"unknown profile {doc.profile!r}; available: {known}",
                         code="unknown_profile")
    check_constants(doc.constants, settings)
    constants = {**profile.constants, **place.constants,
                 **{c.key: c.value or "" for c in doc.constants or ()}}
    if not constants.get(profile.command_constant, "").strip():
        raise BadRequest(f"constant {profile.command_constant} is empty: set the command to run",
                         code="missing_command")
    ids = _instance_ids(doc, settings.max_instances_per_task)
    variables = instance_variables(name=doc.name, count=len(ids), last_id=ids[-1])
    check_command_line(profile.command_constant, constants[profile.command_constant],
                       {**constants, **variables}, settings)
    check_bucket_prefix(user, _bucket_names(doc))
    check_constraints(settings.node_kinds, doc.hardware_constraints)

    now = utcnow()
    task_uuid = str(uuidlib.uuid4())
    task = Task(
        uuid=task_uuid, owner_id=user.id, name=doc.name, shortname=doc.shortname or task_uuid,
        profile=doc.profile, document=doc.model_dump(mode="json", by_alias=True,
                                                     exclude_none=True),
        instance_count=len(ids), instance_counts={I.QUEUED.value: len(ids)},
        state=T.SUBMITTED.value, state_transition_time=now,
        created_at=now, updated_at=now, errors=[],
        tags=[TaskTag(tag=t, position=n) for n, t in enumerate(dict.fromkeys(doc.tags or ()))],
        pool_id=place.pool.id if place.pool else None, job_id=place.job.id if place.job else None,
    )
    session.add(task)
    session.flush()
    record_dependencies(session, task, doc, place.job)
    if doc.max_time_queue_seconds and not task.waiting_on:
        task.queue_deadline = now + timedelta(seconds=doc.max_time_queue_seconds)
    session.execute(insert(Instance), [
        {"task_id": task.id, "instance_id": iid, "rank": rank, "state": I.QUEUED.value}
        for rank, iid in enumerate(ids)])
    return task


def get_task(session: Session, user: User, task_uuid: str) -> Task:
    return find_owned(session, Task, user, task_uuid, "task")


def task_states(session: Session, user: User, uuids: list[str]) -> dict[str, str]:
    """The state of each of these tasks the user owns (unknown uuids are left out)."""
    rows = session.execute(select(Task.uuid, Task.state).where(
        Task.owner_id == user.id, Task.uuid.in_(uuids)))
    return dict(rows.all())


def execution_seconds(session: Session, task_ids: list[int]) -> dict[int, float]:
    """The summed execution time of each task's instances (one query for a whole page)."""
    rows = session.execute(select(Instance.task_id, func.sum(Instance.exec_time_sec))
                           .where(Instance.task_id.in_(task_ids)).group_by(Instance.task_id))
    return {task_id: seconds or 0.0 for task_id, seconds in rows}


def task_instances(session: Session, task: Task) -> list[Instance]:
    return list(session.scalars(
        select(Instance).where(Instance.task_id == task.id).order_by(Instance.rank)))


def instances_of(session: Session, task_ids: list[int]) -> dict[int, list[Instance]]:
    """The instances of each of these tasks, by rank (one query for a whole page)."""
    found: dict[int, list[Instance]] = {task_id: [] for task_id in task_ids}
    for instance in session.scalars(select(Instance).where(Instance.task_id.in_(task_ids))
                                    .order_by(Instance.task_id, Instance.rank)):
        found[instance.task_id].append(instance)
    return found


def check_instance(session: Session, task: Task, instance_id: int) -> None:
    found = session.scalar(select(Instance.id).where(
        Instance.task_id == task.id, Instance.instance_id == instance_id))
    if found is None:
        raise NotFound(f"task {task.uuid} has no instance {instance_id}",
                       code="instance_not_found")


_MUTABLE = {"name", "shortname", "tags", "labels"}
_INPUTS = {f.alias or n for n, f in TaskSubmit.model_fields.items()} - _MUTABLE
_EMPTY = (None, "", [], {})


def _without_nulls(value: Any) -> Any:
    """Compare documents as values: ``{"a": 1, "b": None}`` equals ``{"a": 1}``."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def check_fixed_inputs(current: dict[str, Any], body: dict[str, Any], inputs: set[str]) -> None:
    """A PUT carries the whole document: inputs fixed at submit must be empty or unchanged."""
    for key in inputs & body.keys():
        value = body[key]
        if value in _EMPTY:
            continue
        if _without_nulls(value) != _without_nulls(current.get(key)):
            raise BadRequest(f"{key} cannot change after submit", code="field_fixed")


def _current_input(task: Task, key: str) -> Any:
    if key == "instanceCount":
        return None if task.document.get("advancedRanges") else task.instance_count
    return task.document.get(key)


def update_task(session: Session, user: User, task_uuid: str, body: dict[str, Any]) -> Task:
    """Apply a ``PUT`` document. Inputs fixed at submit must be absent, empty or unchanged;
    server-owned fields (state, status, ...) in the body are ignored."""
    task = get_task(session, user, task_uuid)
    changes = validate(TaskUpdate, body, code="invalid_task")
    current = {**task.document, "instanceCount": _current_input(task, "instanceCount")}
    if body.get("instanceCount") == 0 and current["instanceCount"] is None:
        body = {k: v for k, v in body.items() if k != "instanceCount"}  # advancedRanges form
    check_fixed_inputs(current, body, _INPUTS)
    updates = changes.model_dump(exclude_unset=True, exclude_none=True)
    document = dict(task.document)
    if "name" in updates:
        task.name = document["name"] = updates["name"]
    if "shortname" in updates:
        task.shortname = document["shortname"] = updates["shortname"] or task.uuid
    if "labels" in updates:
        document["labels"] = updates["labels"]
    if "tags" in updates:
        tags = list(dict.fromkeys(updates["tags"]))
        document["tags"] = tags
        task.tags = [TaskTag(tag=t, position=n) for n, t in enumerate(tags)]
    task.document = document
    task.updated_at = utcnow()
    return task


def request_abort(session: Session, user: User, task_uuid: str) -> Task:
    """Mark a task for cancelling; the scheduler stops its instances once this is committed."""
    task = get_task(session, user, task_uuid)
    if T(task.state).is_final():
        raise Forbidden(f"task {task_uuid} is already {task.state}: it is not running",
                        code="task_not_running")
    task.abort_requested = True
    refresh_task_state(session, task)
    return task


def rerun_document(session: Session, user: User, task_uuid: str) -> dict[str, Any]:
    """The document of a task that runs this finished task's failed instances again, by the
    SDK's rules (``Task.rerun_failed``): the same definition, the failed instances' range,
    named ``"<name> (rerun of failed)"`` and labelled ``qcompute.rerunOf=<uuid>``."""
    task = get_task(session, user, task_uuid)
    if not T(task.state).is_final():
        raise Conflict(f"task {task_uuid} is {task.state}: only a finished task's failed "
                       "instances can run again", code="task_not_finished")
    failed = format_ranges(session.scalars(select(Instance.instance_id).where(
        Instance.task_id == task.id, Instance.state == I.FAILED.value)
        .order_by(Instance.instance_id)))
    if not failed:
        raise Conflict(f"task {task_uuid} ended {task.state} with no failed instance: "
                       "nothing to run again", code="nothing_failed")
    doc = {key: task.document[key] for key in (*RERUN_FIELDS, "resourceBuckets")
           if task.document.get(key) is not None}
    if doc.get("poolUuid"):  # a task in a pool runs with the pool's profile
        doc.pop("profile", None)
    return {**doc, "name": f"{task.name} (rerun of failed)", "advancedRanges": failed,
            "labels": {**doc.get("labels", {}), RERUN_LABEL: task.uuid}}


def delete_task(session: Session, user: User, task_uuid: str) -> Task:
    return remove_task(session, get_task(session, user, task_uuid))


def remove_task(session: Session, task: Task) -> Task:
    """Delete a task with its instances (tags, cursors, snapshots: ON DELETE CASCADE)."""
    session.execute(delete(Instance).where(Instance.task_id == task.id))
    session.delete(task)
    return task


def move_instance(task: Task, instance: Instance, state: I) -> None:
    """The one way an instance changes state: the task's per-state counts follow."""
    old = instance.state
    if old == state.value:
        return
    counts = dict(task.instance_counts or {})
    counts[old] = counts.get(old, 0) - 1
    if counts[old] <= 0:
        del counts[old]
    counts[state.value] = counts.get(state.value, 0) + 1
    task.instance_counts = counts  # a new dict, so the JSON column is written
    instance.state = state.value


def refresh_task_state(session: Session, task: Task, now: Optional[datetime] = None) -> bool:
    """Store the state derived from the instance counts; True if it changed. O(1)."""
    now = now or utcnow()
    counts = {I(s): n for s, n in (task.instance_counts or {}).items()}
    state = derive_task_state(counts, abort_requested=task.abort_requested)
    return task.move_to(state.value, now, final=state.is_final())


# -- listing ----------------------------------------------------------------------------------

def page_tasks(session: Session, user: User,
               request: PageRequest) -> tuple[list[Task], Optional[str]]:
    """One page of tasks, oldest first, and the token of the next page (None at the end)."""
    return listing.page_tasks(session, user, request)
