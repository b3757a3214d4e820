"""A task's timeline: when it was accepted, and when each instance's current attempt reached
each step on its way, from the server's and the runner's own clocks (epoch seconds).

The scheduler writes an instance's ``timeline`` with its dispatch (``dispatched``) and with its
end (the rest); the runner's steps travel in its ``Finished`` event (see
:class:`~qcompute.server.executors.base.Finished`). Nothing here is on the hot path: the column
is deferred, and only this read loads it.
"""
from __future__ import annotations

from datetime import timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import Instance, User
from .tasks import get_task

__all__ = ["STEPS", "task_timeline"]

# The steps in the order an attempt passes them, with their wire names. A step not reached
# (yet) is left out; ``sandboxReady`` only exists for sandboxed instances.
STEPS = {
    "dispatched": "dispatched",  # the scheduler marked it dispatched (before its commit)
    "handed_over": "handedOver",  # ... and handed its spec to the executor (after the commit)
    "runner_started": "runnerStarted",  # a runner took the spec
    "command_started": "commandStarted",  # the runner starts the command's process
    "sandbox_ready": "sandboxReady",  # the sandbox's init runs; the command starts in it
    "command_ended": "commandEnded",  # the runner saw the command exit
    "results_uploaded": "resultsUploaded",  # the results step is over (an upload, or none)
    "runner_ended": "runnerEnded",  # the working directory is removed; the end is reported
    "ended": "ended",  # the scheduler recorded the end (before its commit)
}


def task_timeline(session: Session, user: User, task_uuid: str) -> dict[str, Any]:
    """``GET /tasks/{uuid}/timeline``: ``submitted`` (the task was accepted: its
    ``creationDate``), then each instance's ``attempt``, ``state`` and ``timeline``. Another
    user's task is a 404 (``task_not_found``)."""
    task = get_task(session, user, task_uuid)
    rows = session.execute(
        select(Instance.instance_id, Instance.attempt, Instance.state, Instance.timeline)
        .where(Instance.task_id == task.id).order_by(Instance.rank))
    return {
        "uuid": task.uuid,
        "submitted": task.created_at.replace(tzinfo=timezone.utc).timestamp(),
        "instances": [{"instanceId": instance_id, "attempt": attempt, "state": state,
                       "timeline": _in_order(stamps or {})}
                      for instance_id, attempt, state, stamps in rows],
    }


def _in_order(stamps: dict[str, float]) -> dict[str, float]:
    return {wire: stamps[step] for step, wire in STEPS.items() if step in stamps}
