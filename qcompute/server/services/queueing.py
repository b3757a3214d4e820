"""What the scheduler dispatches next: the rules shared by its dispatch and by
``GET /tasks/{uuid}/explain``, so that an explanation cannot drift from what the scheduler does.

A queued instance is runnable when its task is not being aborted and waits on no parent task.
Each queue (one per pool, and one for tasks outside pools) is served oldest instance first,
into that pool's free ready slots or into the executor slots that no pool holds.
"""
from __future__ import annotations

from typing import Any, Optional

from sqlalchemy import ColumnElement, Select, func, select

from qcompute.states import InstanceState as I

from ..db.models import Instance, Task
from ..errors import BadRequest
from ..settings import ServerSettings
from .hardware import unmet_constraints

__all__ = ["runnable_queued", "queue_of", "instances_ahead", "unsatisfiable"]


def _runnable(where: ColumnElement[bool]) -> tuple[ColumnElement[bool], ...]:
    return (Instance.state == I.QUEUED.value, Task.abort_requested.is_(False),
            Task.waiting_on == 0, where)


def runnable_queued(where: ColumnElement[bool]) -> Select[Any]:
    """``(Instance, Task)`` rows of the runnable queued instances in the queue ``where``
    (see :func:`queue_of`), in dispatch order."""
    return (select(Instance, Task).join(Task, Instance.task_id == Task.id)
            .where(*_runnable(where)).order_by(Instance.id))


def queue_of(pool_id: Optional[int]) -> ColumnElement[bool]:
    """The queue a task waits in: its pool's, or the one outside pools."""
    return Task.pool_id == pool_id if pool_id is not None else Task.pool_id.is_(None)


def instances_ahead(session, task: Task) -> Optional[int]:
    """How many runnable queued instances of other tasks the scheduler takes before this
    task's first queued one; ``None`` when the task has none queued."""
    first = session.scalar(select(func.min(Instance.id)).where(
        Instance.task_id == task.id, Instance.state == I.QUEUED.value))
    if first is None:
        return None
    return session.scalar(select(func.count()).select_from(Instance)
                          .join(Task, Instance.task_id == Task.id)
                          .where(*_runnable(queue_of(task.pool_id)), Instance.id < first)) or 0


def unsatisfiable(settings: ServerSettings, document: dict[str, Any]) -> Optional[str]:
    """Why no node kind of this cluster satisfies the document's ``hardwareConstraints`` (a
    task stored before the operator changed the node kinds), or ``None``. The scheduler cancels
    such a task rather than run it on hardware it excludes."""
    try:
        return unmet_constraints(settings.node_kinds, document.get("hardwareConstraints"))
    except BadRequest as exc:  # validated at submit: only a row from an older server
        return exc.message
