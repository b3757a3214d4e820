"""Where a new task goes (its pool and job) and what it waits for (its dependencies)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session, lazyload

from qcompute.states import JobState as J
from qcompute.states import TaskState as T

from ..db.models import Job, Pool, Task, TaskDependency, User
from ..errors import BadRequest, NotFound
from ..schemas import TaskSubmit
from ..schemas.secrets import Privileges
from .owned import find_owned
from .pools import open_pool_for_tasks

__all__ = ["Placement", "place_task", "record_dependencies", "resolve_dependencies",
           "dependents_of", "dependencies_of", "dependencies_json"]


@dataclass
class Placement:
    pool: Optional[Pool] = None
    job: Optional[Job] = None
    constants: dict[str, str] = field(default_factory=dict)  # the pool's, under the task's


def place_task(session: Session, user: User, doc: TaskSubmit) -> Placement:
    """Resolve ``jobUuid`` and ``poolUuid``; a task in a pool takes the pool's profile, its
    constants and resources (under the task's own) and its default retry settings."""
    place = Placement()
    if doc.job_uuid:
        try:  # a missing job or pool on submit is a 400 in the dialect
            place.job = find_owned(session, Job, user, doc.job_uuid, "job")
        except NotFound as exc:
            raise BadRequest(exc.message, code=exc.code) from None
        if place.job.state != J.ACTIVE.value:
            raise BadRequest(f"job {doc.job_uuid} is {place.job.state}: it takes no new tasks",
                             code="job_not_active")
        if place.job.pool_id and not doc.pool_uuid:
            doc.pool_uuid = session.get(Pool, place.job.pool_id).uuid  # type: ignore[union-attr]
    if doc.pool_uuid:
        pool = place.pool = open_pool_for_tasks(session, user, doc.pool_uuid)
        if place.job and place.job.pool_id not in (None, pool.id):
            raise BadRequest(f"job {doc.job_uuid} runs in another pool than {doc.pool_uuid}",
                             code="pool_mismatch")
        if doc.profile and doc.profile != pool.profile:
            raise BadRequest(f"a task in pool {pool.uuid} runs with the pool's profile "
                             f"{pool.profile!r}, not {doc.profile!r}", code="pool_profile")
        doc.profile = pool.profile
        place.constants = {c["key"]: c.get("value") or ""
                           for c in pool.document.get("constants") or ()}
        if doc.retry_settings is None and pool.document.get("defaultRetrySettings"):
            doc.retry_settings = pool.document["defaultRetrySettings"]
        pool_privileges = Privileges.model_validate(pool.document.get("privileges") or {})
        if pool_privileges.export_api_and_storage_credentials_in_environment and not (
                doc.privileges and doc.privileges.export_api_and_storage_credentials_in_environment):
            doc.privileges = pool_privileges  # the pool's privilege covers its tasks
        if doc.wait_for_pool_resources_synchronization is None:
            doc.wait_for_pool_resources_synchronization = bool(
                pool.document.get("taskDefaultWaitForPoolResourcesSynchronization"))
    return place


def record_dependencies(session: Session, task: Task, doc: TaskSubmit,
                        job: Optional[Job]) -> None:
    """Store the task's parents; it waits for all of them (the scheduler resolves them)."""
    try:
        parents = doc.dependencies.parents() if doc.dependencies else {}
    except ValueError as exc:
        raise BadRequest(f"dependencies: {exc}", code="invalid_dependencies") from None
    if not parents:
        return
    if job is None or not job.use_dependencies:
        raise BadRequest("dependencies need a job created with useDependencies=true "
                         "(give jobUuid)", code="dependencies_without_job")
    known = dict(session.execute(select(Task.uuid, Task.job_id).where(
        Task.uuid.in_(list(parents)), Task.owner_id == task.owner_id)).all())
    for parent in parents:
        if parent == task.uuid or known.get(parent) != job.id:
            raise BadRequest(f"dependency {parent} is not a task of job {job.uuid}",
                             code="invalid_dependencies")
    session.add_all(TaskDependency(task_id=task.id, parent_uuid=parent, conditions=conds)
                    for parent, conds in parents.items())
    task.waiting_on = len(parents)


def resolve_dependencies(session: Session, task: Task) -> list[str]:
    """Record the final state of each parent that has one; update ``waiting_on``. Returns the
    reasons the task can no longer run (a parent ended in a state it does not accept)."""
    deps = list(session.scalars(select(TaskDependency).where(TaskDependency.task_id == task.id)))
    states = dict(session.execute(select(Task.uuid, Task.state).where(
        Task.uuid.in_([d.parent_uuid for d in deps]))).all())
    unmet = []
    for dep in deps:
        state = states.get(dep.parent_uuid)
        if dep.actual_final_state is None and state is None:
            dep.actual_final_state = "Deleted"
        elif dep.actual_final_state is None and T(state).is_final():
            dep.actual_final_state = state
        final = dep.actual_final_state
        if final == "Deleted":
            unmet.append(f"parent task {dep.parent_uuid} was deleted before it ended")
        elif final and dep.conditions and final.lower() not in dep.conditions:
            unmet.append(f"parent task {dep.parent_uuid} ended {final}; this task needed "
                         + " or ".join(dep.conditions))
    task.waiting_on = sum(1 for d in deps if d.actual_final_state is None)
    return unmet


def dependents_of(session: Session, parent_uuid: str) -> list[Task]:
    return list(session.scalars(
        select(Task).join(TaskDependency, TaskDependency.task_id == Task.id)
        .options(lazyload(Task.tags))
        .where(TaskDependency.parent_uuid == parent_uuid, Task.ended_at.is_(None))))


def dependencies_of(session: Session, task_ids: list[int]) -> dict[int, list[TaskDependency]]:
    """The parents of each of these tasks (one query for a whole page)."""
    found: dict[int, list[TaskDependency]] = {}
    for dep in session.scalars(select(TaskDependency).where(TaskDependency.task_id.in_(task_ids))):
        found.setdefault(dep.task_id, []).append(dep)
    return found


def dependencies_json(session: Session, task: Task,
                      deps: Optional[list[TaskDependency]] = None) -> Optional[dict]:
    """``dependencies`` of the task document: the parents and how far they are (``deps``:
    already loaded by :func:`dependencies_of`)."""
    if deps is None:
        deps = dependencies_of(session, [task.id]).get(task.id, [])
    submitted = (task.document.get("dependencies") or {})
    if not deps:
        return {"dependsOn": [], "advancedDependsOn": [], "state": None} if submitted else None
    unmet = any(d.actual_final_state and d.conditions
                and d.actual_final_state.lower() not in d.conditions for d in deps)
    state = ("dependencyConditionsNotFulfilled" if unmet or task.state == T.CANCELLED.value
             and task.waiting_on else
             "waiting" if task.waiting_on else "dependencyConditionsFulfilled")
    advanced = submitted.get("advancedDependsOn") is not None
    return {
        "dependsOn": [] if advanced else [d.parent_uuid for d in deps],
        "advancedDependsOn": [
            {"taskUuid": d.parent_uuid, "taskFinalStateCondition": d.conditions or None,
             "state": "waiting" if d.actual_final_state is None else
             ("dependencyConditionsFulfilled" if not d.conditions
              or d.actual_final_state.lower() in d.conditions
              else "dependencyConditionsNotFulfilled"),
             "actualFinalState": d.actual_final_state} for d in deps] if advanced else [],
        "state": state,
    }
