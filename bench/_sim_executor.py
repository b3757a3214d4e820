"""A simulated cluster behind the executor seam (``qcompute.server.executors.base``), for
``bench/scale.py sim``: ``nodes`` x ``slots`` slots, no process anywhere.

An instance handed over is placed on the least busy node at once (``Placed``, then
``Phase running``, as the Ray executor reports them), "runs" for a duration drawn from a
lognormal distribution divided by ``compression``, and ends with ``Finished`` (exit code 0)
from one timer thread. The hand-over time of every instance is kept, with the submit time the
client wrote into its ``SUBMITTED_AT`` constant, so the bench reads submit-to-start latencies
and the dispatch rate from here.
"""
from __future__ import annotations

import heapq
import math
import random
import threading
import time
from typing import Callable, Optional

from qcompute.server.executors.base import (Executor, ExecutorEvent, Finished, InstanceKey,
                                            InstanceSpec, Phase, Placed, SnapshotRequest)

SUBMITTED_AT = "SUBMITTED_AT"  # the constant in which the client writes time.time() at submit


class SimulatedExecutor(Executor):
    sandboxed = True  # as a real cluster: users may be added
    isolation = "simulated (no process)"

    def __init__(self, on_event: Callable[[ExecutorEvent], None], *, nodes: int, slots: int,
                 median_seconds: float, sigma: float, compression: float, seed: int = 1) -> None:
        super().__init__(on_event)
        self._capacity = nodes * slots
        self._nodes = nodes
        self._mu, self._sigma, self._compression = math.log(median_seconds), sigma, compression
        self._random = random.Random(seed)
        self._lock = threading.Condition()
        self._ends: list[tuple[float, InstanceKey]] = []  # a heap of (monotonic end, key)
        self._running: dict[InstanceKey, int] = {}  # key -> node
        self._busy = [0] * nodes
        self._free = [(0, n) for n in range(nodes)]  # a heap of (busy slots, node)
        self._stopped = False
        self.starts: list[tuple[float, float]] = []  # (hand-over time, submitted at), time.time()
        self._timer = threading.Thread(target=self._finish_loop, name="sim-executor", daemon=True)
        self._timer.start()

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, spec: InstanceSpec) -> None:
        now = time.time()
        seconds = self._random.lognormvariate(self._mu, self._sigma) / self._compression
        with self._lock:
            if spec.key in self._running:
                raise ValueError(f"instance {spec.key} is already running")
            node = self._place()
            self._running[spec.key] = node
            heapq.heappush(self._ends, (time.monotonic() + seconds, spec.key))
            self._lock.notify()
        self.starts.append((now, float(spec.env.get(SUBMITTED_AT) or "nan")))
        self.on_event(Placed(spec.key, node_id=f"sim-{node}", hostname=f"node{node}"))
        self.on_event(Phase(spec.key, "running"))

    def _place(self) -> int:
        """The node with the fewest busy slots (a heap with lazy updates)."""
        while True:
            busy, node = heapq.heappop(self._free)
            if busy == self._busy[node]:
                break
        self._busy[node] += 1
        heapq.heappush(self._free, (self._busy[node], node))
        return node

    def _release(self, key: InstanceKey) -> bool:
        node = self._running.pop(key, None)
        if node is None:
            return False
        self._busy[node] -= 1
        heapq.heappush(self._free, (self._busy[node], node))
        return True

    def _finish_loop(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (not self._ends or
                                             self._ends[0][0] > time.monotonic()):
                    self._lock.wait(self._ends[0][0] - time.monotonic() if self._ends else None)
                if self._stopped:
                    return
                _, key = heapq.heappop(self._ends)
                if key in self._running:  # not cancelled meanwhile; it leaves the running set
                    self.on_event(Finished(key, exit_code=0))  # once its Finished is handed
                    self._release(key)

    def cancel(self, key: InstanceKey) -> None:
        with self._lock:
            if key in self._running:
                self.on_event(Finished(key, exit_code=None, cancelled=True))
                self._release(key)

    def _check(self, key: InstanceKey) -> None:
        with self._lock:
            if key not in self._running:
                raise KeyError(f"instance {key} is not running here")

    def snapshot(self, key: InstanceKey, request: SnapshotRequest) -> None:
        self._check(key)

    def set_periodic_snapshot(self, key: InstanceKey, interval_sec: int,
                              request: Optional[SnapshotRequest]) -> None:
        self._check(key)

    def refresh_resources(self, key: InstanceKey) -> None:
        self._check(key)

    def running(self) -> set[InstanceKey]:
        with self._lock:
            return set(self._running)

    def shutdown(self) -> None:
        with self._lock:
            self._stopped = True
            self._running.clear()
            self._lock.notify()
        self._timer.join(5)
