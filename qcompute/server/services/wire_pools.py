"""Pool and job documents as the API returns them (reference §2.3, §2.4)."""
from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I

from ..db.models import Job, Pool, PoolSlot
from .pools import PREPARING, READY, pool_task_counts
from .wire import hms, iso

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


def pool_to_json(session: Session, pool: Pool, now: datetime) -> dict[str, Any]:
    """The submitted document, then the server's view: slots held, busy and queued work."""
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
            "runningInstancesInfo": {"timestamp": iso(now), "snapshotResults": [],
                                     "runningCoreCountByCpuModel": [],
                                     "perRunningInstanceInfo": []},
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
