"""LocalExecutor: each instance runs in its own runner process on this host.

``submit`` starts a thread per instance. The thread spawns ``python -m qcompute.server.runner``
in a new session with PR_SET_PDEATHSIG (tied to that thread, which lives as long as the runner,
so runners die with the server), writes the spec on its stdin and turns the JSON lines of its
stdout into events. Runner stderr (its own logs) goes to this module's logger.

``cancel`` sends SIGTERM to the runner, which kills the command's process group and reports
``Finished(cancelled=True)``. As a backstop, a runner still alive ``kill_grace_seconds + 5`` s
later is SIGKILLed with its process group (its watchdog then kills the command's group).
"""
from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from qcompute.server.runner import pdeathsig_preexec

from .base import (Executor, ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                   event_from_json)

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)
runner_log = logging.getLogger("qcompute.server.runner")

_BACKSTOP_EXTRA_SECONDS = 5.0
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding qcompute/


class _Runner:
    """One submitted instance and its runner process."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.proc: Optional[subprocess.Popen] = None
        self.cancel_requested = False
        self.reported = False  # its Finished event was delivered
        self.backstop: Optional[threading.Timer] = None
        self.thread: Optional[threading.Thread] = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=10)


class LocalExecutor(Executor):
    """Runs up to ``capacity`` instances at once as runner processes of ``python``."""

    def __init__(self, on_event: Callable[[ExecutorEvent], None], capacity: int,
                 python: str = sys.executable) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        super().__init__(on_event)
        self._capacity = capacity
        self._python = python
        self._lock = threading.Lock()
        self._runners: dict[InstanceKey, _Runner] = {}  # until the runner process is reaped
        self._accepting = True
        self._silenced = False  # after shutdown(): no more events
        pythonpath = os.environ.get("PYTHONPATH")
        self._env = {**os.environ,
                     "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, pythonpath]))}

    @property
    def capacity(self) -> int:
        return self._capacity

    def running(self) -> set[InstanceKey]:
        with self._lock:
            return {key for key, runner in self._runners.items() if not runner.reported}

    def submit(self, spec: InstanceSpec) -> None:
        runner = _Runner(spec)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the executor is shut down")
            active = [r for r in self._runners.values() if not r.reported]
            if any(r.spec.key == spec.key for r in active):
                raise ValueError(f"instance {spec.key} is already running")
            if len(active) >= self._capacity:
                raise RuntimeError(f"the executor is at capacity ({self._capacity})")
            self._runners[spec.key] = runner
        runner.thread = threading.Thread(target=self._supervise, args=(runner,), daemon=True,
                                         name=f"runner-{spec.task_uuid}-{spec.instance_id}")
        runner.thread.start()

    def cancel(self, key: InstanceKey) -> None:
        with self._lock:
            runner = self._runners.get(key)
            if runner is None or runner.reported or runner.cancel_requested:
                return
            runner.cancel_requested = True
            started = runner.proc is not None
        if started:  # otherwise _supervise terminates it as soon as it exists
            self._terminate(runner)

    def shutdown(self) -> None:
        with self._lock:
            self._accepting = False
            runners = list(self._runners.values())
        for runner in runners:
            self.cancel(runner.spec.key)
        grace = max((r.spec.kill_grace_seconds for r in runners), default=0.0)
        deadline = time.monotonic() + grace + _BACKSTOP_EXTRA_SECONDS + 2.0
        for runner in runners:
            if runner.thread is not None:
                runner.thread.join(max(0.0, deadline - time.monotonic()))
        for runner in runners:
            if runner.thread is not None and runner.thread.is_alive():
                self._force_kill(runner)
                runner.thread.join(1.0)
        with self._lock:
            self._silenced = True

    # -- one runner ---------------------------------------------------------------------------

    def _supervise(self, runner: _Runner) -> None:
        key = runner.spec.key
        try:
            proc = subprocess.Popen(
                [self._python, "-m", "qcompute.server.runner"], env=self._env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=_runner_preexec())
        except OSError as exc:
            self._finish(runner, Finished(key, exit_code=None,
                                          error=f"cannot start the runner: {exc}"))
            self._forget(runner)
            return
        with self._lock:
            runner.proc = proc
            cancel_now = runner.cancel_requested
        if cancel_now:
            self._terminate(runner)
        try:
            proc.stdin.write(runner.spec.to_json().encode())  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass  # it died already: reported below
        try:
            self._read_pipes(runner, proc)
            code = proc.wait()
        except Exception as exc:  # keep the Finished guarantee whatever happens
            log.exception("supervising the runner of %s failed", key)
            self._force_kill(runner)
            code = proc.wait()
            runner.stderr_tail.append(repr(exc))
        if not runner.reported:
            tail = " | ".join(runner.stderr_tail)
            self._finish(runner, Finished(
                key, exit_code=None, cancelled=runner.cancel_requested,
                error=f"runner exited with code {code} without reporting"
                      + (f": {tail}" if tail else "")))
        self._forget(runner)

    def _read_pipes(self, runner: _Runner, proc: subprocess.Popen) -> None:
        """Events from stdout, log lines from stderr, until both pipes close."""
        partial = {proc.stdout: b"", proc.stderr: b""}
        with selectors.DefaultSelector() as selector:
            for pipe in partial:
                selector.register(pipe, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    pipe = key.fileobj
                    data = os.read(key.fd, 65536)
                    if data:
                        *lines, partial[pipe] = (partial[pipe] + data).split(b"\n")
                    else:
                        lines, partial[pipe] = [partial[pipe]], b""
                        selector.unregister(pipe)
                        pipe.close()  # type: ignore[union-attr]
                    for line in filter(None, lines):
                        if pipe is proc.stdout:
                            self._on_line(runner, line)
                        else:
                            text = line.decode(errors="replace")
                            runner.stderr_tail.append(text)
                            runner_log.warning("%s: %s", runner.spec.key, text)

    def _on_line(self, runner: _Runner, line: bytes) -> None:
        try:
            event = event_from_json(line)
        except (ValueError, KeyError, TypeError):
            runner.stderr_tail.append(line.decode(errors="replace"))
            log.warning("%s: unreadable runner output %r", runner.spec.key, line[:200])
            return
        if isinstance(event, Finished):
            self._finish(runner, event)
        elif not runner.reported:
            self._deliver(event)

    def _finish(self, runner: _Runner, event: Finished) -> None:
        """Deliver the one Finished event; the slot is free before the scheduler hears of it."""
        with self._lock:
            if runner.reported:
                return
            runner.reported = True
            if runner.backstop is not None:
                runner.backstop.cancel()
        self._deliver(event)

    def _forget(self, runner: _Runner) -> None:
        with self._lock:
            if self._runners.get(runner.spec.key) is runner:
                del self._runners[runner.spec.key]

    def _deliver(self, event: ExecutorEvent) -> None:
        if self._silenced:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("on_event failed for %r", event)

    # -- stopping -----------------------------------------------------------------------------

    def _terminate(self, runner: _Runner) -> None:
        assert runner.proc is not None
        try:
            runner.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            return
        timer = threading.Timer(runner.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS,
                                self._force_kill, (runner,))
        timer.daemon = True
        with self._lock:
            if runner.reported:
                return
            runner.backstop = timer
        timer.start()

    def _force_kill(self, runner: _Runner) -> None:
        """SIGKILL a runner that did not stop, with its process group. The command (a session
        of its own) follows: the runner's watchdog kills its group when the runner dies."""
        proc = runner.proc
        if proc is None or proc.poll() is not None:
            return
        log.warning("runner of %s did not stop in time: killing it", runner.spec.key)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _runner_preexec() -> Callable[[], None]:
    """Die with the spawning thread; start with SIGTERM blocked, so a cancel that arrives while
    Python starts waits for the runner's handler (runner.main unblocks it) instead of killing
    the runner before it can report."""
    die_with_parent = pdeathsig_preexec()

    def preexec() -> None:
        die_with_parent()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    return preexec
