"""The scheduler's control of running instances: snapshots and resource refreshes.

The API commits a request (a Snapshot row, a new periodic config, a bumped resources version)
and then posts an event; the scheduler loop applies it here, commits, and only then
:meth:`InstanceControls.send` forwards it to the executor, for the task's instances in flight.
Instances dispatched later get the periodic snapshot in their spec, and download the current
resources anyway when they start. Executor reports (SnapshotDone) come back through the loop.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Optional

from sqlalchemy.orm import Session

from .db.models import Task
from .executors.base import (InstanceKey, ResourcesRefreshed, SnapshotDone,
                             SnapshotRequest)
from .services.snapshots import SnapshotTracker, periodic_snapshot

if TYPE_CHECKING:
    from .executors.base import Executor
    from .scheduler import Scheduler

__all__ = ["InstanceControls", "TakeSnapshot", "PeriodicChanged", "RefreshResources"]

log = logging.getLogger(__name__)


_Control = tuple[InstanceKey, Callable[[], None], Optional[Callable[[Exception], None]]]


@dataclass(frozen=True)
class TakeSnapshot:
    task_id: int
    snapshot_uuid: str


@dataclass(frozen=True)
class PeriodicChanged:
    task_id: int


@dataclass(frozen=True)
class RefreshResources:
    task_id: int


class InstanceControls:
    def __init__(self, scheduler: "Scheduler") -> None:
        self.scheduler = scheduler
        self.snapshots = SnapshotTracker()
        self._outbox: list[_Control] = []  # sent after the commit

    def apply(self, session: Session, event: Any, touched: dict[int, Task]) -> bool:
        """Apply ``event`` if it is one of ours; False otherwise."""
        if isinstance(event, SnapshotDone):
            task = self.snapshots.done(session, event)
            if task is not None:
                touched[task.id] = task
        elif isinstance(event, ResourcesRefreshed):
            if not event.ok:
                log.warning("refreshing the resources of %s failed: %s", event.key, event.error)
        elif isinstance(event, TakeSnapshot):
            task = session.get(Task, event.task_id)
            for key, request in self.snapshots.take(session, event.snapshot_uuid,
                                                    self._in_flight(task)):
                self._queue(key, partial(self._executor.snapshot, key, request),
                            on_error=partial(self._undelivered, key, request))
        elif isinstance(event, PeriodicChanged):
            task = session.get(Task, event.task_id)
            if task is not None:
                interval, periodic = periodic_snapshot(session, task)
                for key in self._in_flight(task):
                    self._queue(key, partial(self._executor.set_periodic_snapshot, key,
                                             interval, periodic))
        elif isinstance(event, RefreshResources):
            for key in self._in_flight(session.get(Task, event.task_id)):
                self._queue(key, partial(self._executor.refresh_resources, key))
        else:
            return False
        return True

    def instance_ended(self, session: Session, key: InstanceKey) -> None:
        self.snapshots.instance_ended(session, key)

    def spec_fields(self, session: Session, task: Task) -> dict[str, Any]:
        """The InstanceSpec fields of the task's periodic snapshot."""
        interval, request = periodic_snapshot(session, task)
        return {"snapshot_interval_sec": interval, "periodic_snapshot": request}

    def send(self) -> None:
        """After the round's commit: forward what was applied to the executor."""
        outbox, self._outbox = self._outbox, []
        for key, call, on_error in outbox:
            try:
                call()
            except Exception as exc:  # the instance ended meanwhile, or its worker is gone
                log.info("control of %s not delivered: %s", key, exc)
                if on_error is not None:
                    on_error(exc)

    def discard(self) -> None:
        """The round failed (rolled back): nothing of it is sent."""
        self._outbox = []

    def reconcile(self, session: Session) -> None:
        failed = self.snapshots.fail_unfinished(session)
        if failed:
            log.info("%d snapshots left open by the previous server failed", failed)

    # -- helpers ------------------------------------------------------------------------------

    def _undelivered(self, key: InstanceKey, request: SnapshotRequest,
                     exc: Exception) -> None:
        """The executor could not reach the instance: its part of the snapshot failed."""
        self.scheduler._on_executor_event(SnapshotDone(
            key, request.snapshot_id, ok=False, error=f"the executor could not reach it: {exc}"))

    @property
    def _executor(self) -> "Executor":
        return self.scheduler.executor

    def _in_flight(self, task: Optional[Task]) -> list[InstanceKey]:
        return self.scheduler.running_keys([task.uuid]) if task is not None else []

    def _queue(self, key: InstanceKey, call: Callable[[], None],
               on_error: Optional[Callable[[Exception], None]] = None) -> None:
        self._outbox.append((key, call, on_error))
