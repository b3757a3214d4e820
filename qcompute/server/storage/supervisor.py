"""Keep one child process running: restart it when it dies, with backoff and a limit.

A :class:`Supervised` owns one thread that spawns the process and blocks in ``wait()`` on it (no
polling). The same thread spawns every restart, so ``PR_SET_PDEATHSIG`` (which fires when the
*thread* that forked the child ends) stays armed for as long as the process lives, and the thread
never ends before its child.

The process is restarted only once its owner :meth:`armed <Supervised.arm>` it (its first start
succeeded) and until it is :meth:`released <Supervised.release>` (stopped on purpose). At most
``limit`` restarts happen in any ``window`` seconds; the wait before one is ``backoff`` seconds,
doubled for each restart already in the window, at most ``max_backoff``. Past the limit the
process stays down and :meth:`Supervised.problem` says so, until the owner starts it again.
"""
from __future__ import annotations

import collections
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["RestartPolicy", "Supervised", "describe_exit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``limit`` restarts in any ``window`` seconds (0: never restart), each after
    ``backoff`` seconds doubled per restart already in the window, at most ``max_backoff``."""

    limit: int = 5
    window: float = 600.0
    backoff: float = 1.0
    max_backoff: float = 30.0

    def delay(self, recent: int) -> float:
        return min(self.backoff * 2 ** recent, self.max_backoff)


def describe_exit(code: Optional[int]) -> str:
    """``code 1``, ``code -9 (SIGKILL)``."""
    if code is not None and code < 0:
        try:
            return f"code {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"code {code}"


class Supervised:
    """One process, spawned by ``spawn()`` and checked by ``ready(proc)`` (raises if it does
    not become usable) after each restart; ``name`` and ``log_tail()`` go into the logs."""

    def __init__(self, name: str, spawn: Callable[[], subprocess.Popen],
                 ready: Callable[[subprocess.Popen], None], policy: RestartPolicy,
                 log_tail: Callable[[], str] = lambda: "") -> None:
        self.name, self.policy = name, policy
        self._spawn, self._ready, self._log_tail = spawn, ready, log_tail
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._released = threading.Event()
        self._decided = threading.Event()  # armed or released: a death may now be acted on
        self._down: Optional[str] = None  # why it is down while restarting or after the limit
        self._recent: collections.deque[float] = collections.deque()  # restart times
        self.restarts = 0

    @property
    def proc(self) -> Optional[subprocess.Popen]:
        """The current process (the latest restart's)."""
        return self._proc

    def launch(self) -> subprocess.Popen:
        """Spawn the process from the supervising thread; OSError if it cannot be."""
        box: list = []
        spawned = threading.Event()

        def keep() -> None:
            try:
                proc = self._spawn()
            except OSError as exc:
                box.append(exc)
                spawned.set()
                return
            with self._lock:
                self._proc = proc
            box.append(proc)
            spawned.set()
            self._supervise(proc)

        threading.Thread(target=keep, name=f"{self.name}-supervisor", daemon=True).start()
        spawned.wait()
        if isinstance(box[0], OSError):
            raise box[0]
        return box[0]

    def arm(self) -> None:
        """Its first start succeeded: from now on it is restarted when it dies."""
        self._decided.set()

    def release(self) -> Optional[subprocess.Popen]:
        """No more restarts (the caller stops the process returned, if any)."""
        with self._lock:
            self._released.set()
            self._decided.set()
            return self._proc

    def problem(self) -> Optional[str]:
        """Why the process is not serving now (None: it runs)."""
        with self._lock:
            if self._down:
                return self._down
            proc = self._proc
        if proc is None:
            return f"{self.name} is not started"
        code = proc.poll()
        return None if code is None else f"{self.name} exited with {describe_exit(code)}"

    def _supervise(self, proc: subprocess.Popen) -> None:
        """The thread's life: wait for the process, restart it, until released or given up."""
        failure = self._wait_exit(proc)
        while failure is not None:
            delay = self._next_delay()
            tail = self._log_tail()
            tail = f"; its log ends:\n{tail}" if tail else ""
            if delay is None:
                limit = self.policy.limit
                why = ("restarts are off" if limit == 0 else f"the limit: {limit} restart"
                       f"{'s' if limit > 1 else ''} in {self.policy.window:.0f} s")
                with self._lock:
                    self._down = f"{failure} and stays down ({why})"
                log.error("%s and stays down (%s)%s", failure, why, tail)
                return
            with self._lock:
                self._down = f"{failure}; restarting"
            log.warning("%s; restart %d of at most %d in %.0f s, in %.1f s%s", failure,
                        len(self._recent), self.policy.limit, self.policy.window, delay, tail)
            if self._released.wait(delay):
                return
            failure = self._restart()

    def _wait_exit(self, proc: subprocess.Popen) -> Optional[str]:
        """Block until ``proc`` exits; what happened, or None if it was stopped on purpose."""
        code = proc.wait()
        self._decided.wait()  # its first start is over (or it is being stopped)
        if self._released.is_set():
            return None
        return f"{self.name} (pid {proc.pid}) exited with {describe_exit(code)}"

    def _next_delay(self) -> Optional[float]:
        """The wait before the next restart (recorded), or None past the limit."""
        now = time.monotonic()
        while self._recent and now - self._recent[0] > self.policy.window:
            self._recent.popleft()
        if len(self._recent) >= self.policy.limit:
            return None
        delay = self.policy.delay(len(self._recent))
        self._recent.append(now + delay)
        return delay

    def _restart(self) -> Optional[str]:
        """Spawn again, wait until ready (a process that does not get ready is killed), then
        until it exits: the next failure, or None once released."""
        with self._lock:
            if self._released.is_set():
                return None
            try:
                proc = self._proc = self._spawn()
            except OSError as exc:
                return f"{self.name} could not be started again ({exc})"
        try:
            self._ready(proc)
        except Exception as exc:  # noqa: BLE001 - whatever the check says: kill, count, go on
            log.warning("%s (pid %d) did not become ready again: %s", self.name, proc.pid, exc)
            proc.kill()
        else:
            with self._lock:
                self._down = None
            self.restarts += 1
            log.warning("%s restarted (pid %d)", self.name, proc.pid)
        return self._wait_exit(proc)
