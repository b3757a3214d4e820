"""LocalExecutor: instances run in a pool of warm runner processes on this host.

The executor keeps ``capacity`` slots. Each slot has a thread that lives as long as the executor
and keeps one worker, ``python -m qcompute.server.runner --serve``, spawned in a new session with
PR_SET_PDEATHSIG (tied to that thread, so workers die with the server and each command's watchdog
then kills the command's group). ``submit`` queues the spec as one JSON line for an idle worker's
stdin; the worker answers ``ACCEPTED``, writes the instance's events as JSON lines on stdout,
Finished last, and waits for the next line. EOF on its stdin makes it exit. Worker stderr (its
own logs) goes to this module's logger.

No lock is held across I/O, and no caller ever blocks on a worker: every line for a worker is
appended to its slot's outbox, and the slot's thread, the only one touching that worker's pipes,
writes it (non-blocking) as the worker reads. A busy worker sends ``ALIVE`` every
``stall_seconds / 4``; one that sends nothing for ``stall_seconds`` (stopped, wedged) is killed,
and its instance ends as an infrastructure failure.

``snapshot``, ``set_periodic_snapshot`` and ``refresh_resources`` write a control line to the
busy worker's stdin (one JSON object: ``{"control": "snapshot"|"periodic"|"refresh", "key":
{...}, "request": {...}, "interval_sec": N}``); lines for an instance not accepted yet wait for
its ACCEPTED. The worker answers with SnapshotDone / ResourcesRefreshed events before Finished.

``cancel`` sends SIGTERM to the worker once it has accepted the instance: the worker kills the
command's process group and reports ``Finished(cancelled=True)``; SIGTERM never stops a worker.
As a backstop, an instance not finished ``kill_grace_seconds + 5`` s after the cancel gets its
worker's process group SIGKILLed. A worker that dies before reporting yields a synthesised
Finished; a dead worker is replaced, and a worker is retired after
``_MAX_INSTANCES_PER_WORKER`` instances to bound its memory.

An instance's key stays in ``running()`` until its Finished has been handed to ``on_event``
(``_reporting`` covers the time between the slot's release and that hand-over, which writes the
output held back for masking): a key missing from ``running()`` has its end already reported.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from dataclasses import asdict
from typing import Any, Callable, Optional

from qcompute.server.reaper import TAG_ENV, Reaper, kill_tagged, new_tag
from qcompute.server.runner import ACCEPTED, ALIVE, HEARTBEAT_ENV, SANDBOX_ENV, pdeathsig_preexec
from qcompute.server.sandbox import SandboxConfig

from .base import (ControlMessages, Executor, ExecutorEvent, Finished, InstanceKey, InstanceSpec,
                   event_from_json)

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)
runner_log = logging.getLogger("qcompute.server.runner")

_BACKSTOP_EXTRA_SECONDS = 5.0
_MAX_INSTANCES_PER_WORKER = 1000
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the directory holding qcompute/
_ACCEPTED = ACCEPTED.encode()
_ALIVE = ALIVE.encode()
_WRITE_CHUNK = 1 << 16


class _Run:
    """One submitted instance, from submit to its Finished event."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self.line = (spec.to_json() + "\n").encode()  # made before the executor's lock is taken
        self.sent = False  # its spec line was written to the slot's current worker
        self.accepted = False  # the worker read it: SIGTERM now cancels it
        self.cancel_requested = False
        self.backstop: Optional[threading.Timer] = None
        self.controls: list[bytes] = []  # control lines waiting for its ACCEPTED


class _Slot:
    """One worker process at a time, kept by one long-lived thread."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.thread: Optional[threading.Thread] = None
        self.proc: Optional[subprocess.Popen] = None  # until it is reaped
        self.open = False  # the worker takes specs (its stdin is open)
        self.run: Optional[_Run] = None  # until its Finished event is delivered
        self.served = 0  # instances the current worker accepted
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=10)
        self.outbox = bytearray()  # lines for the current worker, written by the slot's thread
        self.closing = False  # close the worker's stdin once the outbox is written
        self.heard = 0.0  # monotonic time of the worker's last line (or of the last spec sent)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # nudges the thread


class LocalExecutor(ControlMessages, Executor):
    """Runs up to ``capacity`` instances at once in warm runner workers of ``python``, each
    keeping the instances' ``sandbox`` (none by default). A worker silent for ``stall_seconds``
    while it holds an instance is killed (0: never)."""

    def __init__(self, on_event: Callable[[ExecutorEvent], None], capacity: int,
                 python: str = sys.executable, sandbox: Optional[SandboxConfig] = None,
                 isolation: Optional[str] = None, stall_seconds: float = 60.0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        super().__init__(on_event)
        self._capacity = capacity
        self._python = python
        self.sandboxed = bool(sandbox and sandbox.enabled)
        self.isolation = isolation or ("bubblewrap sandbox" if self.sandboxed else "unsandboxed")
        self._lock = threading.Condition()
        self._accepting = True
        self._stopping = False  # no more workers are started
        self._stall = stall_seconds
        pythonpath = os.environ.get("PYTHONPATH")
        self._env = {**os.environ,
                     "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT, pythonpath])),
                     SANDBOX_ENV: (sandbox or SandboxConfig()).to_json(),
                     HEARTBEAT_ENV: str(stall_seconds / 4 if stall_seconds else 0)}
        # sandboxes still starting when their worker dies outlive it: the reaper ends them
        self._reaper = Reaper(new_tag()) if self.sandboxed else None
        if self._reaper is not None:
            self._env[TAG_ENV] = self._reaper.tag
        self._slots = [_Slot(i) for i in range(capacity)]
        self._reporting: set[InstanceKey] = set()  # released, their Finished not handed over yet
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._keep, args=(slot,), daemon=True,
                                           name=f"runner-worker-{slot.index}")
            slot.thread.start()

    @property
    def capacity(self) -> int:
        return self._capacity

    def running(self) -> set[InstanceKey]:
        with self._lock:
            return {slot.run.spec.key for slot in self._slots if slot.run is not None} | \
                self._reporting

    def worker_pids(self) -> list[int]:
        """The pids of the live worker processes (for tests and diagnostics)."""
        with self._lock:
            return [slot.proc.pid for slot in self._slots if slot.proc is not None]

    def problem(self) -> Optional[str]:
        if not self._accepting:
            return "shut down"
        stopped = sum(not (slot.thread and slot.thread.is_alive()) for slot in self._slots)
        if stopped:
            return f"{stopped} of {self._capacity} worker slots have stopped"
        if not os.access(self._python, os.X_OK):
            return f"runner workers cannot start: {self._python} is not executable"
        return None

    def submit(self, spec: InstanceSpec) -> None:
        run = _Run(spec)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the executor is shut down")
            if any(s.run is not None and s.run.spec.key == spec.key for s in self._slots):
                raise ValueError(f"instance {spec.key} is already running")
            idle = [s for s in self._slots if s.run is None]
            if not idle:
                raise RuntimeError(f"the executor is at capacity ({self._capacity})")
            slot = next((s for s in idle if s.open), idle[0])  # a warm worker first
            slot.run = run
            if slot.open:
                self._send(slot)
            else:  # its thread starts a worker and sends it
                self._lock.notify_all()

    def cancel(self, key: InstanceKey) -> None:
        with self._lock:
            slot = next((s for s in self._slots if s.run and s.run.spec.key == key), None)
            if slot is None or slot.run is None or slot.run.cancel_requested:
                return
            run = slot.run
            run.cancel_requested = True
            if not run.sent:  # still waiting for a worker: it never starts
                self._release(slot)
            else:
                if run.accepted:
                    self._signal(slot)
                run.backstop = threading.Timer(
                    run.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS, self._force_kill,
                    (slot, run))
                run.backstop.daemon = True
                run.backstop.start()
                return
        self._report_end(Finished(key, exit_code=None, cancelled=True))

    def _control(self, key: InstanceKey, message: dict[str, Any]) -> None:
        line = (json.dumps({**message, "key": asdict(key)}) + "\n").encode()
        with self._lock:
            slot = next((s for s in self._slots if s.run and s.run.spec.key == key), None)
            if slot is None or slot.run is None or slot.run.cancel_requested:
                raise KeyError(f"instance {key} is not running here")
            if not slot.run.accepted:
                slot.run.controls.append(line)
            elif not self._post(slot, line):
                raise KeyError(f"the worker of instance {key} cannot be reached")

    def shutdown(self) -> None:
        with self._lock:
            self._accepting = False
            runs = [slot.run for slot in self._slots if slot.run is not None]
        for run in runs:
            self.cancel(run.spec.key)
        with self._lock:
            self._stopping = True
            for slot in self._slots:
                self._close(slot)  # idle workers exit now, busy ones after their Finished
            self._lock.notify_all()
        grace = max((run.spec.kill_grace_seconds + _BACKSTOP_EXTRA_SECONDS for run in runs),
                    default=0.0)
        deadline = time.monotonic() + grace + 2.0
        for slot in self._slots:
            slot.thread.join(max(0.0, deadline - time.monotonic()))  # type: ignore[union-attr]
        for slot in self._slots:
            if slot.thread.is_alive():  # type: ignore[union-attr]
                self._kill(slot)
                slot.thread.join(1.0)  # type: ignore[union-attr]
        with self._lock:
            self._silenced = True
        if self._reaper is not None:
            self._reaper.close()

    # -- one slot -----------------------------------------------------------------------------

    def _keep(self, slot: _Slot) -> None:
        """The slot's thread: start a worker, serve through it until it exits, repeat. After a
        worker that served nothing, wait for an instance before starting the next (no spin)."""
        warm = True
        while True:
            with self._lock:
                while not self._stopping and slot.run is None and not warm:
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                warm = self._work(slot)
            except Exception:  # keep the slot alive whatever happens
                log.exception("runner worker slot %d failed", slot.index)
                warm = False
                time.sleep(1.0)

    def _work(self, slot: _Slot) -> bool:
        """One worker's life. Returns whether to start the next one right away."""
        try:
            proc = subprocess.Popen(
                [self._python, "-m", "qcompute.server.runner", "--serve"], env=self._env,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, preexec_fn=_runner_preexec())
        except OSError as exc:
            log.error("cannot start a runner worker: %s", exc)
            self._lose(slot, f"cannot start the runner: {exc}", only_sent=False)
            return False
        os.set_blocking(proc.stdin.fileno(), False)  # type: ignore[union-attr]
        with self._lock:
            slot.proc, slot.open, slot.served = proc, True, 0
            slot.outbox.clear()
            slot.closing = False
            slot.stderr_tail.clear()
            if self._stopping:
                self._close(slot)
            elif slot.run is not None and not slot.run.sent:
                self._send(slot)
        try:
            self._read_pipes(slot, proc)
        except Exception as exc:  # keep the Finished guarantee whatever happens
            log.exception("reading runner worker %d failed", proc.pid)
            slot.stderr_tail.append(repr(exc))
            self._kill(slot)
        code = proc.wait()
        with self._lock:
            slot.proc, slot.open = None, False
            retired, served = slot.served >= _MAX_INSTANCES_PER_WORKER, slot.served
        proc.stdin.close()  # type: ignore[union-attr]
        tail = " | ".join(slot.stderr_tail)
        if not retired and not self._stopping:
            log.warning("runner worker %d exited with code %s%s", proc.pid, code,
                        f": {tail}" if tail else "")
            if self._reaper is not None:
                kill_tagged(f"{self._reaper.tag}.{proc.pid}")
        healthy = retired or served > 0  # else a broken start: no instance waits for the next
        self._lose(slot, f"runner exited with code {code} without reporting"
                   + (f": {tail}" if tail else ""), only_sent=healthy)
        return healthy

    def _read_pipes(self, slot: _Slot, proc: subprocess.Popen) -> None:
        """The worker's pipes, until its stdout and stderr close: events from stdout, log lines
        from stderr, the slot's outbox to stdin; and the stall watchdog."""
        partial = {proc.stdout: b"", proc.stderr: b""}
        reading, stdin = set(partial), proc.stdin
        with selectors.DefaultSelector() as selector:
            for pipe in reading:
                selector.register(pipe, selectors.EVENT_READ)
            selector.register(slot.wake_r, selectors.EVENT_READ)
            while reading:
                stdin = self._tend_stdin(slot, selector, stdin)
                for key, _ in selector.select(self._stall / 4 if self._stall else None):
                    pipe = key.fileobj
                    if pipe is slot.wake_r:
                        _drain(slot.wake_r)
                        continue
                    if pipe is stdin:
                        stdin = self._flush(slot, selector, stdin)
                        continue
                    data = os.read(key.fd, 65536)
                    if data:
                        *lines, partial[pipe] = (partial[pipe] + data).split(b"\n")
                    else:
                        lines, partial[pipe] = [partial[pipe]], b""
                        reading.discard(pipe)
                        selector.unregister(pipe)
                        pipe.close()  # type: ignore[union-attr]
                    if pipe is proc.stdout:
                        slot.heard = time.monotonic()
                    for line in filter(None, lines):
                        if pipe is proc.stdout:
                            self._on_line(slot, line)
                        else:
                            text = line.decode(errors="replace")
                            slot.stderr_tail.append(text)
                            runner_log.warning("worker %d: %s", proc.pid, text)
                self._watch(slot)

    def _tend_stdin(self, slot: _Slot, selector: selectors.BaseSelector, stdin):
        """Watch stdin for writing while the outbox holds data; close it when asked and
        everything is written. Returns stdin, or None once closed."""
        if stdin is None:
            return None
        with self._lock:
            pending, close = bool(slot.outbox), slot.closing and not slot.outbox
        registered = stdin in selector.get_map()
        if close:
            if registered:
                selector.unregister(stdin)
            stdin.close()
            return None
        if pending and not registered:
            selector.register(stdin, selectors.EVENT_WRITE)
        elif not pending and registered:
            selector.unregister(stdin)
        return stdin

    def _flush(self, slot: _Slot, selector: selectors.BaseSelector, stdin):
        """Write what the worker's pipe takes now. A worker that is gone gets nothing more."""
        with self._lock:
            chunk = bytes(slot.outbox[:_WRITE_CHUNK])
        try:
            written = os.write(stdin.fileno(), chunk)
        except BlockingIOError:
            return stdin
        except OSError:  # the worker closed its stdin: it is exiting, its pipes tell the rest
            with self._lock:
                slot.outbox.clear()
                slot.open = False
            selector.unregister(stdin)
            stdin.close()
            return None
        with self._lock:
            del slot.outbox[:written]
        return stdin

    def _watch(self, slot: _Slot) -> None:
        """Kill a worker that holds an instance and has been silent for ``stall_seconds``."""
        if not self._stall:
            return
        with self._lock:
            run = slot.run
            silent = time.monotonic() - slot.heard
            if run is None or not run.sent or silent <= self._stall:
                return
            log.warning("runner of %s sent nothing for %.0f s: killing it", run.spec.key, silent)
            slot.stderr_tail.append(f"the runner sent nothing for {silent:.0f} s (stalled)")
            slot.open = False
            self._kill(slot)

    def _on_line(self, slot: _Slot, line: bytes) -> None:
        if line == _ALIVE:
            return
        if line == _ACCEPTED:
            with self._lock:
                run = slot.run
                if run is not None and run.sent and not run.accepted:
                    run.accepted = True
                    slot.served += 1
                    if run.cancel_requested:
                        self._signal(slot)
                    for control in run.controls:
                        self._post(slot, control)
                    run.controls.clear()
            return
        try:
            event = event_from_json(line)
        except (ValueError, KeyError, TypeError):
            slot.stderr_tail.append(line.decode(errors="replace"))
            log.warning("unreadable runner output %r", line[:200])
            return
        with self._lock:
            run = slot.run
            if run is None or not run.accepted or event.key != run.spec.key:
                log.warning("runner event for no running instance: %r", event)
                return
            if isinstance(event, Finished):  # the slot is free; its key stays in running()
                self._release(slot)
                if slot.served >= _MAX_INSTANCES_PER_WORKER:
                    self._close(slot)  # retire it: its thread starts a fresh one
        if isinstance(event, Finished):
            self._report_end(event)
        else:
            self._deliver(event)

    def _lose(self, slot: _Slot, error: str, *, only_sent: bool) -> None:
        """Report the slot's instance as lost. With ``only_sent``, an instance its worker never
        received stays, for the next worker."""
        with self._lock:
            run = slot.run
            if run is None or (only_sent and not run.sent):
                return
            self._release(slot)
        self._report_end(Finished(run.spec.key, exit_code=None, error=error,
                                  cancelled=run.cancel_requested))

    def _release(self, slot: _Slot) -> None:
        """Lock held: the slot's instance is over; its key stays in ``running()`` until
        ``_report_end`` has handed its Finished over."""
        if slot.run is not None:
            if slot.run.backstop is not None:
                slot.run.backstop.cancel()
            self._reporting.add(slot.run.spec.key)
        slot.run = None

    def _send(self, slot: _Slot) -> None:
        """Lock held: queue the slot's instance for its (idle, open) worker."""
        assert slot.run is not None
        slot.run.sent = self._post(slot, slot.run.line)
        slot.heard = time.monotonic()

    def _post(self, slot: _Slot, data: bytes) -> bool:
        """Lock held: queue a line for the worker's stdin (the slot's thread writes it); False
        if the worker takes no more lines."""
        if slot.proc is None or not slot.open:
            return False
        slot.outbox += data
        _nudge(slot.wake_w)
        return True

    def _close(self, slot: _Slot) -> None:
        """Lock held: close the worker's stdin once its outbox is written; it then exits once
        idle."""
        if slot.proc is not None and slot.open:
            slot.open = False
            slot.closing = True
            _nudge(slot.wake_w)

    def _report_end(self, event: Finished) -> None:
        """Hand over a released instance's Finished; only then does its key leave
        ``running()``."""
        try:
            self._deliver(event)
        finally:
            with self._lock:
                self._reporting.discard(event.key)

    # -- stopping -----------------------------------------------------------------------------

    def _signal(self, slot: _Slot) -> None:
        """Lock held: SIGTERM to the worker, which cancels its current instance."""
        if slot.proc is not None:
            try:
                slot.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _force_kill(self, slot: _Slot, run: _Run) -> None:
        """The backstop: the cancelled instance did not finish in time."""
        with self._lock:
            if slot.run is not run:
                return
            log.warning("runner of %s did not stop in time: killing its worker", run.spec.key)
            slot.open = False  # its thread reports the instance and starts a fresh worker
            self._kill(slot)

    def _kill(self, slot: _Slot) -> None:
        """SIGKILL the worker with its process group. The command (a session of its own)
        follows: the worker's watchdog kills its group when the worker dies."""
        proc = slot.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _nudge(fd: int) -> None:
    try:
        os.write(fd, b"\0")
    except BlockingIOError:  # already nudged
        pass


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _runner_preexec() -> Callable[[], None]:
    """Die with the spawning thread; start with SIGTERM blocked (the worker keeps it blocked
    while idle and unblocks it while it runs an instance)."""
    die_with_parent = pdeathsig_preexec()

    def preexec() -> None:
        die_with_parent()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    return preexec
