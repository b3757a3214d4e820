"""Live telemetry of running instances, and the dialect's ``runningInstancesInfo`` built from it.

Runners sample each running instance about once a second (``executors.base.Telemetry``); the
scheduler keeps the latest sample of each in a :class:`TelemetryStore`, in memory: it changes
every second and means nothing once the instance has ended or the server has restarted. With
several replicas, ``mirror`` (set by ``replicas.py``) relays the scheduler's samples to the
standbys' stores.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable, Iterable, Optional

from ..executors.base import InstanceKey, Telemetry

__all__ = ["TelemetryStore", "PHASES", "instance_info", "running_info", "running_seconds"]

# instance state -> the dialect's phase of a running instance
PHASES = {"Dispatched": "environment", "Downloading": "download", "Running": "execution",
          "Uploading": "upload"}


class TelemetryStore:
    """The latest sample of each running instance (thread-safe: single dict operations)."""

    def __init__(self) -> None:
        self._latest: dict[InstanceKey, Telemetry] = {}
        # called with each sample, and with the key of each forgotten instance
        self.mirror: Optional[Callable[[Telemetry | InstanceKey], None]] = None

    def update(self, sample: Telemetry, *, mirror: bool = True) -> None:
        self._latest[sample.key] = sample
        if mirror and self.mirror is not None:
            self.mirror(sample)

    def forget(self, key: InstanceKey, *, mirror: bool = True) -> None:
        self._latest.pop(key, None)
        if mirror and self.mirror is not None:
            self.mirror(key)

    def get(self, key: InstanceKey) -> Optional[Telemetry]:
        return self._latest.get(key)


def instance_info(*, phase: str, instance_id: int, attempt: int, running_seconds: float,
                  sample: Optional[Telemetry], cpu_model: str,
                  node: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """One ``perRunningInstanceInfo`` entry: every field of the dialect, zero before the
    first sample, and qcompute's ``node`` (``{"id", "hostname"}`` where an executor spanning
    several nodes placed it, else null)."""
    cpu = sample.cpu_seconds if sample else 0.0
    ghz = sample.frequency_ghz if sample else 0.0
    return {
        "phase": phase, "instanceId": instance_id, "progress": 0.0, "cpuModel": cpu_model,
        "coreCount": 1, "clockRatio": 1.0 if ghz else 0.0,
        "maxFrequencyGHz": sample.max_frequency_ghz if sample else 0.0,
        "currentFrequencyGHz": ghz,
        "cpuUsage": sample.cpu_usage if sample else 0.0,
        "maxMemoryMB": round(sample.max_memory_mb) if sample else 0,
        "currentMemoryMB": round(sample.memory_mb) if sample else 0,
        "memoryUsage": round(sample.memory_mb / sample.memory_limit_mb, 4)
        if sample and sample.memory_limit_mb else 0.0,
        "networkInKbps": sample.network_in_kbps if sample else 0.0,
        "networkOutKbps": sample.network_out_kbps if sample else 0.0,
        "executionTimeSec": round(running_seconds, 3),
        "executionTimeGHz": round(cpu * ghz, 3),
        "executionAttemptCount": attempt,
        "activeForwards": [], "vpnConnections": [], "node": node,
    }


def running_info(entries: Iterable[dict[str, Any]], now_iso: Optional[str],
                 snapshot_results: Iterable[str] = ()) -> dict[str, Any]:
    """``runningInstancesInfo``: the entries, with their averages and totals."""
    entries = list(entries)

    def average(field: str) -> float:
        return round(sum(e[field] for e in entries) / len(entries), 4) if entries else 0.0

    frequencies = [e["currentFrequencyGHz"] for e in entries if e["currentFrequencyGHz"]]
    by_model: dict[str, int] = {}
    for entry in entries:
        by_model[entry["cpuModel"]] = by_model.get(entry["cpuModel"], 0) + entry["coreCount"]
    return {
        "timestamp": now_iso, "snapshotResults": list(snapshot_results),
        "averageFrequencyGHz": average("currentFrequencyGHz"),
        "maxFrequencyGHz": max(frequencies, default=0.0),
        "minFrequencyGHz": min(frequencies, default=0.0),
        "averageMaxFrequencyGHz": average("maxFrequencyGHz"),
        "averageCpuUsage": average("cpuUsage"),
        "clusterPowerIndicator": round(sum(frequencies), 3),
        "averageMemoryUsage": average("memoryUsage"),
        "averageNetworkInKbps": average("networkInKbps"),
        "averageNetworkOutKbps": average("networkOutKbps"),
        "totalNetworkInKbps": round(sum(e["networkInKbps"] for e in entries), 2),
        "totalNetworkOutKbps": round(sum(e["networkOutKbps"] for e in entries), 2),
        "runningCoreCountByCpuModel": [{"model": m, "core": n, "runningCoreCount": n}
                                       for m, n in by_model.items()],
        "perRunningInstanceInfo": entries,
    }


def running_seconds(started_at: Optional[datetime], now: datetime) -> float:
    return (now - started_at).total_seconds() if started_at else 0.0
