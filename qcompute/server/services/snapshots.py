"""Snapshots of running tasks, and resource refreshes (reference §1.3, §2.5).

API side (write and never commit, like every service): :func:`set_periodic`,
:func:`trigger_snapshot`, :func:`get_snapshot`, :func:`update_resources`. Scheduler side:
:class:`SnapshotTracker` follows each snapshot over the task's instances in flight and turns
their ``SnapshotDone`` reports into the snapshot's status.

* An instant snapshot asks every instance in flight to upload its result files (changed ones
  only) to the snapshot's bucket. It is ``InProgress`` once the requests are sent, ``Success``
  when every instance reported success, ``Failure`` as soon as one failed or ended without
  reporting. Only the four dialect statuses ever appear (any other text makes the official
  SDK's ``wait_snapshot`` loop forever).
* The periodic snapshot is one row per task (``periodic=True``), replaced by each POST. Its
  interval and config go into the spec of every instance dispatched later; instances already
  running get them through the executor at once. The runner uploads every interval by itself
  while the command runs; each round reports with the row's id, and the row shows the last
  round's outcome (``Triggered`` until the first one).
* Defaults: whitelist/blacklist from the body, else the task's ``snapshotWhitelist`` /
  ``snapshotBlacklist``, else its ``resultsWhitelist`` / ``resultsBlacklist``; the bucket from
  the body, else the task's ``resultBucket`` (none at all: 400); the key prefix from the body,
  else none.
"""
from __future__ import annotations

import logging
import uuid as uuidlib
from datetime import datetime
from typing import Any, Iterable, Optional

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I
from qcompute.states import SnapshotState as S
from qcompute.states import TaskState as T

from ..db.models import Snapshot, Task, User, utcnow
from ..errors import BadRequest, Forbidden, NotFound
from ..executors.base import InstanceKey, SnapshotDone, SnapshotRequest
from ..schemas.snapshots import PeriodicSnapshot, SnapshotConfig
from .tasks import get_task
from .wire import iso

__all__ = ["set_periodic", "trigger_snapshot", "get_snapshot", "snapshot_to_json",
           "update_resources", "periodic_snapshot", "SnapshotTracker"]

log = logging.getLogger(__name__)

MAX_SNAPSHOT_RESULTS = 50  # keys kept in the task's status.runningInstancesInfo.snapshotResults


def _not_running(task: Task, what: str) -> Forbidden:
    return Forbidden(f"invalid operation on a task that is not running: task {task.uuid} is "
                     f"{task.state}; {what}", code="task_not_running")


def _config(user: User, task: Task, body: SnapshotConfig) -> dict[str, Any]:
    doc = task.document
    bucket = body.bucket or doc.get("resultBucket")
    if not bucket:
        raise BadRequest("a snapshot needs a bucket: give one, or submit the task with a "
                         "resultBucket", code="no_snapshot_bucket")
    if user.bucket_prefix and not bucket.startswith(user.bucket_prefix):
        raise Forbidden(f"bucket {bucket!r} is outside your bucket prefix "
                        f"{user.bucket_prefix!r}", code="bucket_forbidden")
    return {
        "whitelist": body.whitelist or doc.get("snapshotWhitelist") or doc.get("resultsWhitelist"),
        "blacklist": body.blacklist or doc.get("snapshotBlacklist") or doc.get("resultsBlacklist"),
        "bucket": bucket,
        "bucketPrefix": body.bucket_prefix or "",
    }


def _request(snap: Snapshot) -> SnapshotRequest:
    config = snap.config
    return SnapshotRequest(snapshot_id=snap.uuid, bucket=config["bucket"],
                           prefix=config.get("bucketPrefix") or "",
                           whitelist=config.get("whitelist"), blacklist=config.get("blacklist"))


def _periodic_row(session: Session, task_id: int) -> Optional[Snapshot]:
    return session.scalar(select(Snapshot).where(Snapshot.task_id == task_id,
                                                 Snapshot.periodic.is_(True)))


def set_periodic(session: Session, user: User, task_uuid: str,
                 body: PeriodicSnapshot) -> tuple[Task, Snapshot]:
    """Create or replace the task's periodic snapshot. Refused (403) once the task is final."""
    task = get_task(session, user, task_uuid)
    if T(task.state).is_final():
        raise _not_running(task, "periodic snapshots apply to tasks not finished yet")
    config, now = _config(user, task, body), utcnow()
    snap = _periodic_row(session, task.id)
    if snap is None:
        snap = Snapshot(uuid=str(uuidlib.uuid4()), task_id=task.id, periodic=True)
        session.add(snap)
    snap.interval_sec, snap.config, snap.status, snap.error = body.interval, config, \
        S.TRIGGERED.value, None
    snap.pending, snap.size_to_upload, snap.transferred_size = 0, 0, 0
    snap.trigger_date = snap.last_update_date = now
    task.snapshot_interval_sec = body.interval
    session.flush()
    return task, snap


def trigger_snapshot(session: Session, user: User, task_uuid: str,
                     body: SnapshotConfig) -> tuple[Task, Snapshot]:
    """Record an instant snapshot (Triggered); the scheduler sends it to the running instances
    once it is committed. The task must have instances running (else 403)."""
    task = get_task(session, user, task_uuid)
    counts = task.instance_counts or {}
    if T(task.state).is_final() or task.abort_requested or not any(
            counts.get(state.value) for state in I if state.is_active()):
        raise _not_running(task, "a snapshot needs running instances")
    now = utcnow()
    snap = Snapshot(uuid=str(uuidlib.uuid4()), task_id=task.id, periodic=False, interval_sec=0,
                    config=_config(user, task, body), status=S.TRIGGERED.value, pending=0,
                    size_to_upload=0, transferred_size=0, trigger_date=now, last_update_date=now)
    session.add(snap)
    session.flush()
    return task, snap


def get_snapshot(session: Session, user: User, task_uuid: str, snapshot_id: str) -> Snapshot:
    task = get_task(session, user, task_uuid)
    snap = session.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_id,
                                                 Snapshot.task_id == task.id))
    if snap is None:
        raise NotFound(f"task {task_uuid} has no snapshot {snapshot_id}",
                       code="snapshot_not_found")
    return snap


def snapshot_to_json(snap: Snapshot, task_uuid: str) -> dict[str, Any]:
    """The Snapshot document (reference §2.5); ``error`` and ``periodic`` are qcompute extras."""
    config = snap.config or {}
    status = snap.status if snap.status in {s.value for s in S} else S.TRIGGERED.value
    return {
        "id": snap.uuid,
        "taskUuid": task_uuid,
        "triggerDate": iso(snap.trigger_date),
        "lastUpdateDate": iso(snap.last_update_date),
        "snapshotConfig": {key: config.get(key)
                           for key in ("whitelist", "blacklist", "bucket", "bucketPrefix")},
        "status": status,
        "sizeToUpload": snap.size_to_upload,
        "transferredSize": snap.transferred_size,
        "periodic": snap.periodic,
        "interval": snap.interval_sec if snap.periodic else None,
        "error": snap.error,
    }


def update_resources(session: Session, user: User, task_uuid: str) -> Task:
    """``PATCH /tasks/{uuid}``: bump the resources version; the scheduler tells the instances in
    flight to download again (queued ones download the new files when they start)."""
    task = get_task(session, user, task_uuid)
    if T(task.state).is_final():
        raise _not_running(task, "its resources cannot be updated")
    session.execute(update(Task).where(Task.id == task.id)
                    .values(resources_version=Task.resources_version + 1))
    session.refresh(task)
    return task


def periodic_snapshot(session: Session, task: Task) -> tuple[int, Optional[SnapshotRequest]]:
    """The periodic snapshot an instance of the task runs with: (interval, request)."""
    if not task.snapshot_interval_sec:
        return 0, None
    snap = _periodic_row(session, task.id)
    return (snap.interval_sec, _request(snap)) if snap is not None else (0, None)


class SnapshotTracker:
    """The scheduler's side: which instances still owe a report, per instant snapshot. Kept in
    memory; after a restart :meth:`fail_unfinished` settles what was left open."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[InstanceKey]] = {}

    def take(self, session: Session, snapshot_uuid: str,
             in_flight: Iterable[InstanceKey]) -> list[tuple[InstanceKey, SnapshotRequest]]:
        """Mark an instant snapshot InProgress over the task's instances in flight; returns what
        to send to the executor (after the commit)."""
        snap = session.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
        if snap is None or snap.status != S.TRIGGERED.value:
            return []
        keys, now = set(in_flight), utcnow()
        snap.last_update_date = now
        if not keys:
            snap.status, snap.error = S.FAILURE.value, "no instance of the task is running"
            return []
        snap.status, snap.pending = S.IN_PROGRESS.value, len(keys)
        self._waiting[snap.uuid] = keys
        request = _request(snap)
        return [(key, request) for key in sorted(keys, key=lambda k: k.instance_id)]

    def done(self, session: Session, event: SnapshotDone) -> Optional[Task]:
        """Apply one instance's report; returns the task it changed."""
        snap = session.scalar(select(Snapshot).where(Snapshot.uuid == event.snapshot_id))
        if snap is None:
            return None
        waiting = self._waiting.get(snap.uuid)
        if not snap.periodic and (waiting is None or event.key not in waiting):
            return None  # stale: settled already
        task = session.get(Task, snap.task_id)
        now = utcnow()
        snap.last_update_date = now
        snap.size_to_upload += event.size
        snap.transferred_size += event.bytes
        if not event.ok:
            message = f"instance {event.key.instance_id}: {event.error or 'snapshot failed'}"
            if snap.periodic or snap.error is None:
                snap.error = message
            snap.status = S.FAILURE.value
        elif snap.periodic:
            snap.status, snap.error = S.SUCCESS.value, None
        if waiting is not None:
            waiting.discard(event.key)
            self._settle(snap, waiting)
        if task is not None and event.keys:
            kept = [k for k in (task.snapshot_results or []) if k not in event.keys]
            task.snapshot_results = (kept + list(event.keys))[-MAX_SNAPSHOT_RESULTS:]
        return task

    def instance_ended(self, session: Session, key: InstanceKey) -> None:
        """An instance finished: the snapshots it still owed fail (it ended first)."""
        for snapshot_uuid, waiting in list(self._waiting.items()):
            if key not in waiting:
                continue
            snap = session.scalar(select(Snapshot).where(Snapshot.uuid == snapshot_uuid))
            waiting.discard(key)
            if snap is None:
                self._waiting.pop(snapshot_uuid, None)
                continue
            snap.status = S.FAILURE.value
            snap.error = snap.error or (f"instance {key.instance_id} ended before its snapshot "
                                        "was taken")
            snap.last_update_date = utcnow()
            self._settle(snap, waiting)

    def _settle(self, snap: Snapshot, waiting: set[InstanceKey]) -> None:
        snap.pending = len(waiting)
        if not waiting:
            self._waiting.pop(snap.uuid, None)
            if snap.status == S.IN_PROGRESS.value:
                snap.status = S.SUCCESS.value

    @staticmethod
    def fail_unfinished(session: Session, now: Optional[datetime] = None) -> int:
        """After a restart no instance runs: instant snapshots left open fail."""
        result = session.execute(
            update(Snapshot)
            .where(Snapshot.periodic.is_(False),
                   Snapshot.status.in_([S.TRIGGERED.value, S.IN_PROGRESS.value]))
            .values(status=S.FAILURE.value, pending=0, last_update_date=now or utcnow(),
                    error="the server restarted before the snapshot was done"))
        return getattr(result, "rowcount", 0) or 0
