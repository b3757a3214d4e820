"""The scheduler's pool half: slots held by open pools, their preparation runs, elastic resizing.

Executor capacity is shared: open pools hold slots first (oldest pool first); tasks outside pools
use what is left. A held slot runs the pool's preparation task once (an executor run keyed by
the pool's uuid and the slot number), then takes the pool's task instances, one at a time. The
scheduler thread is the only caller; all state here is either in SQL or rebuilt from it.
"""
from __future__ import annotations

import logging
import shutil
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Callable

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from qcompute.states import PoolState as P

from .crypto import SealError
from .db.models import Pool, PoolSlot, Task, utcnow
from .executors.base import Finished, InstanceKey, InstanceSpec, PoolSlots, ResourceSpec, S3Access
from .services.pools import (FAILED, PREPARING, READY, completion_deadline, derive_pool_state,
                             elastic_of, elastic_target, queued_in_pool, set_pool_state)
from .settings import ServerSettings

log = logging.getLogger(__name__)

__all__ = ["PoolKeeper", "resource_specs"]

_OPEN = [P.CLOSED.value, P.FAILURE.value]  # pools not in these states hold slots


def resource_specs(document: dict) -> list[ResourceSpec]:
    """The ``advancedResourceBuckets`` (and legacy names) of a task or pool document."""
    specs = [ResourceSpec(
        bucket=b["bucketName"],
        prefix=((b.get("filtering") or {}).get("prefixFiltering") or {}).get("prefix", ""),
        strip_prefix=((b.get("resourcesTransformation") or {}).get("stripPrefix") or {})
        .get("prefix", ""))
        for b in document.get("advancedResourceBuckets") or ()]
    return specs + [ResourceSpec(bucket=name) for name in document.get("resourceBuckets") or ()]


class PoolKeeper:
    def __init__(self, settings: ServerSettings,
                 payload: Callable[[Session, Pool, InstanceKey],
                                   tuple[dict[str, str], S3Access]]) -> None:
        self.settings = settings
        # A preparation run's secrets and credentials (their values get masked) and its
        # owner's S3 identity; raises SealError when the owner's token is not known.
        self.payload = payload
        self.busy: dict[int, set[InstanceKey]] = {}  # pool id → its task instances in flight
        self.preparing: dict[InstanceKey, int] = {}  # preparation run → PoolSlot id
        self._idle_since: dict[int, datetime] = {}
        self._cancelled: dict[int, dict] = {}  # task id → why its pool cancels it
        self._stopped: list[InstanceKey] = []  # preparation runs of finished pools, to stop
        self.open_pools = 0  # found by the last plan(): none, and no slot is held by a pool
        self.holdings: dict[str, PoolSlots] = {}  # by the last plan(): pool uuid → its slots

    # -- accounting ---------------------------------------------------------------------------

    def in_flight(self) -> int:
        """Preparation runs and pool task instances in flight. Also read by API threads
        (explain): the values are copied in one step, so a pool added meanwhile cannot break
        the sum."""
        return len(self.preparing) + sum(map(len, list(self.busy.values())))

    def busy_in(self, pool_id: int) -> int:
        """The pool's task instances in flight (for ``GET /tasks/{uuid}/explain``)."""
        return len(self.busy.get(pool_id, ()))

    def owns(self, key: InstanceKey) -> bool:
        return key in self.preparing or any(key in keys for keys in self.busy.values())

    def started(self, pool_id: int, key: InstanceKey) -> None:
        self.busy.setdefault(pool_id, set()).add(key)

    def drain_cancelled(self) -> tuple[dict[int, dict], list[InstanceKey]]:
        """Tasks to cancel (id → the error saying why) and preparation runs to stop, since the
        last call."""
        tasks, keys = self._cancelled, self._stopped
        self._cancelled, self._stopped = {}, []
        return tasks, keys

    def ended(self, key: InstanceKey) -> None:
        for keys in self.busy.values():
            keys.discard(key)

    def free_slots(self, session: Session) -> dict[int, int]:
        """Pool id → ready slots with no task instance on them."""
        ready = session.execute(select(PoolSlot.pool_id, func.count()).where(
            PoolSlot.state == READY).group_by(PoolSlot.pool_id)).all()
        return {pool_id: n - len(self.busy.get(pool_id, ())) for pool_id, n in ready
                if n > len(self.busy.get(pool_id, ()))}

    @staticmethod
    def held(session: Session) -> int:
        return session.scalar(select(func.count()).select_from(PoolSlot)) or 0

    # -- one round ----------------------------------------------------------------------------

    def plan(self, session: Session, capacity_left: int, now: datetime,
             on_change: Callable[[Pool], None]) -> list[InstanceSpec]:
        """Resize, hold and release slots of every open pool; update pool states. Returns the
        preparation runs to start. ``capacity_left``: executor slots neither held nor busy."""
        specs: list[InstanceSpec] = []
        pools = list(session.scalars(select(Pool).where(Pool.state.not_in(_OPEN))
                                     .order_by(Pool.id)))
        self.open_pools = len(pools)
        self.holdings = {}
        for pool in pools:
            slots = list(session.scalars(select(PoolSlot).where(PoolSlot.pool_id == pool.id)
                                         .order_by(PoolSlot.slot)))
            tasks_active = session.scalar(select(exists().where(
                Task.pool_id == pool.id, Task.ended_at.is_(None)))) or False
            if pool.close_requested and not tasks_active or any(s.state == FAILED for s in slots):
                self._finish(session, pool, slots, tasks_active, now, on_change)
                continue
            if pool.close_requested:  # as on Qarnot, closing cancels the unfinished tasks
                self._cancel_tasks(session, pool, "pool_closed",
                                   f"pool {pool.uuid} was closed before the task ended")
            else:
                self._resize(session, pool, len(slots), now)
                capacity_left -= self._hold(session, pool, slots, capacity_left, now)
                self._release(session, pool, slots)
                specs += self._preparations(session, pool, slots)
            if slots:
                self.holdings[pool.uuid] = PoolSlots(
                    frozenset(s.slot for s in slots),
                    list(pool.document.get("hardwareConstraints") or ()))
            counts = Counter(s.state for s in slots)
            state = derive_pool_state(target=pool.slot_target, slots=counts,
                                      close_requested=pool.close_requested,
                                      tasks_active=tasks_active)
            if pool.state != P.PENDING_DELETE.value and set_pool_state(pool, state, now):
                on_change(pool)
        return specs

    def _resize(self, session: Session, pool: Pool, current: int, now: datetime) -> None:
        prop = elastic_of(pool)
        if prop is None:
            return
        busy = len(self.busy.get(pool.id, ()))
        idle = current - busy
        if idle > prop.min_idle_slots:
            self._idle_since.setdefault(pool.id, now)
        else:
            self._idle_since.pop(pool.id, None)
        idle_for = (now - self._idle_since.get(pool.id, now)).total_seconds()
        since = (now - pool.resized_at).total_seconds() if pool.resized_at else None
        target = elastic_target(prop, current=max(current, pool.slot_target), busy=busy,
                                queued=queued_in_pool(session, pool.id), idle_for=idle_for,
                                since_resize=since)
        if target != pool.slot_target:
            log.info("pool %s: %d → %d slots", pool.uuid, pool.slot_target, target)
            pool.slot_target, pool.resized_at = target, now
            self._idle_since.pop(pool.id, None)

    def _hold(self, session: Session, pool: Pool, slots: list[PoolSlot], capacity_left: int,
              now: datetime) -> int:
        """Take free executor slots up to the pool's target. Returns how many it took."""
        wanted = min(pool.slot_target - len(slots), capacity_left)
        if wanted <= 0:
            return 0
        prepare = bool((pool.document.get("preparationTask") or {}).get("commandLine"))
        used = {s.slot for s in slots}
        numbers = (n for n in range(10**6) if n not in used)
        for _ in range(wanted):
            slot = PoolSlot(pool_id=pool.id, slot=next(numbers), created_at=now,
                            state=PREPARING if prepare else READY, idle_since=now)
            session.add(slot)
            slots.append(slot)
        session.flush()
        return wanted

    def _release(self, session: Session, pool: Pool, slots: list[PoolSlot]) -> None:
        """Give back ready slots above the target, as long as they are idle."""
        extra = len(slots) - pool.slot_target
        idle = sum(1 for s in slots if s.state == READY) - len(self.busy.get(pool.id, ()))
        for slot in sorted((s for s in slots if s.state == READY), key=lambda s: -s.slot):
            if extra <= 0 or idle <= 0:
                break
            session.delete(slot)
            slots.remove(slot)
            extra, idle = extra - 1, idle - 1

    def _preparations(self, session: Session, pool: Pool,
                      slots: list[PoolSlot]) -> list[InstanceSpec]:
        """Start the preparation task on held slots that still need it."""
        running = set(self.preparing.values())
        specs = []
        for slot in slots:
            if slot.state != PREPARING or slot.id in running:
                continue
            slot.attempt += 1
            try:
                spec = self._preparation_spec(session, pool, slot)
            except SealError as exc:  # no owner identity: an infrastructure failure
                key = InstanceKey(pool.uuid, slot.slot, slot.attempt)
                self.preparing[key] = slot.id
                self.preparation_ended(session, Finished(key, exit_code=None, error=str(exc)),
                                       self.settings.max_infra_retries)
                continue
            self.preparing[spec.key] = slot.id
            specs.append(spec)
        return specs

    def share_dir(self, pool: Pool) -> str:
        """The pool's directory, shown as /share to its preparation runs and its tasks; removed
        when the pool ends."""
        return str(Path(self.settings.data_dir, "work", pool.uuid, "share"))

    def _preparation_spec(self, session: Session, pool: Pool, slot: PoolSlot) -> InstanceSpec:
        doc = pool.document
        profile = self.settings.profile(pool.profile)
        env = dict(profile.constants if profile else {})
        env.update({c["key"]: c.get("value") or "" for c in doc.get("constants") or ()})
        env.update({"POOL_UUID": pool.uuid, "POOL_NAME": pool.name, "SLOT_ID": str(slot.slot),
                    "INSTANCE_ID": str(slot.slot), "INSTANCE_COUNT": str(pool.slot_target)})
        secret_env, s3 = self.payload(session, pool,
                                      InstanceKey(pool.uuid, slot.slot, slot.attempt))
        workdir = Path(self.settings.data_dir, "work", pool.uuid, f"slot-{slot.slot}-{slot.attempt}")
        return InstanceSpec(
            task_uuid=pool.uuid, instance_id=slot.slot, attempt=slot.attempt,
            command=doc["preparationTask"]["commandLine"], env=env, secret_env=secret_env,
            network=profile.network if profile else True, share_dir=self.share_dir(pool),
            workdir=str(workdir), s3=s3, resources=tuple(resource_specs(doc)),
            kill_grace_seconds=self.settings.kill_grace_seconds, pool_uuid=pool.uuid,
            hardware_constraints=list(doc.get("hardwareConstraints") or ()))

    def _finish(self, session: Session, pool: Pool, slots: list[PoolSlot], tasks_active: bool,
                now: datetime, on_change: Callable[[Pool], None]) -> None:
        """Close (or fail, or delete) a pool: give back its slots."""
        failed = any(s.state == FAILED for s in slots)
        if failed and tasks_active:  # a pool that cannot prepare its slots runs nothing
            self._cancel_tasks(session, pool, "pool_failed",
                               f"pool {pool.uuid} failed: its tasks cannot run")
        slot_ids = {s.id for s in slots}
        self._stopped += [key for key, slot_id in self.preparing.items() if slot_id in slot_ids]
        session.execute(delete(PoolSlot).where(PoolSlot.pool_id == pool.id))
        shutil.rmtree(Path(self.share_dir(pool)).parent, ignore_errors=True)  # /share goes too
        self.busy.pop(pool.id, None)
        self._idle_since.pop(pool.id, None)
        if pool.state == P.PENDING_DELETE.value and not tasks_active:
            session.delete(pool)  # its tasks keep their document; pool_id: ON DELETE SET NULL
            return
        if set_pool_state(pool, P.FAILURE if failed else P.CLOSED, now):
            pool.delete_after = completion_deadline(pool.document, now)
            on_change(pool)

    def _cancel_tasks(self, session: Session, pool: Pool, code: str, message: str) -> None:
        """Hand the pool's unfinished tasks, not yet being aborted, to the scheduler to cancel."""
        error = {"code": code, "message": message, "debug": None}
        for task_id in session.scalars(select(Task.id).where(
                Task.pool_id == pool.id, Task.ended_at.is_(None),
                Task.abort_requested.is_(False))):
            self._cancelled[task_id] = error

    # -- preparation events -------------------------------------------------------------------

    def preparation_ended(self, session: Session, event: Finished, max_infra_retries: int) -> None:
        slot_id = self.preparing.pop(event.key, None)
        slot = session.get(PoolSlot, slot_id) if slot_id is not None else None
        if slot is None or slot.state != PREPARING:
            return
        pool = session.get(Pool, slot.pool_id)
        slot.exit_code = event.exit_code
        if event.cancelled:
            slot.state = FAILED
            slot.error = "the preparation task was cancelled"
        elif event.error:
            slot.error = event.error
            if slot.attempt > max_infra_retries:
                slot.state = FAILED
        elif event.exit_code == 0:
            slot.state, slot.idle_since = READY, utcnow()
        else:
            slot.state = FAILED
            slot.error = f"exited with code {event.exit_code}"
        if slot.state == FAILED and pool is not None:
            pool.errors = [*pool.errors, {
                "code": "preparation_failed",
                "message": f"the preparation task failed on slot {slot.slot}: {slot.error}",
                "debug": None}]
