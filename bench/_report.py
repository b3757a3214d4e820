"""What every benchmark prints with its figures: the conditions they were measured under, and
a few measures shared between the scripts (percentiles, a process's RSS and CPU seconds)."""
from __future__ import annotations

import json
import os
import platform
import sys
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import qcompute

__all__ = ["QARNOT_AGENT", "cluster_facts", "conditions", "cpu_seconds", "percentile", "rotated",
           "rss_kb", "storage_urls"]

QARNOT_AGENT = "qarnot-sdk-python/v2.23.0"  # the official SDK's User-Agent


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def cluster_facts(url: str) -> dict[str, Any]:
    """What ``GET /health`` says of a cluster: its version, worker slots and instance sandbox."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=10) as response:
        health = json.loads(response.read())
    return {"cluster": f"{url} (qcompute {health.get('version', '?')})",
            "executor slots (workers)": health.get("capacity", "?"),
            "instances": health.get("isolation", "?")}


def storage_urls(url: str) -> dict[str, str]:
    """The S3 URL ``GET /settings`` hands out: ``direct`` to qcompute's SDK (SeaweedFS itself),
    ``front`` to the official SDK (the S3 front, a relay in the server process)."""
    found = {}
    for path, agent in (("direct", "bench"), ("front", QARNOT_AGENT)):
        request = urllib.request.Request(f"{url.rstrip('/')}/settings",
                                         headers={"User-Agent": agent})
        with urllib.request.urlopen(request, timeout=10) as response:
            found[path] = json.loads(response.read())["storage"]
    return found


def conditions(title: str, facts: Optional[Mapping[str, Any]] = None) -> None:
    """Print ``title`` and the conditions of the run: the machine, its load average now (so a
    busy machine shows next to its figures), the versions, then the bench's own ``facts``."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    lines = {
        "machine": f"{os.cpu_count()} CPUs, {_memory_gb()}, {platform.system()} "
                   f"{platform.release()}",
        "load average now (1, 5, 15 min)": load,
        "versions": f"Python {platform.python_version()}, qcompute {qcompute.__version__} "
                    f"({Path(qcompute.__file__).parent.parent}), qarnot {_version('qarnot')}, "
                    f"boto3 {_version('boto3')}",
        **(facts or {}),
    }
    print(f"\n{title}")
    for name, value in lines.items():
        print(f"  {name + ':':34} {value}")
    sys.stdout.flush()


def _memory_gb() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 ** 2:.0f} GB of RAM"
    return "? GB of RAM"


def rotated(names: list[str], round_: int) -> list[str]:
    """The contenders' order in a round: shifted by one each round, so none always goes first
    (and none always runs right after the same other one, with three or fewer)."""
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def percentile(values: Iterable[float], share: float) -> float:
    """The ``share`` (0 to 100) percentile, interpolated between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * share / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def rss_kb(pid: Any = "self", field: str = "VmRSS") -> Optional[int]:
    """A process's resident memory in KiB from ``/proc/<pid>/status`` (``VmHWM``: its peak);
    None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
