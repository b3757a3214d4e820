"""Waiting for a task, at the prompt and in scripts: ``wait``, ``run``, ``resume``,
``raise_for_state``, the live bar of instance states, and what Ctrl-C does.

Ctrl-C in :meth:`~RunMethods.run`, :meth:`~RunMethods.resume` or :meth:`~RunMethods.wait`
writes the task's uuid and how to resume or abort it to ``sys.stderr``, then raises a fresh
``KeyboardInterrupt`` (``from None``: the traceback shows the caller's line, not the HTTP
internals that were waiting). ``run(abort_on_interrupt=True)`` aborts the task first.
"""
from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Optional

from . import _resource
from .exceptions import QComputeError, TaskFailedError
from .states import TaskState

if TYPE_CHECKING:
    from .bucket import Progress
    from .task import Task

__all__ = ["RunMethods", "STDERR_TAIL_LINES", "BAR_REFRESH"]

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
BAR_REFRESH = 1.0  # seconds: with a live bar, the long poll replies at least this often
_FAILED = (TaskState.FAILURE, TaskState.CANCELLED)


class _StatesBar:
    """A tqdm bar of the final instances, its postfix the count in each state:
    ``queued 3 · running 2 · done 5 · failed 1``."""

    def __init__(self, task: "Task") -> None:
        from tqdm.auto import tqdm

        self.task = task
        self.bar = tqdm(total=0, unit="inst", desc=task.name)

    def show(self) -> None:
        status = self.task._declared["status"].from_wire(self.task, self.task._data.get("status"))
        if status is None:
            return
        counts = status.instance_states()
        self.bar.total = sum(counts.values())
        self.bar.n = counts["done"] + counts["failed"] + counts["cancelled"]
        shown = [f"{state} {count}" for state, count in counts.items()
                 if count or state in ("queued", "running", "done")]
        self.bar.set_postfix_str(" · ".join(shown), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class RunMethods:
    """``wait()``, ``run()``, ``resume()`` and ``raise_for_state()`` of :class:`~qcompute.Task`."""

    __slots__ = ()

    if TYPE_CHECKING:  # provided by Task
        _conn: Any
        _data: dict[str, Any]
        uuid: Optional[str]
        name: str
        state: Any
        errors: list

        def _is_submitted(self) -> bool: ...
        def _is_final(self) -> bool: ...
        def _require_submitted(self, action: str) -> None: ...
        def _fetch(self, hold: float = 0.0, known_state: Optional[str] = None,
                   until_final: bool = False) -> None: ...
        def _state_now(self) -> Any: ...
        def submit(self) -> "Task": ...
        def abort(self) -> "Task": ...
        def stderr(self, instance_id: Optional[int] = None) -> str: ...
        def download_results(self, output_dir: str, progress: "Progress" = None) -> str: ...

    # -- waiting -----------------------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None, live_progress: bool = False) -> bool:
        """Wait until the task reaches Success, Failure or Cancelled.

        When the server advertises a long poll (``taskWaitMaxSeconds`` in ``GET /settings``),
        each ``GET /tasks/{uuid}?wait=...&until=final`` is held by the server until the task is
        final (with ``live_progress``, until a change of state or 1 s, to move the bar), so the
        end is seen as soon as it happens. Otherwise it polls ``GET /tasks/{uuid}``, first
        after 0.05 s, then 1.5 times later each time, at most every second.

        Ctrl-C writes the task's uuid and how to resume or abort it to stderr, then raises
        ``KeyboardInterrupt``; the task keeps running.

        Args:
            timeout: seconds to wait at most; ``None`` waits for ever.
            live_progress: draw a tqdm bar of the finished instances, with the count of
                instances in each state (``queued 3 · running 2 · done 5 · failed 1``).

        Returns:
            True when the task is final, False on timeout (or if it was never submitted).
        """
        try:
            return self._wait(timeout, live_progress)
        except KeyboardInterrupt:
            self._interrupted(abort=False)
        raise KeyboardInterrupt from None

    def _wait(self, timeout: Optional[float], live_progress: bool) -> bool:
        if not self._is_submitted():
            return False
        deadline = None if timeout is None else _resource._clock() + timeout
        hold = self._conn._long_poll_seconds()
        if hold and not live_progress:
            return self._wait_until_final(hold, deadline)
        bar = _StatesBar(self) if live_progress else None  # type: ignore[arg-type]
        interval = _resource.POLL_START
        try:
            self._fetch()
            while True:
                if bar is not None:
                    bar.show()
                if self._is_final():
                    return True
                now = _resource._clock()
                if deadline is not None and now >= deadline:
                    return False
                left = float("inf") if deadline is None else deadline - now
                if hold:
                    self._fetch(hold=min(hold, BAR_REFRESH, left),
                                known_state=str(self._data.get("state")))
                    continue
                _resource._sleep(min(interval, left))
                interval = min(interval * _resource.POLL_FACTOR, _resource.POLL_MAX)
                self._fetch()
        finally:
            if bar is not None:
                bar.close()

    def _wait_until_final(self, hold: float, deadline: Optional[float]) -> bool:
        """One held ``GET /tasks/{uuid}?wait=...&until=final`` per window: the server replies
        once the task is final, not at each change on the way."""
        while True:
            left = float("inf") if deadline is None else deadline - _resource._clock()
            self._fetch(hold=max(0.0, min(hold, left)), known_state=str(self._data.get("state")),
                        until_final=True)
            if self._is_final():
                return True
            if deadline is not None and _resource._clock() >= deadline:
                return False

    def run(self, output_dir: Optional[str] = None, job_timeout: Optional[float] = None,
            live_progress: bool = False, results_progress: "Progress" = None, *,
            check: bool = False, abort_on_interrupt: bool = False) -> "Task":
        """Submit, wait, abort if ``job_timeout`` passed first, then download the results.

        Args:
            output_dir: where to download the result bucket; ``None`` downloads nothing.
            job_timeout: seconds to wait before aborting; ``None`` waits for ever.
            live_progress: see :meth:`wait`.
            results_progress: progress of the results download: ``True`` for tqdm bars, or a
                callable ``progress(read, total, filename)`` (see :meth:`download_results`).
            check: once the results are downloaded, raise :class:`~qcompute.TaskFailedError`
                if the task ended in Failure or Cancelled (see :meth:`raise_for_state`). Off
                by default, as in the official SDK, whose ``run()`` returns either way.
            abort_on_interrupt: on Ctrl-C, abort the task (and say so) instead of leaving it
                running; ``KeyboardInterrupt`` is raised either way.

        Raises:
            TaskFailedError: with ``check``, the task failed or was cancelled.
            KeyboardInterrupt: Ctrl-C; the task's uuid and what to do next went to stderr.
        """
        try:
            self.submit()
            return self._resume(output_dir, job_timeout, live_progress, results_progress,
                                abort_on_timeout=True, check=check)
        except KeyboardInterrupt:
            self._interrupted(abort=abort_on_interrupt)
        raise KeyboardInterrupt from None

    def resume(self, output_dir: Optional[str] = None, job_timeout: Optional[float] = None,
               live_progress: bool = False, results_progress: "Progress" = None,
               *, abort_on_timeout: bool = False, check: bool = False,
               abort_on_interrupt: bool = False) -> "Task":
        """Wait for a submitted task (e.g. from ``retrieve_task``), then download its results.

        Args:
            output_dir: where to download the result bucket; ``None`` downloads nothing.
            job_timeout: seconds to wait at most.
            live_progress: see :meth:`wait`.
            results_progress: progress of the download.
            abort_on_timeout: abort the task if it is not final when the time is up.
            check: raise :class:`~qcompute.TaskFailedError` if the task ended in Failure or
                Cancelled (after the download).
            abort_on_interrupt: on Ctrl-C, abort the task instead of leaving it running.
        """
        try:
            self._require_submitted("resume")
            return self._resume(output_dir, job_timeout, live_progress, results_progress,
                                abort_on_timeout=abort_on_timeout, check=check)
        except KeyboardInterrupt:
            self._interrupted(abort=abort_on_interrupt)
        raise KeyboardInterrupt from None

    def _resume(self, output_dir: Optional[str], job_timeout: Optional[float],
                live_progress: bool, results_progress: "Progress", *, abort_on_timeout: bool,
                check: bool) -> "Task":
        finished = self._wait(job_timeout, live_progress)
        if not finished and abort_on_timeout:
            logger.info("task %s not finished after %s s: aborting", self.uuid, job_timeout)
            self.abort()
        if output_dir is not None:
            self.download_results(output_dir, progress=results_progress)
        if check:
            self.raise_for_state()
        return self  # type: ignore[return-value]

    # -- failures ----------------------------------------------------------------------------
    def raise_for_state(self, tail_lines: int = STDERR_TAIL_LINES) -> "Task":
        """Raise :class:`~qcompute.TaskFailedError` if the task ended in Failure or Cancelled.

        Reads ``state`` (refreshed when stale); on a failure, also the task's stderr
        (``GET /tasks/{uuid}/stderr``) for its last lines. A task that succeeded, or is not
        final yet, passes.

        Args:
            tail_lines: how many of the last stderr lines the error carries.

        Returns:
            self, to chain (``task.wait() and task.raise_for_state()``).

        Raises:
            TaskFailedError: the task failed or was cancelled; it carries the task, its
                state, its errors and the stderr tail.
        """
        state = self.state
        if state not in _FAILED:
            return self  # type: ignore[return-value]
        try:
            tail = self.stderr().splitlines()[-tail_lines:] if tail_lines > 0 else []
        except QComputeError as exc:  # the errors matter more than the tail
            tail = [f"(stderr unavailable: {exc})"]
        raise TaskFailedError(self, state, list(self.errors), "\n".join(tail))

    # -- Ctrl-C ------------------------------------------------------------------------------
    def _interrupted(self, abort: bool) -> None:
        """Tell the user, on stderr, what became of the task, aborting it first if asked.
        Uses the cached state only: a request that hangs now would need a second Ctrl-C."""
        uuid = self._data.get("uuid")
        label = f"task {self._data.get('name')!r} ({uuid})"
        if not uuid:
            lines = [f"interrupted while submitting task {self._data.get('name')!r}: it may have "
                     "been accepted; conn.tasks() lists your tasks"]
        elif self._is_final():
            lines = [f"interrupted: {label} had ended ({getattr(self._state_now(), 'value', '')})",
                     f"  its results:  conn.retrieve_task({uuid!r}).download_results(DIR)"]
        elif abort:
            try:
                self.abort()
                lines = [f"interrupted: {label} was aborted"]
            except (QComputeError, KeyboardInterrupt) as exc:
                lines = [f"interrupted: {label} could not be aborted ({exc!r})",
                         f"  abort it:  conn.retrieve_task({uuid!r}).abort()"]
        else:
            lines = [f"interrupted: {label} keeps running on the cluster",
                     f"  wait again:  conn.retrieve_task({uuid!r}).resume()",
                     f"  abort it:    conn.retrieve_task({uuid!r}).abort()"]
        sys.stderr.write("".join(f"qcompute: {line}\n" if n == 0 else f"{line}\n"
                                 for n, line in enumerate(lines)))
        sys.stderr.flush()
