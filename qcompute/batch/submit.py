"""A checked batch file onto the cluster: upload the local directories, create the pool, then
the job and its tasks, parents before children (dependencies named by task are sent as uuids).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from ..dependencies import AdvancedDependency, Dependencies
from ..options import RetrySettings, SecretsAccessRights
from ..states import TaskState
from .checks import hardware_constraints
from .models import Batch, Retries, TaskSpec

if TYPE_CHECKING:
    from ..bucket import Bucket
    from ..connection import Connection
    from ..job import Job
    from ..pool import Pool
    from ..task import Task

__all__ = ["BatchRun", "submit_batch", "levels"]

logger = logging.getLogger(__name__)

_UNMET = "dependencyConditionsNotFulfilled"  # dependencies.state of a task they cancelled


@dataclass
class BatchRun:
    """A submitted batch file: its job, its tasks by name (in the file's order), and the pool it
    created, if any.

    Attributes:
        batch: the file, as read.
        job: the job holding the tasks.
        tasks: name -> :class:`~qcompute.Task`.
        pool: the pool created by the file's ``[pool]``, or None.
    """

    batch: Batch
    job: "Job"
    tasks: dict[str, "Task"]
    pool: Optional["Pool"] = None

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until every task is final (see :meth:`~qcompute.Connection.wait_tasks`).

        Returns:
            True when all are final, False on timeout.
        """
        return self.job._conn.wait_tasks(list(self.tasks.values()), timeout)

    def _ended(self, state: TaskState, skipped: bool) -> list[str]:
        found = []
        for name, task in self.tasks.items():
            unmet = (task._data.get("dependencies") or {}).get("state") == _UNMET
            if task._data.get("state") == state.value and unmet == skipped:
                found.append(name)
        return found

    @property
    def failed(self) -> list[str]:
        """The tasks that failed: ended in Failure, or Cancelled for another reason than
        their dependencies (aborted, timed out). From the cached states: :meth:`wait` first."""
        return [name for name in self.tasks
                if name in self._ended(TaskState.FAILURE, False)
                or name in self._ended(TaskState.CANCELLED, False)]

    @property
    def skipped(self) -> list[str]:
        """The tasks cancelled because a parent did not end as they needed (a task waiting
        for a failure, when there was none; the dependants of a failed task)."""
        return self._ended(TaskState.CANCELLED, True)

    def download_results(self, progress: Any = True) -> Optional[str]:
        """Download the results bucket to the file's ``results.download_to`` (relative to the
        file), keeping files already there with the same content.

        Returns:
            The local directory, or None when the file names none.
        """
        results = self.batch.results
        if results is None or results.download_to is None:
            return None
        target = self.batch.base_dir / results.download_to
        bucket = self.job._conn.retrieve_bucket(results.bucket)
        bucket.get_all_files(target, progress=progress)
        return str(target)


def levels(batch: Batch) -> list[list[TaskSpec]]:
    """The tasks in submission rounds: each round's parents are all in earlier rounds (the file
    has no cycle: it was checked)."""
    done: set[str] = set()
    left = list(batch.tasks)
    rounds = []
    while left:
        ready = [t for t in left if all(d.task in done for d in t.depends_on)]
        rounds.append(ready)
        done.update(t.name for t in ready)
        left = [t for t in left if t.name not in done]
    return rounds


def _retries(spec: Optional[Retries]) -> Optional[RetrySettings]:
    return None if spec is None else RetrySettings(spec.max_total, spec.max_per_instance)


def _dependencies(spec: TaskSpec, uuids: dict[str, str]) -> Dependencies:
    """Simple when every parent must succeed; advanced (with the conditions) otherwise."""
    if all(d.when == ["success"] for d in spec.depends_on):
        return Dependencies(tuple(uuids[d.task] for d in spec.depends_on))
    return Dependencies(advanced=tuple(
        AdvancedDependency(uuids[d.task], None if "any" in d.when else tuple(d.when))
        for d in spec.depends_on))


def _task(conn: "Connection", batch: Batch, spec: TaskSpec, job: "Job",
          pool: Optional["Pool"], buckets: dict[str, "Bucket"],
          uuids: dict[str, str]) -> "Task":
    where = {"pool": pool} if spec.profile is None else {"profile_or_pool": spec.profile}
    task = conn.create_task(spec.name, instancecount_or_range=spec.range or spec.instances or 1,
                            job=job, **where)
    task.constants = dict(spec.all_constants)
    task.tags = list(spec.tags)
    task.labels = dict(spec.labels)
    task.resources = [buckets[name] for name in spec.resources]
    if batch.results is not None:
        task.results = buckets[""]
    if spec.depends_on:
        task.dependencies = _dependencies(spec, uuids)
    if spec.retries is not None:
        task.retry_settings = _retries(spec.retries)  # type: ignore[assignment]
    if spec.secrets or spec.secret_prefixes:
        task.secrets_access_rights = SecretsAccessRights(list(spec.secrets),
                                                         list(spec.secret_prefixes))
    task.hardware_constraints = hardware_constraints(spec.hardware)
    for attr in ("results_whitelist", "results_blacklist", "max_time_queue_seconds"):
        if getattr(spec, attr) is not None:
            setattr(task, attr, getattr(spec, attr))
    return task


def _pool(conn: "Connection", batch: Batch) -> "Pool":
    spec = batch.pool
    assert spec is not None
    pool = conn.create_pool(spec.name, spec.profile, spec.instances)
    pool.constants = dict(spec.constants)
    pool.tags = list(spec.tags)
    pool.hardware_constraints = hardware_constraints(spec.hardware)
    if spec.retries is not None:
        pool.default_retry_settings = _retries(spec.retries)  # type: ignore[assignment]
    return pool.submit()


def submit_batch(conn: "Connection", batch: Batch, *, progress: Any = True) -> BatchRun:
    """Upload, create and submit a checked batch: local directories mirrored into their buckets
    (with ``progress`` bars), the results bucket created, the ``[pool]`` submitted, then the job
    (``use_dependencies``) and its tasks, one bulk ``POST /tasks`` per round of
    :func:`levels`.

    If a step fails once the job exists, the job is terminated (its submitted tasks aborted)
    and the pool closed before the error is raised, so nothing is left half-running.
    """
    base = batch.base_dir
    buckets: dict[str, "Bucket"] = {}
    for name, res in batch.resources.items():
        bucket = conn.create_bucket(res.bucket)
        if res.path is not None:
            logger.info("uploading %s to bucket %s%s", base / res.path, res.bucket,
                        f" under {res.prefix}" if res.prefix else "")
            bucket.sync_directory(base / res.path, remote=res.prefix, progress=progress)
        if res.prefix:
            bucket = bucket.with_filtering(res.prefix).with_resource_transformation(res.prefix)
        buckets[name] = bucket
    if batch.results is not None:
        buckets[""] = conn.create_bucket(batch.results.bucket)
    pool = _pool(conn, batch) if batch.pool is not None else None
    job = conn.create_job(batch.name, use_dependencies=True)
    job.tags = list(batch.tags)
    if batch.max_wall_time is not None:
        job.max_wall_time = batch.max_wall_time
    try:
        job.submit()
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    tasks: dict[str, "Task"] = {}
    try:
        uuids: dict[str, str] = {}
        for round_ in levels(batch):
            made = [_task(conn, batch, spec, job, pool, buckets, uuids) for spec in round_]
            conn.submit_tasks(made)
            for task in made:
                tasks[task.name] = task
                uuids[task.name] = str(task.uuid)
    except BaseException:
        logger.warning("submitting batch %s failed: terminating job %s", batch.name, job.uuid)
        job.terminate()
        if pool is not None:
            pool.close()
        raise
    ordered = {spec.name: tasks[spec.name] for spec in batch.tasks}
    return BatchRun(batch, job, ordered, pool)

