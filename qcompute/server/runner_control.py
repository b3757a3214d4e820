"""Control of a running instance: instant snapshots, the periodic snapshot, resource refreshes.

:class:`InstanceControl` is the inbox: any thread may post requests to it while the instance
runs. :class:`Controller` is the runner's control thread: it serves the inbox one request at a
time (uploads never overlap) and takes the periodic snapshot while the command runs, without
stopping the command. It serves from the moment the resources are in (its thread starts with the
first request, or at once for a periodic snapshot: most instances never get one) and is closed
just before the workdir is removed: requests still queued then are served first, later ones are
refused, so no SnapshotDone or ResourcesRefreshed follows the instance's Finished.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import Any, Callable, Optional

from qcompute.server.executors.base import (ExecutorEvent, InstanceSpec, ResourcesRefreshed,
                                            SnapshotDone, SnapshotRequest)
from qcompute.server.runner_files import InfraError, InstanceFiles

__all__ = ["InstanceControl", "Controller"]

log = logging.getLogger(__name__)

_CLOSE = object()
_STARTED, _ENDED = "started", "ended"  # the command's start and end, posted by the runner
_BLOCKED_SIGNALS = {signal.SIGTERM, signal.SIGINT}  # cancel signals belong to the main thread


class InstanceControl:
    """Requests to one running instance; each ``post`` returns False once it is closed."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._asked = False  # a request was posted
        self._on_request: Optional[Callable[[], None]] = None  # called (locked) on each one

    def snapshot(self, request: SnapshotRequest) -> bool:
        return self._post(("snapshot", request))

    def set_periodic(self, interval_sec: int, request: Optional[SnapshotRequest]) -> bool:
        return self._post(("periodic", (interval_sec, request)))

    def refresh(self) -> bool:
        return self._post(("refresh", None))

    def apply(self, message: dict[str, Any]) -> bool:
        """Post a control message as ``executors.base.ControlMessages`` makes them; raises
        KeyError, TypeError or ValueError for a malformed one."""
        kind = message["control"]
        if kind == "snapshot":
            return self.snapshot(SnapshotRequest(**message["request"]))
        if kind == "periodic":
            return self.set_periodic(int(message.get("interval_sec") or 0),
                                     SnapshotRequest.from_dict(message.get("request")))
        if kind == "refresh":
            return self.refresh()
        raise ValueError(f"unknown control {kind!r}")

    def _post(self, item: Any, request: bool = True) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._queue.put(item)
            if request:
                self._asked = True
                if self._on_request is not None:
                    self._on_request()
            return True

    def _close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_CLOSE)

    def _get(self, timeout: Optional[float]) -> Any:
        return self._queue.get(timeout=timeout)


class Controller:
    """The control thread of one instance run."""

    def __init__(self, spec: InstanceSpec, control: InstanceControl, files: InstanceFiles,
                 emit: Callable[[ExecutorEvent], None], cancel: threading.Event) -> None:
        self.spec, self.control, self.files = spec, control, files
        self.emit, self.cancel = emit, cancel
        self._interval = spec.snapshot_interval_sec if spec.periodic_snapshot else 0
        self._periodic = spec.periodic_snapshot
        self._running = False  # the command runs: periodic rounds are due
        self._ended = False  # the command ended: refreshes have nothing to feed
        self._next_round: Optional[float] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Serve the requests from now on (those already posted too)."""
        with self.control._lock:
            self.control._on_request = self._start_thread
            if self.control._asked or self._interval:
                self._start_thread()

    def _start_thread(self) -> None:
        """The inbox's lock held: the thread, if not started yet."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, daemon=True,
                name=f"control-{self.spec.task_uuid}-{self.spec.instance_id}")
            self._thread.start()

    def command_started(self) -> None:
        self.control._post((_STARTED, None), request=False)

    def command_ended(self) -> None:
        self.control._post((_ENDED, None), request=False)

    def close(self) -> None:
        """Serve what is queued, refuse the rest, and wait for the thread."""
        self.control._close()
        with self.control._lock:
            thread = self._thread
        if thread is not None:
            thread.join()

    # -- the thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_SIGNALS)
        while True:
            try:
                item = self.control._get(self._wait_seconds())
            except queue.Empty:
                self._periodic_round()
                continue
            if item is _CLOSE:
                return
            try:
                self._handle(*item)
            except Exception:  # the control thread never dies early: Finished must stay last
                log.exception("control request %r of %s failed", item[0], self.spec.key)

    def _wait_seconds(self) -> Optional[float]:
        if not (self._running and self._interval > 0 and self._periodic):
            return None
        if self._next_round is None:
            self._next_round = time.monotonic() + self._interval
        return max(0.0, self._next_round - time.monotonic())

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == _STARTED:
            self._running, self._next_round = True, None
        elif kind == _ENDED:
            self._running, self._ended = False, True
        elif kind == "periodic":
            self._interval, self._periodic = arg[0] or 0, arg[1]
            self._next_round = None  # the new interval counts from now
        elif kind == "snapshot":
            self._take(arg)
        elif kind == "refresh":
            self._refresh()

    def _periodic_round(self) -> None:
        assert self._periodic is not None
        self._take(self._periodic)
        self._next_round = max(time.monotonic(), (self._next_round or 0) + self._interval)

    def _take(self, request: SnapshotRequest) -> None:
        if self.cancel.is_set():
            self.emit(SnapshotDone(self.spec.key, request.snapshot_id, ok=False,
                                   error="the instance was cancelled"))
            return
        result = self.files.snapshot(request)
        self.emit(SnapshotDone(self.spec.key, request.snapshot_id, ok=result.error is None,
                               error=result.error, files=result.files, bytes=result.bytes,
                               size=result.size, keys=result.keys))

    def _refresh(self) -> None:
        if not self.spec.resources or self._ended or self.cancel.is_set():
            self.emit(ResourcesRefreshed(self.spec.key, ok=True))  # nothing to pull (any more)
            return
        try:
            files = self.files.download(refresh=True)
        except InfraError as exc:
            self.emit(ResourcesRefreshed(self.spec.key, ok=False, error=str(exc)))
            return
        self.emit(ResourcesRefreshed(self.spec.key, ok=True, files=files))
