"""Pool and job documents as the API returns them (reference §2.3, §2.4)."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I

from ..db.models import Instance, Job, Pool, PoolSlot, Task
from ..executors.base import InstanceKey
from .pools import PREPARING, READY, pool_task_counts
from .telemetry import PHASES, instance_info, running_info, running_seconds
from .wire import Samples, hms, iso

__all__ = ["pool_to_json", "job_to_json"]

_ACTIVE = [s.value for s in I if s.is_active()]


def _times(obj: Pool | Job, now: datetime) -> dict[str, Any]:
    return {
        "uuid": obj.uuid,
        "name": obj.name,
        "shortname": obj.shortname,
        "state": obj.state,
        "previousState": obj.previous_state,
        "stateTransitionTime": iso(obj.state_transition_time),
        "previousStateTransitionTime": iso(obj.previous_state_transition_time),
        "lastModified": iso(obj.updated_at),
        "creationDate": iso(obj.created_at),
        "endDate": iso(obj.ended_at),
        "tags": [t.tag for t in obj.tags],
    }


def _slot_infos(session: Session, pool: Pool, now: datetime, samples: Samples,
                cpu_model: str) -> list[dict[str, Any]]:
    """One entry per held slot: a preparing slot shows its preparation run; the ready slots
    show the pool's running task instances (oldest first), then nothing while idle."""
    slots = session.execute(
        select(PoolSlot.slot, PoolSlot.attempt, PoolSlot.state, PoolSlot.created_at)
        .where(PoolSlot.pool_id == pool.id).order_by(PoolSlot.slot)).all()
    busy = iter(session.execute(
        select(Task.uuid, Instance.instance_id, Instance.attempt, Instance.state,
               Instance.started_at).join(Task, Instance.task_id == Task.id)
        .where(Task.pool_id == pool.id, Instance.state.in_(_ACTIVE)).order_by(Instance.id)).all())
    entries = []
    for slot, attempt, state, held_since in slots:
        if state == PREPARING:
            key, phase, since = InstanceKey(pool.uuid, slot, attempt), "environment", held_since
        elif state == READY and (run := next(busy, None)) is not None:
            key, phase, since = InstanceKey(run[0], run[1], run[2]), PHASES[run[3]], run[4]
        elif state == READY:
            key, phase, since = None, "execution", held_since
        else:
            continue
        entries.append(instance_info(
            phase=phase, instance_id=slot, attempt=attempt,
            running_seconds=running_seconds(since, now),
            sample=samples(key) if key else None, cpu_model=cpu_model))
    return entries


def pool_to_json(session: Session, pool: Pool, now: datetime,
                 samples: Samples = lambda key: None, cpu_model: str = "") -> dict[str, Any]:
    """The submitted document, then the server's view: slots held, busy and queued work, and
    the live telemetry of what runs on them (``samples``)."""
    slots = Counter(session.scalars(select(PoolSlot.state).where(PoolSlot.pool_id == pool.id)))
    held = sum(slots.values())
    tasks = pool_task_counts(session, pool.id)
    busy = sum(tasks.get(s, 0) for s in _ACTIVE)
    queued = tasks.get(I.QUEUED.value, 0)
    wall = ((pool.ended_at or now) - pool.created_at).total_seconds()
    data: dict[str, Any] = {**pool.document}
    data.pop("resourceBuckets", None)
    for key, empty in (("constants", []), ("labels", {}), ("advancedResourceBuckets", []),
                       ("hardwareConstraints", []), ("preparationTask", None)):
        data.setdefault(key, empty)
    data.setdefault("elasticProperty", {"isElastic": False, "minTotalSlots": 0,
                                        "maxTotalSlots": 0, "minIdleSlots": 0,
                                        "resizePeriod": 90, "rampResizeFactor": 1,
                                        "minIdleTimeSeconds": 0})
    data.update(_times(pool, now))
    data.update({
        "profile": pool.profile,
        # static: the nodes asked for; elastic: the slots held now
        "instanceCount": held if data["elasticProperty"].get("isElastic")
        else data.get("instanceCount", held),
        "runningInstanceCount": slots.get(READY, 0) + slots.get(PREPARING, 0),
        "runningCoreCount": slots.get(READY, 0) + slots.get(PREPARING, 0),
        "executionTime": hms(0),
        "wallTime": hms(wall),
        "poolUsage": round(busy / held, 4) if held else 0.0,
        "totalSlotCapacity": held,
        "queuedOrRunningTaskInstancesCount": float(busy + queued),
        "credits": 0.0,
        "errors": list(pool.errors or []),
        "status": {
            "timestamp": iso(now), "lastUpdateTimestamp": iso(pool.updated_at),
            "downloadProgress": 0.0, "executionProgress": 0.0, "uploadProgress": 0.0,
            "instanceCount": held, "executionTime": hms(0), "executionTimeSec": 0,
            "wallTime": hms(wall), "wallTimeSec": round(wall, 3),
            "succeededRange": "", "executedRange": "", "failedRange": "",
            "executionTimeByCpuModel": [], "executionTimeGhzByCpuModel": [],
            "runningInstancesInfo": running_info(
                _slot_infos(session, pool, now, samples, cpu_model), iso(now)),
        },
        # qcompute extras: the slots the pool holds, by state
        "slots": {"target": pool.slot_target, "held": held, "ready": slots.get(READY, 0),
                  "preparing": slots.get(PREPARING, 0), "busy": busy, "queued": queued},
    })
    return data


def job_to_json(job: Job, now: datetime, pool_uuid: str | None) -> dict[str, Any]:
    data: dict[str, Any] = {**job.document}
    data.update(_times(job, now))
    data.update({"poolUuid": pool_uuid, "useDependencies": job.use_dependencies,
                 "maxWallTime": job.document.get("maxWallTime"),
                 "autoDeleteOnCompletion": bool(job.document.get("autoDeleteOnCompletion")),
                 "completionTimeToLive": job.document.get("completionTimeToLive", "00:00:00"),
                 "errors": list(job.errors or [])})
    return data
