"""Limits and measures of one running instance.

* :class:`InstanceCgroup`: where cgroups are writable (v1 ``memory``/``pids``/``cpuacct``, or a
  v2 hierarchy), one cgroup per instance, made under the runner's own: it caps memory and
  processes, and counts CPU time and memory of everything the instance starts. A worker makes
  the next one while it is idle (:meth:`InstanceCgroup.prepare`).
* :class:`Sampler`: emits a :class:`Telemetry` event about once a second while the command runs
  (the runner's wait loop polls it: no thread of its own): CPU and memory from the cgroup (else
  from the process tree, with psutil), network from the instance's network namespace, clock from
  the host.
"""
from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time
from typing import Callable, Optional

from qcompute.server.executors.base import InstanceKey, Telemetry

__all__ = ["InstanceCgroup", "Sampler", "remove_leftover_cgroups"]

log = logging.getLogger(__name__)

_V1 = ("memory", "pids", "cpuacct")
_names = itertools.count()
_busy: list[str] = []  # cgroup directories not empty yet when their instance ended
_busy_lock = threading.Lock()  # in-process runs may end in several threads at once
_spare: dict[tuple[int, int], "InstanceCgroup"] = {}  # (memory_mb, max_pids) -> made ahead


@functools.cache  # a runner's own cgroup does not change: read once per process
def _hierarchies() -> dict[str, str]:
    """Controller (``""`` for cgroup v2) -> this process's cgroup directory in it."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as lines:
        for line in lines:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                own[name] = path
    found: dict[str, str] = {}
    with open("/proc/self/mountinfo") as lines:
        for line in lines:
            fields, _, rest = line.partition(" - ")
            parts, (fstype, _, options) = fields.split(), rest.split()[:3]
            root, mount = parts[3], parts[4]
            names = [""] if fstype == "cgroup2" else (
                [o for o in options.split(",") if o in _V1] if fstype == "cgroup" else [])
            for name in names:
                if name in own and own[name].startswith(root) and name not in found:
                    found[name] = os.path.join(mount, own[name][len(root):].lstrip("/"))
    return found


class InstanceCgroup:
    """One instance's cgroup directories (one per v1 hierarchy, or one v2 directory)."""

    def __init__(self, dirs: dict[str, str]) -> None:
        self.dirs = dirs  # "memory" / "pids" / "cpu" -> directory

    @classmethod
    def create(cls, memory_mb: int, max_pids: int) -> Optional["InstanceCgroup"]:
        """A new cgroup with these caps (0: none), or None where none can be made."""
        spare = _spare.pop((memory_mb, max_pids), None)
        return spare if spare is not None else cls._make(memory_mb, max_pids)

    @classmethod
    def prepare(cls, memory_mb: int, max_pids: int) -> None:
        """Make the next instance's cgroup now (and remove the busy ones that emptied), so that
        the instance's start waits for none of it."""
        if (memory_mb, max_pids) not in _spare:
            group = cls._make(memory_mb, max_pids)
            if group is not None:
                _spare[(memory_mb, max_pids)] = group

    @classmethod
    def _make(cls, memory_mb: int, max_pids: int) -> Optional["InstanceCgroup"]:
        _remove_busy()
        try:
            found = _hierarchies()
        except (OSError, ValueError):
            return None
        name = f"qcompute/{os.getpid()}-{next(_names)}"
        dirs: dict[str, str] = {}
        for role, controller in (("memory", "memory"), ("pids", "pids"), ("cpu", "cpuacct")):
            base = found.get(controller) or found.get("")
            if base is None:
                continue
            path = os.path.join(base, name)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError:
                continue
            dirs[role] = path
        if not dirs:
            return None
        group = cls(dirs)
        if memory_mb:
            limit = str(memory_mb * 1024 * 1024)
            group._write("memory", ("memory.limit_in_bytes", "memory.max"), limit)
        if max_pids:
            group._write("pids", ("pids.max",), str(max_pids))
        return group

    def _write(self, role: str, names: tuple[str, ...], value: str) -> None:
        for name in names:
            path = os.path.join(self.dirs.get(role, ""), name)
            if role in self.dirs and os.path.exists(path):
                try:
                    with open(path, "w") as handle:
                        handle.write(value)
                except OSError as exc:
                    log.warning("cannot set %s: %s", path, exc)
                return

    def add(self, pid: int) -> None:
        """Move process ``pid`` into every directory of the cgroup; its children to come follow
        it."""
        data = b"%d" % pid
        for path in set(self.dirs.values()):
            try:
                fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError:
                pass  # measured from the process tree instead

    def _read(self, role: str, name: str) -> Optional[str]:
        try:
            with open(os.path.join(self.dirs[role], name)) as handle:
                return handle.read()
        except (KeyError, OSError):
            return None

    def cpu_seconds(self) -> Optional[float]:
        usage = self._read("cpu", "cpuacct.usage")
        if usage is not None:
            return int(usage) / 1e9
        stat = self._read("cpu", "cpu.stat")
        for line in (stat or "").splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return None

    def memory_bytes(self) -> tuple[Optional[int], Optional[int]]:
        """(current, peak) of the instance, if the memory controller is there."""
        current = self._read("memory", "memory.usage_in_bytes") or self._read(
            "memory", "memory.current")
        peak = self._read("memory", "memory.max_usage_in_bytes") or self._read(
            "memory", "memory.peak")
        return (int(current) if current else None), (int(peak) if peak else None)

    def remove(self) -> None:
        """Remove the cgroup once its processes are gone. The kernel empties it a few ms after
        the sandbox's init is reaped: what is still busy is removed before the next instance's
        cgroup is made (or by :func:`remove_leftover_cgroups`), so that the instance's end waits
        for nothing and no thread is needed."""
        busy = [path for path in set(self.dirs.values()) if not _rmdir(path)]
        with _busy_lock:
            _busy.extend(busy)


def _rmdir(path: str) -> bool:
    """Whether ``path`` is gone (removed now, or already)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _remove_busy() -> None:
    with _busy_lock:
        _busy[:] = [path for path in _busy if not _rmdir(path)]


def remove_leftover_cgroups(seconds: float = 10.0) -> None:
    """At the runner's end: remove the cgroups made ahead, and those still busy (waiting up
    to ``seconds``)."""
    while _spare:
        _spare.popitem()[1].remove()
    deadline = time.monotonic() + seconds
    while _busy and time.monotonic() < deadline:
        _remove_busy()
        if _busy:
            time.sleep(0.005)
    for path in _busy:
        log.warning("cgroup %s still busy after %.0f s: left behind", path, seconds)
    _busy.clear()


class Sampler:
    """The instance's Telemetry, every ``interval`` seconds: :meth:`poll` emits a sample when
    one is due and says when the next one is."""

    def __init__(self, key: InstanceKey, emit: Callable[[Telemetry], None], root_pid: int,
                 cgroup: Optional[InstanceCgroup], net_counters: Optional[Callable[[], tuple]],
                 memory_limit_mb: float, interval: float = 1.0) -> None:
        self.key, self.emit, self.root_pid = key, emit, root_pid
        self.cgroup, self.net_counters = cgroup, net_counters
        self.memory_limit_mb, self.interval = memory_limit_mb, interval
        self.peak_mb = 0.0
        # the baseline costs nothing: a fresh process tree (or cgroup) has used no CPU yet
        now = time.monotonic()
        self._last = (now, 0.0, *self._net())
        self._due = now + interval  # most short instances end before their first sample

    def poll(self) -> float:
        """Sample if it is time; returns the seconds until the next sample."""
        now = time.monotonic()
        if now < self._due:
            return self._due - now
        try:
            self._sample(now)
        except Exception:  # telemetry never takes the instance down
            log.debug("telemetry of %s failed", self.key, exc_info=True)
        self._due = time.monotonic() + self.interval
        return self.interval

    def _sample(self, now: float) -> None:
        import psutil

        last = self._last
        cores = os.cpu_count() or 1
        cpu, (net_in, net_out) = self._cpu_seconds(psutil), self._net()
        elapsed = max(now - last[0], 1e-6)
        memory_mb, peak_mb = self._memory_mb(psutil)
        self.peak_mb = max(self.peak_mb, peak_mb, memory_mb)
        freq = psutil.cpu_freq()
        current = (freq.current if freq else 0.0) / 1000
        self.emit(Telemetry(
            self.key, cpu_usage=round(100 * (cpu - last[1]) / elapsed / cores, 2),
            cpu_seconds=round(cpu, 3), memory_mb=round(memory_mb, 1),
            max_memory_mb=round(self.peak_mb, 1),
            memory_limit_mb=round(self.memory_limit_mb, 1),
            network_in_kbps=round((net_in - last[2]) * 8 / 1000 / elapsed, 2),
            network_out_kbps=round((net_out - last[3]) * 8 / 1000 / elapsed, 2),
            frequency_ghz=round(current, 3),
            max_frequency_ghz=round(max((freq.max if freq else 0.0) / 1000, current), 3)))
        self._last = (now, cpu, net_in, net_out)

    def _net(self) -> tuple[int, int]:
        return self.net_counters() if self.net_counters else (0, 0)

    def _tree(self, psutil) -> list:
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def _cpu_seconds(self, psutil) -> float:
        seconds = self.cgroup.cpu_seconds() if self.cgroup else None
        if seconds is not None:
            return seconds
        total = 0.0
        for proc in self._tree(psutil):
            try:
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.Error:
                pass
        return total

    def _memory_mb(self, psutil) -> tuple[float, float]:
        current, peak = self.cgroup.memory_bytes() if self.cgroup else (None, None)
        if current is None:
            current = 0
            for proc in self._tree(psutil):
                try:
                    current += proc.memory_info().rss
                except psutil.Error:
                    pass
        return current / 2**20, (peak or 0) / 2**20
