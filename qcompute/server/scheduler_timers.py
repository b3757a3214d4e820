"""The scheduler's clock: what is due once a second.

* ``maxTimeQueueSeconds``: instances that never started by the deadline are cancelled;
* a job's ``maxWallTime``: the job is terminated, its unfinished tasks cancelled with the reason;
* ``autoDeleteOnCompletion``: finished tasks, completed jobs and closed pools are collected
  ``completionTimeToLive`` after they ended.

Every timer is an indexed column, so a tick costs what is due, not the size of the tables.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I
from qcompute.states import JobState as J

from .db.models import Instance, Job, Pool, Task, User, utcnow
from .services.jobs import delete_job, terminate_job
from .services.lifecycle import format_ranges
from .services.tasks import move_instance, remove_task

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)

__all__ = ["Timers"]

_BATCH = 500  # objects handled per tick and per timer: a backlog drains over a few ticks


class Timers:
    def __init__(self, scheduler: "Scheduler") -> None:
        self.scheduler = scheduler

    def run(self, session: Session, touched: dict[int, Task]) -> None:
        now = utcnow()
        self._queue_timeouts(session, now, touched)
        self._wall_times(session, now, touched)
        self._collect(session, now)

    def _queue_timeouts(self, session: Session, now, touched: dict[int, Task]) -> None:
        for task in session.scalars(select(Task).where(Task.queue_deadline <= now)
                                    .limit(_BATCH)):
            task.queue_deadline = None
            waiting = list(session.scalars(select(Instance).where(
                Instance.task_id == task.id, Instance.state == I.QUEUED.value,
                Instance.attempt == 0)))
            if not waiting:
                continue
            for instance in waiting:
                move_instance(task, instance, I.CANCELLED)
            seconds = task.document.get("maxTimeQueueSeconds")
            task.errors = [*task.errors, {
                "code": "queue_timeout", "debug": None,
                "message": f"instances {format_ranges(i.instance_id for i in waiting)} waited "
                           f"more than maxTimeQueueSeconds={seconds} s for a slot"}]
            touched[task.id] = task

    def _wall_times(self, session: Session, now, touched: dict[int, Task]) -> None:
        for job in session.scalars(select(Job).where(Job.wall_deadline <= now).limit(_BATCH)):
            job.wall_deadline = None
            if job.state != J.ACTIVE.value:
                continue
            owner = session.get(User, job.owner_id)
            reason = (f"job {job.uuid} exceeded its maxWallTime "
                      f"{job.document.get('maxWallTime')}: terminated")
            for task_id in terminate_job(session, owner, job, reason):
                task = session.get(Task, task_id)
                self.scheduler._cancel_task(session, task)
                touched[task.id] = task
            log.info(reason)

    def _collect(self, session: Session, now) -> None:
        discard = self.scheduler.discard_files
        for task in session.scalars(select(Task).where(Task.delete_after <= now).limit(_BATCH)):
            remove_task(session, task)
            discard(task.uuid)
        for job in session.scalars(select(Job).where(Job.delete_after <= now).limit(_BATCH)):
            owner = session.get(User, job.owner_id)
            for task in delete_job(session, owner, job.uuid, force=True):
                discard(task.uuid)
        for pool in session.scalars(select(Pool).where(Pool.delete_after <= now).limit(_BATCH)):
            session.delete(pool)  # tasks.pool_id: ON DELETE SET NULL
            discard(pool.uuid)
