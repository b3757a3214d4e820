"""Why a task is not running (yet): ``GET /tasks/{uuid}/explain``, a qcompute route.

Computed from the data the scheduler dispatches from, with its own rules
(``services/queueing.py``): the task's instances, its parents, its pool's slots, the executor
slots that no pool holds, the queue ahead of it, the cluster's node kinds and its queue
deadline. Each reason is ``{"code", "message", ...details}``; the codes are:

``final``          the task ended (``state``, ``failedRange``, ``errors``): nothing will run;
``aborting``       an abort was asked: what still runs is being stopped;
``running``        ``running`` of ``total`` instances run (``queued`` still wait);
``placing``        instances handed to the executor wait for it to give them a node
                   (``instances``: each ``instanceId`` and what the executor says it waits
                   for: on Ray, the ``resources`` it asks for, its ``labelSelector`` and the
                   ``nodes`` that qualify, or its pool's ``placementGroup``);
``dependency``     it waits for parent tasks (``parents``: each ``uuid``, ``name``, ``state``
                   and the final states it accepts, ``conditions``);
``constraint``     no node kind satisfies its hardware constraints (``constraints``,
                   ``offered``): the scheduler cancels it when it reaches a slot;
``pool``           its pool has no free ready slot (``pool``: ``uuid``, ``name``, ``state``,
                   ``closing``, ``targetSlots``, ``readySlots``, ``preparingSlots``,
                   ``busySlots``; ``ahead``);
``capacity``       every executor slot outside pools is busy (``busySlots``, ``totalSlots``,
                   ``ahead``: runnable instances of older tasks the scheduler takes first);
``dispatching``    a slot is free for it: the scheduler's next round starts it;
``queue_timeout``  ``maxTimeQueueSeconds``: instances not started by ``deadline``
                   (``secondsLeft``) are cancelled.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I
from qcompute.states import PoolState as P
from qcompute.states import TaskState as T

from ..db.models import Instance, Pool, PoolSlot, Task, TaskDependency, User, utcnow
from ..executors.base import InstanceKey
from .lifecycle import format_ranges
from .pools import PREPARING, READY
from .queueing import instances_ahead, unsatisfiable
from .tasks import get_task
from .wire import iso

if TYPE_CHECKING:
    from ..scheduler import Scheduler

__all__ = ["explain_task"]


def _reason(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "message": message, **details}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def explain_task(session: Session, user: User, task_uuid: str,
                 scheduler: "Scheduler") -> dict[str, Any]:
    """``{"uuid", "state", "instances": {state: count}, "reasons": [...]}`` (see the module
    docstring). Another user's task is a 404 (``task_not_found``)."""
    task = get_task(session, user, task_uuid)
    ids_by_state: dict[str, list[int]] = {}
    for instance_id, state in session.execute(select(Instance.instance_id, Instance.state)
                                              .where(Instance.task_id == task.id)):
        ids_by_state.setdefault(state, []).append(instance_id)
    counts = {state: len(ids) for state, ids in ids_by_state.items()}
    doc = {"uuid": task.uuid, "state": task.state, "instances": counts, "reasons": []}
    reasons: list[dict[str, Any]] = doc["reasons"]
    if T(task.state).is_final():
        reasons.append(_final(task, ids_by_state.get(I.FAILED.value, [])))
        return doc
    running = sum(n for state, n in counts.items() if I(state).is_active())
    queued = counts.get(I.QUEUED.value, 0)
    if running:
        reasons.append(_reason(
            "running", f"{running} of {task.instance_count} instances "
            f"{'is' if running == 1 else 'are'} running" +
            (f"; {queued} still queued" if queued else ""),
            running=running, queued=queued, total=task.instance_count))
    if counts.get(I.DISPATCHED.value):
        reasons.extend(_placing(session, task, scheduler))
    if task.abort_requested:
        reasons.append(_reason("aborting", "the task is being cancelled (an abort was asked): "
                               "what still runs is being stopped"))
        return doc
    if not queued:
        return doc
    if task.waiting_on:
        reasons.append(_dependencies(session, task))
    why = unsatisfiable(scheduler.settings, task.document)
    if why:
        reasons.append(_reason(
            "constraint", why + "; the scheduler cancels the task when it reaches a slot",
            constraints=task.document.get("hardwareConstraints"),
            offered=[node.to_json() for node in scheduler.settings.node_kinds]))
    elif not task.waiting_on:
        reasons.append(_slots(session, task, scheduler, queued))
    reasons.extend(_queue_timeout(task, session))
    return doc


def _placing(session: Session, task: Task, scheduler: "Scheduler") -> list[dict[str, Any]]:
    """The dispatched instances the executor has not given a node yet, and what they wait for
    (an executor that starts what it is handed at once says nothing)."""
    waiting = []
    for instance_id, attempt in session.execute(
            select(Instance.instance_id, Instance.attempt).where(
                Instance.task_id == task.id, Instance.state == I.DISPATCHED.value)
            .order_by(Instance.instance_id)):
        why = scheduler.executor.waiting(InstanceKey(task.uuid, instance_id, attempt))
        if why:
            waiting.append({"instanceId": instance_id, **why})
    if not waiting:
        return []
    ids = format_ranges([w["instanceId"] for w in waiting])
    return [_reason("placing", f"{_plural(len(waiting), 'instance')} ({ids}) "
                    f"{'waits' if len(waiting) == 1 else 'wait'} for a node: "
                    f"{waiting[0]['message']}", instances=waiting)]


def _final(task: Task, failed: list[int]) -> dict[str, Any]:
    message = f"the task ended {task.state}: nothing more will run"
    if failed:
        message += f"; {_plural(len(failed), 'instance')} failed ({format_ranges(failed)})"
    errors = [e for e in task.errors or () if isinstance(e, dict)]
    if errors:
        message += "; " + "; ".join(str(e.get("message")) for e in errors[:3])
    return _reason("final", message, state=task.state, failedRange=format_ranges(failed),
                   errors=errors)


def _dependencies(session: Session, task: Task) -> dict[str, Any]:
    deps = list(session.scalars(select(TaskDependency).where(
        TaskDependency.task_id == task.id, TaskDependency.actual_final_state.is_(None))))
    found = {uuid: (name, state) for uuid, name, state in session.execute(
        select(Task.uuid, Task.name, Task.state).where(
            Task.uuid.in_([d.parent_uuid for d in deps]), Task.owner_id == task.owner_id))}
    parents = [{"uuid": d.parent_uuid, "name": found.get(d.parent_uuid, (None, None))[0],
                "state": found.get(d.parent_uuid, (None, "Deleted"))[1],
                "conditions": d.conditions or ["success", "failure", "cancelled"]}
               for d in deps]
    listed = ", ".join(f"{p['name'] or p['uuid']} ({p['uuid']}, {p['state']})" for p in parents)
    return _reason(
        "dependency", f"waiting for {_plural(len(parents), 'parent task')} to end: {listed}. "
        "If a parent ends in a state this task does not accept, the task is cancelled",
        parents=parents)


def _slots(session: Session, task: Task, scheduler: "Scheduler", queued: int) -> dict[str, Any]:
    """The queue the task waits in: its pool's, or the executor slots no pool holds."""
    ahead = instances_ahead(session, task) or 0
    if task.pool_id is not None:
        return _pool(session, task, scheduler, ahead)
    busy, total = scheduler.general_slots(session)
    if total - busy > ahead:
        return _reason("dispatching", f"a slot is free ({busy} of {total} busy): the "
                       "scheduler starts its queued instances at its next round",
                       ahead=ahead, busySlots=busy, totalSlots=total)
    held = scheduler.executor.capacity - total
    return _reason(
        "capacity", f"waiting for a slot: {busy} of {total} executor slots are busy"
        + (f" ({held} more are held by pools)" if held else "")
        + f", and {_plural(ahead, 'instance')} of earlier tasks "
        f"{'is' if ahead == 1 else 'are'} ahead of it in the queue "
        f"({_plural(queued, 'instance')} of this task queued)",
        ahead=ahead, busySlots=busy, totalSlots=total, queued=queued)


def _pool(session: Session, task: Task, scheduler: "Scheduler", ahead: int) -> dict[str, Any]:
    pool = session.get(Pool, task.pool_id)
    slots = Counter(session.scalars(select(PoolSlot.state).where(PoolSlot.pool_id == pool.id)))
    busy = scheduler.pools.busy_in(pool.id)
    info = {"uuid": pool.uuid, "name": pool.name, "state": pool.state,
            "closing": pool.close_requested, "targetSlots": pool.slot_target,
            "readySlots": slots[READY], "preparingSlots": slots[PREPARING], "busySlots": busy}
    name = f"pool {pool.name} ({pool.uuid})"
    if pool.close_requested or P(pool.state).is_final():
        return _reason("pool", f"{name} is {'closing' if pool.close_requested else pool.state}"
                       ": its unfinished tasks are cancelled", pool=info, ahead=ahead)
    if slots[READY] - busy > ahead:
        return _reason("dispatching", f"{name} has a free ready slot: the scheduler starts "
                       "its queued instances at its next round", pool=info, ahead=ahead)
    if not slots[READY]:
        return _reason(
            "pool", f"{name} is {pool.state}: none of its {pool.slot_target} slots is ready yet "
            f"({slots[PREPARING]} preparing"
            + (", the others wait for executor capacity" if slots[PREPARING] < pool.slot_target
               else "")
            + ")", pool=info, ahead=ahead)
    return _reason("pool", f"{name} is full: {busy} of its {slots[READY]} ready slots are busy, "
                   f"and {_plural(ahead, 'instance')} of earlier tasks "
                   f"{'is' if ahead == 1 else 'are'} ahead in its queue", pool=info, ahead=ahead)


def _queue_timeout(task: Task, session: Session) -> list[dict[str, Any]]:
    seconds = task.document.get("maxTimeQueueSeconds")
    if not seconds:
        return []
    if task.queue_deadline is None:
        if task.waiting_on:
            return [_reason("queue_timeout", f"maxTimeQueueSeconds={seconds}: once its parents "
                            "have ended, instances not started within that time are cancelled",
                            maxTimeQueueSeconds=seconds, deadline=None, secondsLeft=None)]
        return []
    never_started = session.scalar(select(Instance.id).where(
        Instance.task_id == task.id, Instance.state == I.QUEUED.value,
        Instance.attempt == 0).limit(1))
    if never_started is None:
        return []
    left = max(0.0, (task.queue_deadline - utcnow()).total_seconds())
    return [_reason("queue_timeout", f"instances not started by {iso(task.queue_deadline)} "
                    f"(in {left:.0f} s, maxTimeQueueSeconds={seconds}) are cancelled",
                    maxTimeQueueSeconds=seconds, deadline=iso(task.queue_deadline),
                    secondsLeft=round(left, 3))]

