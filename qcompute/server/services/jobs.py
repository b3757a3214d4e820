"""Jobs: a named group of tasks, optionally in a pool, optionally with dependencies.

States: Active (takes tasks) → Terminating (its unfinished tasks are being cancelled) →
Completed. ``terminate`` and an exceeded ``maxWallTime`` start the end; Deleting is what the
client shows after ``delete``. Services validate and write; they never commit.
"""
from __future__ import annotations

import uuid as uuidlib
from datetime import datetime
from typing import Optional

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from qcompute.states import JobState as J
from qcompute.states import TaskState as T

from ..db.models import Instance, Job, JobTag, Pool, Task, User, utcnow
from ..errors import BadRequest, Forbidden
from ..schemas.common import parse_timespan
from ..schemas.pools import JobSubmit
from .owned import find_owned
from .pools import completion_deadline, open_pool_for_tasks
from .tasks import request_abort

__all__ = ["submit_job", "get_job", "terminate_job", "delete_job", "refresh_job_state",
           "job_tasks"]


def submit_job(session: Session, user: User, doc: JobSubmit) -> Job:
    pool: Optional[Pool] = open_pool_for_tasks(session, user, doc.pool_uuid) \
        if doc.pool_uuid else None
    now = utcnow()
    job_uuid = str(uuidlib.uuid4())
    document = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    document.pop("state", None)  # the official SDK sends its local "" state
    job = Job(uuid=job_uuid, owner_id=user.id, name=doc.name, shortname=doc.shortname or job_uuid,
              pool_id=pool.id if pool else None, document=document,
              use_dependencies=doc.use_dependencies, state=J.ACTIVE.value,
              state_transition_time=now, created_at=now, updated_at=now, errors=[],
              tags=[JobTag(tag=t, position=n) for n, t in enumerate(dict.fromkeys(doc.tags or ()))])
    if doc.max_wall_time:
        span = parse_timespan(doc.max_wall_time)
        if span.total_seconds() <= 0:
            raise BadRequest("maxWallTime must be positive", code="invalid_job")
        job.wall_deadline = now + span
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, user: User, job_uuid: str) -> Job:
    return find_owned(session, Job, user, job_uuid, "job")


def job_tasks(session: Session, job: Job) -> list[Task]:
    return list(session.scalars(select(Task).where(Task.job_id == job.id).order_by(Task.id)))


def _transition(job: Job, state: J, now: datetime) -> None:
    if job.move_to(state.value, now, final=state.is_final()) and state.is_final():
        job.delete_after = completion_deadline(job.document, now)


def terminate_job(session: Session, user: User, job: Job, reason: Optional[str] = None) -> list[int]:
    """Start the end of a job: its unfinished tasks are aborted (their errors carry the reason).
    Returns the ids of the tasks the scheduler must stop."""
    if job.state != J.ACTIVE.value:
        raise Forbidden(f"job {job.uuid} is already {job.state}", code="job_not_active")
    now = utcnow()
    if reason:
        job.errors = [*job.errors, {"code": "job_terminated", "message": reason, "debug": None}]
    aborted = []
    for task in job_tasks(session, job):
        if T(task.state).is_final():
            continue
        if reason:
            task.errors = [*task.errors, {"code": "job_terminated", "message": reason,
                                          "debug": None}]
        request_abort(session, user, task.uuid)
        aborted.append(task.id)
    _transition(job, J.TERMINATING, now)
    refresh_job_state(session, job, now)
    return aborted


def refresh_job_state(session: Session, job: Job, now: Optional[datetime] = None) -> bool:
    """Terminating → Completed once every task of the job is final. True if it changed."""
    if job.state != J.TERMINATING.value:
        return False
    unfinished = session.scalar(select(exists().where(Task.job_id == job.id,
                                                      Task.ended_at.is_(None))))
    if unfinished:
        return False
    _transition(job, J.COMPLETED, now or utcnow())
    return True


def delete_job(session: Session, user: User, job_uuid: str, force: bool) -> list[Task]:
    """Delete a job and its tasks. Unfinished tasks need ``force`` (they are stopped).
    Returns the deleted tasks (the route stops what still runs and drops their output)."""
    job = get_job(session, user, job_uuid)
    tasks = job_tasks(session, job)
    running = [t for t in tasks if not T(t.state).is_final()]
    if running and not force:
        raise Forbidden(f"job {job_uuid} has {len(running)} unfinished tasks: terminate it "
                        "first, or delete with force=true", code="job_running")
    ids = [t.id for t in tasks]
    if ids:
        session.execute(delete(Instance).where(Instance.task_id.in_(ids)))
        session.execute(delete(Task).where(Task.id.in_(ids)))
    session.delete(job)
    return tasks
