"""Value objects read from a task document: :class:`Status`, :class:`CompletedInstance`,
:class:`RunningInstance`, :class:`Error`.

They are frozen snapshots; reading ``task.status`` again (after the cache time) gives a new one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .states import InstanceState

__all__ = ["Status", "CompletedInstance", "RunningInstance", "Error"]


def _num(value: Any, kind: type = float) -> Any:
    return None if value is None else kind(value)


@dataclass(frozen=True)
class Error:
    """An error record of a task (``{"code", "message", "debug"}``); not an exception."""

    code: Optional[str] = None
    message: Optional[str] = None
    debug: Optional[str] = None

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> Optional["Error"]:
        if not doc:
            return None
        return cls(code=doc.get("code"), message=doc.get("message"), debug=doc.get("debug"))

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.code else str(self.message)


@dataclass(frozen=True)
class CompletedInstance:
    """One finished instance (an entry of ``completedInstances``).

    ``state`` is an :class:`~qcompute.InstanceState` when the server sends a known name, else the
    raw string.
    """

    instance_id: int
    state: Union[InstanceState, str, None] = None
    exit_code: Optional[int] = None
    wall_time_sec: Optional[float] = None
    exec_time_sec: Optional[float] = None
    exec_time_sec_ghz: Optional[float] = None
    peak_memory_mb: Optional[float] = None
    average_ghz: Optional[float] = None
    execution_attempt_count: Optional[int] = None
    results: tuple[str, ...] = ()
    error: Optional[Error] = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "CompletedInstance":
        state: Union[InstanceState, str, None] = doc.get("state")
        try:
            state = InstanceState(state) if state is not None else None
        except ValueError:
            pass
        error = doc.get("error")
        return cls(
            instance_id=int(doc.get("instanceId", 0)),
            state=state,
            exit_code=_num(doc.get("exitCode"), int),
            wall_time_sec=_num(doc.get("wallTimeSec")),
            exec_time_sec=_num(doc.get("execTimeSec")),
            exec_time_sec_ghz=_num(doc.get("execTimeSecGHz")),
            peak_memory_mb=_num(doc.get("peakMemoryMB")),
            average_ghz=_num(doc.get("averageGHz")),
            execution_attempt_count=_num(doc.get("executionAttemptCount"), int),
            results=tuple(doc.get("results") or ()),
            error=Error.from_json(error) if isinstance(error, Mapping) else
            (Error(message=str(error)) if error else None),
        )


@dataclass(frozen=True)
class RunningInstance:
    """Live telemetry of one running instance (or pool slot): an entry of
    ``status.runningInstancesInfo.perRunningInstanceInfo``, refreshed about every second.

    ``cpu_usage`` is a percentage of the node's cores; ``memory_usage`` a 0-1 ratio of the
    instance's memory limit; network rates are in kbit/s; ``execution_time_ghz`` is CPU
    seconds times the clock in GHz.
    """

    instance_id: int
    phase: Optional[str] = None
    progress: Optional[float] = None
    cpu_model: Optional[str] = None
    cpu_usage: Optional[float] = None
    current_frequency_ghz: Optional[float] = None
    max_frequency_ghz: Optional[float] = None
    current_memory_mb: Optional[float] = None
    max_memory_mb: Optional[float] = None
    memory_usage: Optional[float] = None
    network_in_kbps: Optional[float] = None
    network_out_kbps: Optional[float] = None
    execution_time_sec: Optional[float] = None
    execution_time_ghz: Optional[float] = None
    execution_attempt_count: Optional[int] = None

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "RunningInstance":
        number = {name: _num(doc.get(wire)) for name, wire in (
            ("progress", "progress"), ("cpu_usage", "cpuUsage"),
            ("current_frequency_ghz", "currentFrequencyGHz"),
            ("max_frequency_ghz", "maxFrequencyGHz"), ("current_memory_mb", "currentMemoryMB"),
            ("max_memory_mb", "maxMemoryMB"), ("memory_usage", "memoryUsage"),
            ("network_in_kbps", "networkInKbps"), ("network_out_kbps", "networkOutKbps"),
            ("execution_time_sec", "executionTimeSec"),
            ("execution_time_ghz", "executionTimeGHz"))}
        return cls(instance_id=int(doc.get("instanceId", 0)), phase=doc.get("phase"),
                   cpu_model=doc.get("cpuModel"),
                   execution_attempt_count=_num(doc.get("executionAttemptCount"), int),
                   **number)


def range_size(ranges: Optional[str]) -> int:
    """How many instance ids a range string such as ``"0-3,7"`` holds (0 for None or "")."""
    size = 0
    for part in (ranges or "").split(","):
        first, _, last = part.strip().partition("-")
        if first:
            size += int(last) - int(first) + 1 if last else 1
    return size


@dataclass(frozen=True)
class Status:
    """Execution status of a task (the ``status`` object of the document).

    Progress values are percentages; ranges are instance ranges such as ``"0-3,7"``.
    ``running_instances_info`` is kept as the raw JSON object (averages and totals);
    ``running_instances`` holds its per-instance entries as :class:`RunningInstance`.
    """

    download_progress: Optional[float] = None
    execution_progress: Optional[float] = None
    upload_progress: Optional[float] = None
    instance_count: Optional[int] = None
    download_time: Optional[str] = None
    download_time_sec: Optional[float] = None
    environment_time: Optional[str] = None
    environment_time_sec: Optional[float] = None
    execution_time: Optional[str] = None
    execution_time_sec: Optional[float] = None
    upload_time: Optional[str] = None
    upload_time_sec: Optional[float] = None
    wall_time: Optional[str] = None
    wall_time_sec: Optional[float] = None
    succeeded_range: Optional[str] = None
    executed_range: Optional[str] = None
    failed_range: Optional[str] = None
    started_once_range: Optional[str] = None
    last_update_timestamp: Optional[str] = None
    execution_time_by_cpu_model: tuple[Mapping[str, Any], ...] = ()
    execution_time_ghz_by_cpu_model: tuple[Mapping[str, Any], ...] = ()
    running_instances_info: Mapping[str, Any] = field(default_factory=dict)
    running_instances: tuple[RunningInstance, ...] = ()

    def instance_states(self) -> dict[str, int]:
        """How many instances are ``queued``, ``running``, ``done`` (succeeded), ``failed``
        and ``cancelled``, from ``instanceCount``, the ranges and the running instances (what
        Qarnot's status holds too). ``queued`` counts what is neither final nor running."""
        done, failed = range_size(self.succeeded_range), range_size(self.failed_range)
        final = max(range_size(self.executed_range), done + failed)
        running = len(self.running_instances)
        total = max(self.instance_count or 0, final + running)
        return {"queued": total - final - running, "running": running, "done": done,
                "failed": failed, "cancelled": final - done - failed}

    @classmethod
    def from_json(cls, doc: Optional[Mapping[str, Any]]) -> Optional["Status"]:
        if doc is None:
            return None
        return cls(
            download_progress=_num(doc.get("downloadProgress")),
            execution_progress=_num(doc.get("executionProgress")),
            upload_progress=_num(doc.get("uploadProgress")),
            instance_count=_num(doc.get("instanceCount"), int),
            download_time=doc.get("downloadTime"),
            download_time_sec=_num(doc.get("downloadTimeSec")),
            environment_time=doc.get("environmentTime"),
            environment_time_sec=_num(doc.get("environmentTimeSec")),
            execution_time=doc.get("executionTime"),
            execution_time_sec=_num(doc.get("executionTimeSec")),
            upload_time=doc.get("uploadTime"),
            upload_time_sec=_num(doc.get("uploadTimeSec")),
            wall_time=doc.get("wallTime"),
            wall_time_sec=_num(doc.get("wallTimeSec")),
            succeeded_range=doc.get("succeededRange"),
            executed_range=doc.get("executedRange"),
            failed_range=doc.get("failedRange"),
            started_once_range=doc.get("startedOnceRange"),
            last_update_timestamp=doc.get("lastUpdateTimestamp"),
            execution_time_by_cpu_model=tuple(doc.get("executionTimeByCpuModel") or ()),
            execution_time_ghz_by_cpu_model=tuple(doc.get("executionTimeGhzByCpuModel") or ()),
            running_instances_info=dict(doc.get("runningInstancesInfo") or {}),
            running_instances=tuple(
                RunningInstance.from_json(entry) for entry in
                (doc.get("runningInstancesInfo") or {}).get("perRunningInstanceInfo") or ()),
        )
