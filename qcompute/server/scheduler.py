"""The scheduler: the only writer of instance states.

One thread, woken by events (a submit, an abort, an executor event), never by sleeps. Each round
1. applies the events and commits them;
2. picks the oldest queued instances that fit the free capacity (an indexed query, so its cost
   follows what it dispatches, not the length of the queue);
3. marks them dispatched, commits, and only then hands them to the executor.
Output chunks do not go through the loop: they are appended to the output store as they arrive.
"""
from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Optional

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from qcompute.states import InstanceState as I

from .changes import TaskChanges
from .db.models import IdempotencyRecord, Instance, Task, utcnow
from .executors.base import (Executor, ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                             Output, Phase, ResourceSpec, S3Access)
from .services.output import OutputStore
from .services.tasks import move_instance, refresh_task_state
from .settings import ServerSettings

log = logging.getLogger(__name__)

__all__ = ["Scheduler"]

_PHASE_STATES = {"downloading": I.DOWNLOADING, "running": I.RUNNING, "uploading": I.UPLOADING}


@dataclass(frozen=True)
class _Wake:
    """Something was committed that may be runnable (a submit)."""


@dataclass(frozen=True)
class _Abort:
    task_id: int


@dataclass(frozen=True)
class _Forget:
    """A task was deleted: stop what still runs of it."""

    keys: tuple[InstanceKey, ...]


_STOP = object()


class Scheduler:
    def __init__(self, *, settings: ServerSettings, sessions: sessionmaker[Session],
                 executor_factory: Callable[[Callable[[ExecutorEvent], None]], Executor],
                 outputs: OutputStore, s3: Optional[S3Access]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.outputs = outputs
        self.s3 = s3
        self.executor = executor_factory(self._on_executor_event)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight: set[InstanceKey] = set()
        self._thread = threading.Thread(target=self._loop, name="qcompute-scheduler", daemon=True)
        self.changes = TaskChanges()  # long-polling requests wait on it

    # -- API side -----------------------------------------------------------------------------

    def start(self) -> None:
        self._reconcile()
        self._thread.start()
        self.wake()

    def stop(self) -> None:
        self.changes.release_all()
        self._events.put(_STOP)
        self._thread.join(timeout=30)
        self.executor.shutdown()

    def wake(self) -> None:
        self._events.put(_Wake())

    def abort(self, task_id: int) -> None:
        self._events.put(_Abort(task_id))

    def forget(self, keys: list[InstanceKey]) -> None:
        self._events.put(_Forget(tuple(keys)))

    # -- executor side ------------------------------------------------------------------------

    def _on_executor_event(self, event: ExecutorEvent) -> None:
        if isinstance(event, Output):
            self.outputs.append(event.key.task_uuid, event.key.instance_id, event.stream,
                                event.data)
        else:
            self._events.put(event)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            events = [self._events.get()]
            while True:  # drain: one commit for everything that is waiting
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            if _STOP in events:
                return
            try:
                specs, changed = self._round(events)
            except Exception:  # never let the loop die; the next event retries
                log.exception("scheduler round failed")
                continue
            for spec in specs:
                self._hand_over(spec)
            self.changes.publish(changed)

    def _hand_over(self, spec: InstanceSpec) -> None:
        try:
            self.executor.submit(spec)
        except Exception as exc:  # an infrastructure failure: re-queued within the bound
            log.exception("the executor refused %s", spec.key)
            self._events.put(Finished(spec.key, exit_code=None,
                                      error=f"the executor could not start it: {exc}"))

    def _round(self, events: list) -> tuple[list[InstanceSpec], set[str]]:
        """Apply the events, commit, dispatch, commit. Returns the specs to hand over and the
        uuids of the tasks that changed."""
        with self.sessions() as session:
            touched: dict[int, Task] = {}
            for event in events:
                self._apply(session, event, touched)
            now = utcnow()
            for task in touched.values():
                refresh_task_state(session, task, now)
            session.commit()
            specs = self._dispatch(session)
            session.commit()
            return specs, {t.uuid for t in touched.values()} | {s.task_uuid for s in specs}

    def _instance(self, session: Session, key: InstanceKey) -> Optional[tuple[Instance, Task]]:
        row = session.execute(
            select(Instance, Task).join(Task, Instance.task_id == Task.id)
            .where(Task.uuid == key.task_uuid, Instance.instance_id == key.instance_id)).first()
        if row is None or row[0].attempt != key.attempt:
            return None  # a deleted task, or an event of an attempt that was replaced
        return row[0], row[1]

    def _apply(self, session: Session, event, touched: dict[int, Task]) -> None:
        if isinstance(event, Phase):
            found = self._instance(session, event.key)
            if found and I(found[0].state).is_active():
                move_instance(found[1], found[0], _PHASE_STATES[event.phase])
                if event.phase == "running":
                    found[0].started_at = utcnow()
                touched[found[1].id] = found[1]
        elif isinstance(event, Finished):
            self._in_flight.discard(event.key)
            found = self._instance(session, event.key)
            if found and I(found[0].state).is_active():
                self._finish(found[0], found[1], event)
                touched[found[1].id] = found[1]
        elif isinstance(event, _Abort):
            task = session.get(Task, event.task_id)
            if task is not None:
                self._cancel_task(session, task)
                touched[task.id] = task
        elif isinstance(event, _Forget):
            for key in event.keys:
                if key in self._in_flight:
                    self.executor.cancel(key)

    def _finish(self, instance: Instance, task: Task, event: Finished) -> None:
        instance.ended_at = utcnow()
        instance.exit_code = event.exit_code
        instance.exec_time_sec = event.exec_time_sec
        instance.wall_time_sec = event.wall_time_sec
        instance.peak_memory_mb = event.peak_memory_mb
        task.results_count += event.results_uploaded
        if event.cancelled or task.abort_requested:
            move_instance(task, instance, I.CANCELLED)
        elif event.error:  # infrastructure failure: re-queue within a bound, no user retry used
            instance.error = event.error
            if instance.infra_failures < self.settings.max_infra_retries:
                instance.infra_failures += 1
                move_instance(task, instance, I.QUEUED)
                log.warning("re-queueing %s after an infrastructure error: %s", event.key,
                            event.error)
            else:
                move_instance(task, instance, I.FAILED)
        else:
            instance.error = None
            move_instance(task, instance, I.SUCCEEDED if event.exit_code == 0 else I.FAILED)

    def _cancel_task(self, session: Session, task: Task) -> None:
        instances = session.scalars(select(Instance).where(Instance.task_id == task.id))
        for instance in instances:
            if instance.state == I.QUEUED.value:
                move_instance(task, instance, I.CANCELLED)
            elif I(instance.state).is_active():
                self.executor.cancel(InstanceKey(task.uuid, instance.instance_id,
                                                 instance.attempt))

    def _dispatch(self, session: Session) -> list[InstanceSpec]:
        free = self.executor.capacity - len(self._in_flight)
        if free <= 0:
            return []
        rows = session.execute(
            select(Instance, Task).join(Task, Instance.task_id == Task.id)
            .where(Instance.state == I.QUEUED.value, Task.abort_requested.is_(False))
            .order_by(Instance.id).limit(free)).all()
        specs, touched = [], {}
        for instance, task in rows:
            move_instance(task, instance, I.DISPATCHED)
            instance.attempt += 1
            specs.append(self._spec(task, instance))
            touched[task.id] = task
        now = utcnow()
        for task in touched.values():
            refresh_task_state(session, task, now)
        self._in_flight.update(spec.key for spec in specs)
        return specs

    def _spec(self, task: Task, instance: Instance) -> InstanceSpec:
        doc = task.document
        profile = self.settings.profile(task.profile or "")
        constants = dict(profile.constants if profile else {})
        constants.update({c["key"]: c.get("value") or "" for c in doc.get("constants", ())})
        command = constants.get(profile.command_constant if profile else "DOCKER_CMD", "")
        size = str(task.instance_count)
        env = {**constants, "INSTANCE_ID": str(instance.instance_id),
               "FRAME_ID": str(instance.instance_id), "INSTANCE_COUNT": size,
               "QRANK": str(instance.rank), "QSIZE": size, "TASK_UUID": task.uuid,
               "TASK_NAME": task.name}
        resources = [ResourceSpec(
            bucket=b["bucketName"],
            prefix=((b.get("filtering") or {}).get("prefixFiltering") or {}).get("prefix", ""),
            strip_prefix=((b.get("resourcesTransformation") or {}).get("stripPrefix") or {})
            .get("prefix", ""))
            for b in doc.get("advancedResourceBuckets", ())]
        resources += [ResourceSpec(bucket=name) for name in doc.get("resourceBuckets", ())]
        workdir = Path(self.settings.data_dir, "work", task.uuid,
                       f"{instance.instance_id}-{instance.attempt}")
        return InstanceSpec(
            task_uuid=task.uuid, instance_id=instance.instance_id, attempt=instance.attempt,
            command=command, env=env, workdir=str(workdir), s3=self.s3,
            resources=tuple(resources), result_bucket=doc.get("resultBucket"),
            results_whitelist=doc.get("resultsWhitelist"),
            results_blacklist=doc.get("resultsBlacklist"),
            upload_results_on_cancel=bool(doc.get("uploadResultsOnCancellation")),
            kill_grace_seconds=self.settings.kill_grace_seconds)

    # -- restart ------------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """After a (re)start no executor runs anything: settle what we believed was running."""
        with self.sessions() as session:
            active = [s.value for s in I if s.is_active()]
            rows = session.execute(
                select(Instance, Task).join(Task, Instance.task_id == Task.id)
                .where(Instance.state.in_(active))).all()
            touched: dict[int, Task] = {}
            for instance, task in rows:
                touched[task.id] = task
                lost = Finished(InstanceKey(task.uuid, instance.instance_id, instance.attempt),
                                exit_code=None, error="the server restarted while it ran")
                self._finish(instance, task, lost)
            for task in session.scalars(select(Task).where(Task.abort_requested.is_(True),
                                                           Task.ended_at.is_(None))):
                self._cancel_task(session, task)
                touched[task.id] = task
            for task in touched.values():
                refresh_task_state(session, task)
            cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_seconds)
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
            session.commit()
            if rows:
                log.info("reconciled %d instances left running by the previous server", len(rows))
