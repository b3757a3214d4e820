"""The scheduler: the only writer of instance states.

One thread, woken by events (a submit, an abort, an executor event), never by sleeps. Each round
1. applies the events and commits them;
2. picks the oldest queued instances that fit the free capacity (an indexed query, so its cost
   follows what it dispatches, not the length of the queue);
3. marks them dispatched, commits, and only then hands them to the executor.
Output chunks do not go through the loop: they are appended to the output store as they arrive.

A round that fails is rolled back and its events are applied again one by one, each in a round
of its own, so that one bad event fails alone; an instance's end that fails even alone is still
recorded (``Recovery.last_resort``). Every tick compares the executor's running set with the
database and settles what the executor lost (``scheduler_recovery.py``).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, lazyload, sessionmaker

from qcompute.states import InstanceState as I
from qcompute.states import PoolState as P
from qcompute.states import TaskState as T

from .changes import TaskChanges
from .crypto import SealError
from .db.models import IdempotencyRecord, Instance, Job, Pool, Task, User, utcnow
from .executors.base import (Executor, ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                             Output, Phase, Placed, S3Access, Telemetry, storable)
from .metrics import Metrics
from .schemas.common import MAX_SECONDS
from .scheduler_pools import PoolKeeper, resource_specs
from .scheduler_recovery import Recovery, WorkDirs
from .scheduler_snapshots import InstanceControls, PeriodicChanged, RefreshResources, TakeSnapshot
from .scheduler_timers import Timers
from .services.masking import OutputMasks
from .services.output import OutputStore
from .services.placement import dependents_of, resolve_dependencies
from .services.queueing import queue_of, runnable_queued, unsatisfiable
from .services.jobs import refresh_job_state
from .services.pools import completion_deadline
from .services.secrets import exports_credentials, merge_rights, payload_env
from .services.tasks import move_instance, refresh_task_state
from .services.telemetry import TelemetryStore
from .services.users import open_token, storage_keys
from .settings import ServerSettings

if TYPE_CHECKING:
    from .storage import StorageBackend

log = logging.getLogger(__name__)

__all__ = ["Scheduler"]

_PHASE_STATES = {"downloading": I.DOWNLOADING, "running": I.RUNNING, "uploading": I.UPLOADING}
_NO_TAGS = lazyload(Task.tags)  # the scheduler never reads a task's tags: no SELECT for them
_IN_CHUNK = 5000  # values in one IN list


@dataclass(frozen=True)
class _Wake:
    """Something was committed that may be runnable (a submit)."""


@dataclass(frozen=True)
class _Abort:
    task_id: int


@dataclass(frozen=True)
class _Submitted:
    """New tasks were committed; those with dependencies get them resolved."""

    task_ids: tuple[int, ...]


@dataclass(frozen=True)
class _Tick:
    """Once a second: timers (queue timeouts, wall times, TTLs) and elastic pools."""


@dataclass(frozen=True)
class _Forget:
    """Tasks were deleted: stop what still runs of them (these instances, and whatever runs of
    these tasks: a standby replica knows only the database's view)."""

    keys: tuple[InstanceKey, ...]
    task_uuids: tuple[str, ...] = ()


_STOP = object()


class Scheduler:
    def __init__(self, *, settings: ServerSettings, sessions: sessionmaker[Session],
                 executor_factory: Callable[[Callable[[ExecutorEvent], None]], Executor],
                 outputs: OutputStore, storage: "StorageBackend",
                 metrics: Optional[Metrics] = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()  # dispatch waits and instance outcomes
        self.sessions = sessions
        self.outputs = outputs
        self.storage = storage  # runners get their task owner's S3 identity from it
        self.storage_url = storage.endpoint_url  # for payloads
        self.masks = OutputMasks()  # secret values kept out of each instance's output
        self.executor = executor_factory(self._on_executor_event)
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._in_flight: set[InstanceKey] = set()
        self._rows: Optional[dict] = None  # the round's instance rows, by (task uuid, id)
        # the owners' tokens and S3 identities, read once per dispatch (not once per instance)
        self._identities: dict[int, tuple[str, S3Access]] = {}
        # the dispatch and hand-over times of the instances in flight, written with their end
        self._stamps: dict[InstanceKey, dict[str, float]] = {}
        self.pools = PoolKeeper(settings, self._pool_payload)
        self._held_sent: dict = {}  # the pools' slots, as the executor was last told
        self.timers = Timers(self)
        self.controls = InstanceControls(self)  # snapshots and resource refreshes
        self._thread = threading.Thread(target=self._loop, name="qcompute-scheduler", daemon=True)
        self._stopped = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="qcompute-ticker", daemon=True)
        self.changes = TaskChanges()  # long-polling requests wait on it
        self.telemetry = TelemetryStore()  # the latest sample of each running instance
        self.recovery = Recovery(self)
        self.workdirs = WorkDirs(Path(settings.data_dir, "work"))
        self.injected_faults = 0  # tests only (settings.fault_injection): rounds left to fail
        self.relay: Optional[Callable[[object], None]] = None  # a standby's way to the holder

    # -- API side -----------------------------------------------------------------------------

    def start(self) -> None:
        self._reconcile()
        self._thread.start()
        self._ticker.start()
        self.wake()

    def stop(self) -> None:
        self.changes.release_all()
        self.outputs.changes.release_all()
        self._stopped.set()
        self._events.put(_STOP)
        if self.started:
            self._thread.join(timeout=30)
        self.executor.shutdown()
        self.workdirs.stop()

    def post(self, event: object) -> None:
        """An event from a route: to this scheduler, or, on a standby replica, to the one that
        runs (``relay``, set by :class:`~qcompute.server.replicas.Replica`)."""
        relay = self.relay
        if relay is not None:
            relay(event)
        else:
            self._events.put(event)

    @staticmethod
    def event_kinds() -> dict[str, type]:
        """The events a route posts, by name (replicas send them to each other)."""
        return {kind.__name__: kind for kind in (_Wake, _Abort, _Submitted, _Forget, TakeSnapshot,
                                                 PeriodicChanged, RefreshResources)}

    def discard_files(self, uuid: str) -> None:
        """A task or pool was deleted: its output goes now, its working dir in the background."""
        self.outputs.delete(uuid)
        self.workdirs.remove(uuid)

    @property
    def started(self) -> bool:
        """False on a standby replica (:mod:`~qcompute.server.replicas`) until it takes over."""
        return self._thread.ident is not None

    def alive(self) -> bool:
        """Whether the loop's thread runs, or waits as a standby's (for ``/health``)."""
        return self._thread.is_alive() or (not self.started and self.relay is not None)

    def wake(self) -> None:
        self.post(_Wake())

    def abort(self, task_id: int) -> None:
        self.post(_Abort(task_id))

    def running_keys(self, task_uuids: list[str]) -> list[InstanceKey]:
        """The instances of these tasks an executor runs now (for deletes)."""
        wanted = set(task_uuids)
        return [key for key in list(self._in_flight) if key.task_uuid in wanted]

    def general_slots(self, session: Session) -> tuple[int, int]:
        """``(busy, total)`` executor slots outside pools (for ``GET /tasks/{uuid}/explain``):
        the executor's capacity less the slots pools hold."""
        return self._general_busy(), self.executor.capacity - self.pools.held(session)

    def _general_busy(self) -> int:
        return len(self._in_flight) - self.pools.in_flight()

    def submitted(self, task_ids: list[int]) -> None:
        # in events of a NOTIFY's size (replicas); one event even when empty, as before
        for start in range(0, max(len(task_ids), 1), 500):
            self.post(_Submitted(tuple(task_ids[start:start + 500])))

    def _tick(self) -> None:
        while not self._stopped.wait(self.settings.scheduler_tick_seconds):
            self._events.put(_Tick())

    def forget(self, keys: list[InstanceKey]) -> None:
        for start in range(0, max(len(keys), 1), 100):
            self.post(_Forget(tuple(keys[start:start + 100])))

    def forget_tasks(self, task_uuids: list[str]) -> None:
        """Deleted tasks: whatever runs of them is stopped."""
        for start in range(0, len(task_uuids), 100):
            self.post(_Forget((), tuple(task_uuids[start:start + 100])))

    def snapshot(self, task_id: int, snapshot_uuid: str) -> None:
        """A committed instant snapshot: send it to the task's instances in flight."""
        self.post(TakeSnapshot(task_id, snapshot_uuid))

    def periodic_snapshot_changed(self, task_id: int) -> None:
        self.post(PeriodicChanged(task_id))

    def refresh_resources(self, task_id: int) -> None:
        self.post(RefreshResources(task_id))

    # -- executor side ------------------------------------------------------------------------

    def _on_executor_event(self, event: ExecutorEvent) -> None:
        """From the executor's threads. Output that cannot be written (a full disk) is lost
        with a log line; a state change never is."""
        if isinstance(event, Telemetry):
            self.telemetry.update(event)
            return
        try:
            if isinstance(event, Output):
                text = self.masks.feed(event.key, event.stream, event.data)
                if text:
                    self.outputs.append(event.key.task_uuid, event.key.instance_id,
                                        event.stream, text)
                return
            if isinstance(event, Finished):  # the output held back by masking, before the end
                self.telemetry.forget(event.key)
                for stream, text in self.masks.finish(event.key).items():
                    self.outputs.append(event.key.task_uuid, event.key.instance_id, stream, text)
        except Exception:
            log.exception("the output of %s could not be written", event.key)
        if not isinstance(event, Output):
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
            except Exception:
                log.exception("a scheduler round failed: its %d events are applied again, one "
                              "by one", len(events))
                self.controls.discard()
                specs, changed = self._one_by_one(events)
            for spec in specs:
                self._hand_over(spec)
            self.controls.send()
            self.changes.publish(changed)

    def _one_by_one(self, events: list) -> tuple[list[InstanceSpec], set[str]]:
        """After a failed round: each event in a round of its own, so a bad one fails alone."""
        specs: list[InstanceSpec] = []
        changed: set[str] = set()
        for event in events:
            try:
                more, touched = self._round([event])
            except Exception as exc:
                self.controls.discard()
                more, touched = [], self.recovery.last_resort(event, exc)
            specs += more
            changed |= touched
        return specs, changed

    def _hand_over(self, spec: InstanceSpec) -> None:
        stamps = self._stamps.get(spec.key)
        if stamps is not None:  # None: a pool's preparation run
            stamps["handed_over"] = time.time()
        try:
            self.executor.submit(spec)
        except Exception as exc:  # an infrastructure failure: re-queued within the bound
            log.exception("the executor refused %s", spec.key)
            self.masks.finish(spec.key)
            self._events.put(Finished(spec.key, exit_code=None,
                                      error=f"the executor could not start it: {exc}"))

    def _round(self, events: list) -> tuple[list[InstanceSpec], set[str]]:
        """Apply the events, commit, dispatch, commit. Returns the specs to hand over and the
        uuids of the tasks that changed."""
        with self.sessions() as session:
            touched: dict[int, Task] = {}
            changed: set[str] = set()
            self._prefetch(session, events)
            try:
                for event in events:
                    self._apply(session, event, touched)
            finally:
                self._rows = None
            if any(isinstance(event, _Tick) for event in events):  # once, after the round's
                self.recovery.check(session)  # events: an end in this round is no loss
            self._settle(session, touched)
            if self.injected_faults:  # tests only: a round that fails after applying its events
                self.injected_faults -= 1
                raise RuntimeError("injected fault (fault_injection)")
            session.commit()
            dispatched: dict[int, Task] = {}
            if all(isinstance(event, (Phase, Placed)) for event in events):
                specs = []  # a phase frees no slot and queues nothing: no dispatch
            else:
                try:
                    specs = self._dispatch(session, dispatched, changed)
                finally:
                    self._identities.clear()
                self._settle(session, dispatched)
                session.commit()
            tasks = {**touched, **dispatched}.values()
            return specs, {t.uuid for t in tasks} | {s.task_uuid for s in specs} | changed

    def _settle(self, session: Session, touched: dict[int, Task]) -> None:
        """Refresh the touched tasks' states; for each final one, resolve its dependents (which
        may end too), complete its job, and arm its auto-delete timer."""
        now = utcnow()
        work, done = list(touched.values()), set()
        while work:
            task = work.pop()
            refresh_task_state(session, task, now)
            if not T(task.state).is_final() or task.id in done:
                continue
            done.add(task.id)
            if task.delete_after is None:
                task.delete_after = completion_deadline(task.document, task.ended_at or now)
            for child in dependents_of(session, task.uuid):
                if self._resolve(session, child):
                    touched[child.id] = child
                    work.append(child)
            if task.job_id is not None:
                job = session.get(Job, task.job_id)
                if job is not None:
                    refresh_job_state(session, job, now)

    def _resolve(self, session: Session, task: Task) -> bool:
        """Resolve a task's dependencies. A task whose conditions can no longer be met is
        cancelled with errors naming the parent and why. True if the task changed."""
        unmet = resolve_dependencies(session, task)
        if unmet:
            task.errors = [*task.errors, *({"code": "dependency_not_fulfilled", "message": m,
                                            "debug": None} for m in unmet)]
            self._cancel_task(session, task)
            return True
        if task.waiting_on == 0:
            seconds = task.document.get("maxTimeQueueSeconds")
            if seconds and task.queue_deadline is None:  # clamped: rows stored before the limit
                task.queue_deadline = utcnow() + timedelta(seconds=min(seconds, MAX_SECONDS))
            return True
        return False

    def _instance(self, session: Session, key: InstanceKey) -> Optional[tuple[Instance, Task]]:
        row = self._rows.get((key.task_uuid, key.instance_id)) if self._rows is not None else \
            self._load_rows(session, [key]).get((key.task_uuid, key.instance_id))
        if row is None or row[0].attempt != key.attempt:
            return None  # a deleted task, or an event of an attempt that was replaced
        return row

    @staticmethod
    def _load_rows(session: Session, keys) -> dict[tuple[str, int], tuple[Instance, Task]]:
        """The instance rows (and their tasks) of these keys, in one indexed query: tasks by
        uuid, then instances by (task, instance id); pairs not asked for are dropped."""
        wanted = {(key.task_uuid, key.instance_id) for key in keys}
        if not wanted:
            return {}
        uuids, ids = sorted({u for u, _ in wanted}), sorted({i for _, i in wanted})
        found = {}
        for start in range(0, len(uuids), _IN_CHUNK):  # within SQLite's bound parameters
            for first in range(0, len(ids), _IN_CHUNK):
                for instance, task in session.execute(
                        select(Instance, Task).join(Task, Instance.task_id == Task.id)
                        .options(_NO_TAGS).where(Task.uuid.in_(uuids[start:start + _IN_CHUNK]),
                                                 Instance.instance_id.in_(
                                                     ids[first:first + _IN_CHUNK]))):
                    if (task.uuid, instance.instance_id) in wanted:
                        found[(task.uuid, instance.instance_id)] = (instance, task)
        return found

    def _prefetch(self, session: Session, events: list) -> None:
        """One query for the rows of every phase and end in the round, rather than one each."""
        self._rows = self._load_rows(session, [
            e.key for e in events if isinstance(e, (Phase, Placed, Finished))
            and e.key not in self.pools.preparing])

    def _apply(self, session: Session, event, touched: dict[int, Task]) -> None:
        if self.controls.apply(session, event, touched):
            return
        if isinstance(event, (Phase, Placed, Finished)) and event.key in self.pools.preparing:
            if isinstance(event, Finished):
                self._in_flight.discard(event.key)
                self._stamps.pop(event.key, None)
                self.pools.preparation_ended(session, event, self.settings.max_infra_retries)
        elif isinstance(event, Phase):
            found = self._instance(session, event.key)
            if found and I(found[0].state).is_active():
                move_instance(found[1], found[0], _PHASE_STATES[event.phase])
                if event.phase == "running":
                    found[0].started_at = utcnow()
                touched[found[1].id] = found[1]
        elif isinstance(event, Placed):
            found = self._instance(session, event.key)
            if found and I(found[0].state).is_active():
                found[0].node = event.describe()
        elif isinstance(event, Finished):
            self._in_flight.discard(event.key)
            stamps = self._stamps.pop(event.key, None)
            self.controls.instance_ended(session, event.key)
            self.pools.ended(event.key)
            found = self._instance(session, event.key)
            if found and I(found[0].state).is_active():
                self._finish(found[0], found[1], event, stamps)
                touched[found[1].id] = found[1]
        elif isinstance(event, _Abort):
            task = session.get(Task, event.task_id, options=[_NO_TAGS])
            if task is not None:
                self._cancel_task(session, task)
                touched[task.id] = task
        elif isinstance(event, _Submitted):
            for task in session.scalars(select(Task).options(_NO_TAGS).where(
                    Task.id.in_(event.task_ids), Task.waiting_on > 0)):
                self._resolve(session, task)
                touched[task.id] = task
        elif isinstance(event, _Tick):
            self.timers.run(session, touched)
        elif isinstance(event, _Forget):
            keys = set(event.keys) | set(self.running_keys(list(event.task_uuids)))
            for key in keys & self._in_flight:
                self.executor.cancel(key)

    def _finish(self, instance: Instance, task: Task, event: Finished,
                stamps: Optional[dict[str, float]] = None) -> None:
        """Record an instance's end; ``stamps``: its dispatch and hand-over times."""
        instance.timeline = {**(stamps or {}), **event.timeline, "ended": time.time()}
        instance.ended_at = utcnow()
        instance.exit_code = event.exit_code
        instance.exec_time_sec = event.exec_time_sec
        instance.wall_time_sec = event.wall_time_sec
        instance.peak_memory_mb = event.peak_memory_mb
        task.results_count += event.results_uploaded
        if event.cancelled or task.abort_requested:
            move_instance(task, instance, I.CANCELLED)
        elif event.results_failed:  # the command ran; a re-run would repeat it for its files
            instance.error = storable(event.error)
            move_instance(task, instance, I.FAILED)
        elif event.error:  # infrastructure failure: re-queue within a bound, no user retry used
            instance.error = storable(event.error)
            if instance.infra_failures < self.settings.max_infra_retries:
                instance.infra_failures += 1
                move_instance(task, instance, I.QUEUED)
                log.warning("re-queueing %s after an infrastructure error: %s", event.key,
                            event.error)
            else:
                move_instance(task, instance, I.FAILED)
        elif event.exit_code != 0 and self._may_retry(task, instance):
            instance.app_failures += 1
            task.retries_used += 1
            instance.error = f"attempt {instance.attempt} exited with code {event.exit_code}"
            move_instance(task, instance, I.QUEUED)
        else:  # after retries, say how many attempts failed
            instance.error = None if event.exit_code == 0 or instance.attempt == 1 else \
                f"attempt {instance.attempt} exited with code {event.exit_code} (retries used up)"
            move_instance(task, instance, I.SUCCEEDED if event.exit_code == 0 else I.FAILED)
        self.metrics.ended(I(instance.state), instance.exit_code)

    @staticmethod
    def _may_retry(task: Task, instance: Instance) -> bool:
        """``retrySettings``: only failed instances are retried, within both budgets."""
        retry = task.document.get("retrySettings") or {}
        per = retry.get("maxPerInstanceRetries") or task.document.get("maxRetriesPerInstance")
        total = retry.get("maxTotalRetries")
        if not per and not total:
            return False
        return (not per or instance.app_failures < per) and \
            (not total or task.retries_used < total)

    def _cancel_task(self, session: Session, task: Task) -> None:
        instances = session.scalars(select(Instance).where(Instance.task_id == task.id))
        for instance in instances:
            if instance.state == I.QUEUED.value:
                move_instance(task, instance, I.CANCELLED)
            elif I(instance.state).is_active():
                self.executor.cancel(InstanceKey(task.uuid, instance.instance_id,
                                                 instance.attempt))

    def _dispatch(self, session: Session, touched: dict[int, Task],
                  changed: set[str]) -> list[InstanceSpec]:
        """Pools first (their slots and preparation runs), then queued instances: into the free
        slots of their pool, or into the executor slots no pool holds."""
        general_busy = self._general_busy()
        held = self.pools.held(session)
        unheld = self.executor.capacity - held - general_busy
        specs = self.pools.plan(session, unheld, utcnow(), lambda pool: changed.add(pool.uuid))
        if self.pools.holdings != self._held_sent:  # before anything runs in the new slots
            self.executor.hold_pool_slots(self.pools.holdings)
            self._held_sent = self.pools.holdings
        cancelled, stopped = self.pools.drain_cancelled()
        if cancelled:
            for task in session.scalars(select(Task).options(_NO_TAGS)
                                        .where(Task.id.in_(cancelled))):
                task.errors = [*task.errors, cancelled[task.id]]
                task.abort_requested = True  # as an abort: committed, so a restart completes it
                self._cancel_task(session, task)
                touched[task.id] = task
            self.wake()  # another round at once: the pool ends when its tasks have
        for key in stopped:  # its Finished event finds no slot and is dropped
            self.executor.cancel(key)
        rows = []
        if held or self.pools.open_pools:  # counted again: the plan may have held or released
            held = self.pools.held(session)
            for pool_id, free in self.pools.free_slots(session).items():
                rows += self._queued(session, queue_of(pool_id), free)
        general_free = self.executor.capacity - held - general_busy
        if general_free > 0:
            rows += self._queued(session, queue_of(None), general_free)
        blocked: dict[int, Optional[str]] = {}  # task id -> why no node kind can run it
        for instance, task in rows:
            if task.id not in blocked:
                blocked[task.id] = unsatisfiable(self.settings, task.document)
                if blocked[task.id]:
                    self._cancel_unsatisfiable(session, task, blocked[task.id])
                    touched[task.id] = task
            if blocked[task.id]:
                continue
            self.metrics.dispatched((instance.ended_at if instance.attempt else None)
                                    or task.created_at)
            move_instance(task, instance, I.DISPATCHED)
            instance.attempt += 1
            instance.node = None  # the new attempt's node, once it is placed
            dispatched = time.time()
            instance.timeline = {"dispatched": dispatched}  # the attempt's new timeline
            try:
                spec = self._spec(session, task, instance)
            except Exception as exc:  # no owner identity (SealError), or a document it cannot
                # run: an infrastructure failure of this instance alone, re-queued within a bound
                if not isinstance(exc, SealError):
                    log.exception("cannot prepare %s/%d", task.uuid, instance.instance_id)
                key = InstanceKey(task.uuid, instance.instance_id, instance.attempt)
                self.masks.finish(key)
                error = str(exc) if isinstance(exc, SealError) else \
                    f"the instance could not be prepared: {exc}"
                self._finish(instance, task, Finished(key, exit_code=None, error=error),
                             {"dispatched": dispatched})
                touched[task.id] = task
                continue
            self._stamps[spec.key] = {"dispatched": dispatched}
            if task.pool_id is not None:
                self.pools.started(task.pool_id, spec.key)
            specs.append(spec)
            touched[task.id] = task
        self._in_flight.update(spec.key for spec in specs)
        return specs

    @staticmethod
    def _queued(session: Session, where, limit: int) -> list:
        """The oldest runnable queued instances of one queue (``services/queueing.py``)."""
        return list(session.execute(runnable_queued(where).options(_NO_TAGS).limit(limit)).all())

    def _cancel_unsatisfiable(self, session: Session, task: Task, why: str) -> None:
        """A queued task no node kind can run (the node kinds changed since it was accepted):
        cancelled, with the reason, rather than run on hardware it excludes."""
        task.errors = [*task.errors, {"code": "unsatisfiable_hardware_constraint",
                                      "message": why, "debug": None}]
        task.abort_requested = True  # as an abort: committed, so a restart completes it
        self._cancel_task(session, task)
        self.wake()  # the slots it would have taken: filled at once, by another round

    def _owner_identity(self, session: Session, owner_id: int) -> tuple[str, S3Access]:
        """The owner's API token and S3 identity; SealError if the token is not known. Kept
        for the rest of the dispatch: read for each instance, the owner's row was loaded again
        and each load flushed the instance before it, one UPDATE at a time."""
        if owner_id not in self._identities:
            owner = session.get(User, owner_id)
            token = open_token(session, owner)
            self._identities[owner_id] = token, self.storage.owner_access(
                owner.email, token, storage_keys(session, owner))
        return self._identities[owner_id]

    def _pool_payload(self, session: Session, pool: Pool,
                      key: InstanceKey) -> tuple[dict[str, str], S3Access]:
        """A preparation run's granted secrets and credentials (with the pool's privilege), and
        the owner's S3 identity; SealError if the owner's token is not known."""
        token, s3 = self._owner_identity(session, pool.owner_id)
        env, masked = payload_env(
            session, owner_id=pool.owner_id, document=pool.document,
            exported_token=token if exports_credentials(pool.document) else None,
            api_url=self.settings.advertised_url, storage_url=self.storage_url,
            region=self.settings.s3_region, s3=s3)
        self.masks.register(key, masked)
        return env, s3

    def _spec(self, session: Session, task: Task, instance: Instance) -> InstanceSpec:
        doc = task.document
        pool = session.get(Pool, task.pool_id) if task.pool_id is not None else None
        profile = self.settings.profile(task.profile or "")
        constants = dict(profile.constants if profile else {})
        if pool is not None:  # the pool's constants, under the task's own
            constants.update({c["key"]: c.get("value") or ""
                              for c in pool.document.get("constants") or ()})
        constants.update({c["key"]: c.get("value") or "" for c in doc.get("constants", ())})
        command = constants.get(profile.command_constant if profile else "DOCKER_CMD", "")
        size = str(task.instance_count)
        env = {**constants, "INSTANCE_ID": str(instance.instance_id),
               "FRAME_ID": str(instance.instance_id), "INSTANCE_COUNT": size,
               "QRANK": str(instance.rank), "QSIZE": size, "TASK_UUID": task.uuid,
               "TASK_NAME": task.name}
        rights = doc if pool is None else {"secretsAccessRights": merge_rights(
            pool.document.get("secretsAccessRights"), doc.get("secretsAccessRights"))}
        token, s3 = self._owner_identity(session, task.owner_id)  # SealError: token unknown
        extra, masked = payload_env(  # granted secrets (the pool's too), exported credentials
            session, owner_id=task.owner_id, document=rights,
            exported_token=token if exports_credentials(doc) else None,
            api_url=self.settings.advertised_url, storage_url=self.storage_url,
            region=self.settings.s3_region, s3=s3)
        self.masks.register(InstanceKey(task.uuid, instance.instance_id, instance.attempt), masked)
        resources = resource_specs(pool.document) if pool is not None else []
        resources += resource_specs(doc)  # the task's files win over the pool's
        workdir = Path(self.settings.data_dir, "work", task.uuid,
                       f"{instance.instance_id}-{instance.attempt}")
        return InstanceSpec(
            task_uuid=task.uuid, instance_id=instance.instance_id, attempt=instance.attempt,
            command=command, env=env, secret_env=extra, network=profile.network if profile
            else True, share_dir=self.pools.share_dir(pool) if pool is not None else None,
            workdir=str(workdir), s3=s3,
            resources=tuple(resources), result_bucket=doc.get("resultBucket"),
            results_whitelist=doc.get("resultsWhitelist"),
            results_blacklist=doc.get("resultsBlacklist"),
            upload_results_on_cancel=bool(doc.get("uploadResultsOnCancellation")),
            kill_grace_seconds=self.settings.kill_grace_seconds,
            result_upload_attempts=self.settings.result_upload_attempts,
            result_upload_seconds=self.settings.result_upload_seconds,
            hardware_constraints=list((pool.document if pool is not None else doc)
                                      .get("hardwareConstraints") or ()),
            pool_uuid=pool.uuid if pool is not None else None,
            **self.controls.spec_fields(session, task))

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
            self.controls.reconcile(session)
            cutoff = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_seconds)
            session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
            session.commit()
            if rows:
                log.info("reconciled %d instances left running by the previous server", len(rows))
            final = [s.value for s in P if s.is_final()]
            self.workdirs.sweep(set(session.scalars(select(Pool.uuid).where(
                Pool.state.not_in(final)))))
