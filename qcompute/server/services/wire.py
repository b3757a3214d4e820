"""Task documents as the API returns them (reference §2.1, §2.2): JSON built from SQL rows."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable, Optional

from qcompute.states import InstanceState as I

from ..db.models import Instance, Task
from ..executors.base import InstanceKey, Telemetry
from .lifecycle import format_ranges
from .telemetry import PHASES, instance_info, running_info, running_seconds

Samples = Callable[[InstanceKey], Optional[Telemetry]]  # the latest telemetry of an instance

__all__ = ["iso", "hms", "task_to_json", "task_summary_to_json"]


def iso(value: Optional[datetime]) -> Optional[str]:
    """``2026-11-21T10:00:00.123456Z``: at most 6 fraction digits (the official SDK's limit).
    Values are stored naive, in UTC; isoformat is many times cheaper than strftime."""
    return None if value is None else value.isoformat(timespec="microseconds") + "Z"


def hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _wall_seconds(task: Task, now: datetime) -> float:
    return ((task.ended_at or now) - task.created_at).total_seconds()


def _common(task: Task, now: datetime, running: int, exec_seconds: float) -> dict[str, Any]:
    return {
        "uuid": task.uuid,
        "name": task.name,
        "shortname": task.shortname,
        "profile": task.profile,
        "poolUuid": task.document.get("poolUuid"),
        "jobUuid": task.document.get("jobUuid"),
        "state": task.state,
        "previousState": task.previous_state,
        "stateTransitionTime": iso(task.state_transition_time),
        "previousStateTransitionTime": iso(task.previous_state_transition_time),
        "lastModified": iso(task.updated_at),
        "creationDate": iso(task.created_at),
        "endDate": iso(task.ended_at),
        "instanceCount": task.instance_count,
        "runningInstanceCount": running,
        "runningCoreCount": running,
        "executionTime": hms(exec_seconds),
        "wallTime": hms(_wall_seconds(task, now)),
        "tags": [t.tag for t in task.tags],
        "waitForPoolResourcesSynchronization": task.document.get(
            "waitForPoolResourcesSynchronization"),
    }


def task_summary_to_json(task: Task, counts: dict[str, int], exec_seconds: float,
                         now: datetime) -> dict[str, Any]:
    """The summary form used by ``/tasks/summaries/paginate``."""
    final = sum(counts.get(s.value, 0) for s in (I.SUCCEEDED, I.FAILED, I.CANCELLED))
    running = counts.get(I.RUNNING.value, 0)
    data = _common(task, now, running, exec_seconds)
    data["progress"] = round(100.0 * final / max(task.instance_count, 1), 2)
    data["maxRetriesPerInstance"] = task.document.get("maxRetriesPerInstance") or 0
    return data


def _completed(instance: Instance, cpu_model: str) -> dict[str, Any]:
    return {
        "instanceId": instance.instance_id,
        "state": instance.state,
        "exitCode": instance.exit_code,
        "wallTimeSec": round(instance.wall_time_sec, 3),
        "execTimeSec": round(instance.exec_time_sec, 3),
        "execTimeSecGHz": 0.0,
        "peakMemoryMB": instance.peak_memory_mb,
        "averageGHz": 0.0,
        "results": [],
        "executionAttemptCount": instance.attempt,
        "node": instance.node,  # qcompute extras: where it ran ({"id", "hostname"} or null),
        "startedAt": iso(instance.started_at),  # when the command ran
        "endedAt": iso(instance.ended_at),
        "error": instance.error,
        "cpuModel": cpu_model,
        "coreCount": 1,
        "clockRatio": 0.0,
    }


def _errors(task: Task, instances: Iterable[Instance]) -> list[dict[str, Any]]:
    errors = list(task.errors or [])
    for inst in instances:
        if inst.state != I.FAILED.value:
            continue
        if inst.error:
            message = f"instance {inst.instance_id} failed: {inst.error}"
        else:
            message = f"instance {inst.instance_id} exited with code {inst.exit_code}"
        errors.append({"code": "instance_failed", "message": message, "debug": None})
    return errors


def _status(task: Task, instances: list[Instance], now: datetime, samples: Samples,
            cpu_model: str) -> dict[str, Any]:
    n = max(task.instance_count, 1)
    by_state: dict[str, list[int]] = {}
    for inst in instances:
        by_state.setdefault(inst.state, []).append(inst.instance_id)
    final = [i.instance_id for i in instances if I(i.state).is_final()]
    started = [i.instance_id for i in instances if i.attempt > 0]
    past_download = [i for i in instances
                     if i.state in (I.RUNNING.value, I.UPLOADING.value) or I(i.state).is_final()]
    running = [i for i in instances if I(i.state).is_active()]
    exec_seconds = sum(i.exec_time_sec for i in instances)
    wall = _wall_seconds(task, now)
    return {
        "timestamp": iso(now),
        "lastUpdateTimestamp": iso(task.updated_at),
        "downloadProgress": round(100.0 * len(past_download) / n, 2),
        "executionProgress": round(100.0 * len(final) / n, 2),
        "uploadProgress": round(100.0 * len(final) / n, 2),
        "instanceCount": task.instance_count,
        **{f"{kind}Time": "00:00:00" for kind in ("download", "environment", "upload")},
        **{f"{kind}TimeSec": 0 for kind in ("download", "environment", "upload")},
        "executionTime": hms(exec_seconds),
        "executionTimeSec": round(exec_seconds, 3),
        "wallTime": hms(wall),
        "wallTimeSec": round(wall, 3),
        "succeededRange": format_ranges(by_state.get(I.SUCCEEDED.value, [])),
        "executedRange": format_ranges(final),
        "failedRange": format_ranges(by_state.get(I.FAILED.value, [])),
        "startedOnceRange": format_ranges(started),
        "executionTimeByCpuModel": [],
        "executionTimeGhzByCpuModel": [],
        "runningInstancesInfo": running_info(
            (instance_info(phase=PHASES[i.state], instance_id=i.instance_id, attempt=i.attempt,
                           running_seconds=running_seconds(i.started_at, now),
                           sample=samples(InstanceKey(task.uuid, i.instance_id, i.attempt)),
                           cpu_model=cpu_model, node=i.node) for i in running),
            iso(now), task.snapshot_results or []),
    }


def task_to_json(task: Task, instances: list[Instance], now: datetime,
                 dependencies: Optional[dict[str, Any]] = None,
                 samples: Samples = lambda key: None, cpu_model: str = "") -> dict[str, Any]:
    """The full document of ``GET /tasks/{uuid}``: the submitted fields, then server fields;
    ``samples`` gives the live telemetry of running instances."""
    running = sum(1 for i in instances if i.state == I.RUNNING.value)
    exec_seconds = sum(i.exec_time_sec for i in instances)
    status = _status(task, instances, now, samples, cpu_model)
    data = {**task.document}
    data.pop("resourceBuckets", None)  # never both forms: the official SDK would list them twice
    data.setdefault("advancedResourceBuckets", [])
    data.setdefault("constants", [])
    data.setdefault("labels", {})
    data.update(_common(task, now, running, exec_seconds))
    data.update({
        "progress": status["executionProgress"],
        "status": status,
        "completedInstances": [_completed(i, cpu_model) for i in instances
                               if I(i.state).is_final()],
        "errors": _errors(task, instances),
        "resultsCount": task.results_count,
        "snapshotInterval": task.snapshot_interval_sec or 0,
        "dependencies": dependencies,
    })
    return data
