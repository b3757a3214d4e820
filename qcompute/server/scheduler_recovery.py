"""How the scheduler keeps its promise that no instance stays non-final once its executor has let
go of it, and that no working directory outlives its task.

* :class:`Recovery` runs once per round that holds a tick, after the round's events. It compares
  what the scheduler believes runs (the database's active instances, and its own in-flight set,
  pool preparation runs included) with what the executor runs. A key missing from the executor
  on ``STRIKES`` checks in a row gets a synthesised ``Finished``: an infrastructure failure,
  re-queued within ``max_infra_retries``. An executor keeps a key in ``running()`` until its
  ``Finished`` is queued, and the next round applies it before its check: a finished instance
  gets at most one strike. A key the executor runs that nothing believes in is cancelled after
  as many strikes.
* :meth:`Recovery.last_resort` records the end of an instance whose ``Finished`` fails a round
  even on its own (the instance fails, and its error names why), so that one bad event strands
  nobody.
* :class:`WorkDirs` removes a deleted task's working directory (what is left of it: runners
  remove their own once the results are stored), and sweeps what a previous server left at
  start, in a thread of its own.
"""
from __future__ import annotations

import logging
import queue
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I

from .db.models import Instance, Task, utcnow
from .executors.base import Finished, InstanceKey, storable
from .services.tasks import move_instance, refresh_task_state

if TYPE_CHECKING:
    from .scheduler import Scheduler

log = logging.getLogger(__name__)

__all__ = ["Recovery", "WorkDirs", "STRIKES"]

STRIKES = 3  # checks in a row an instance must be missing from the executor before it is settled
_SYNTHESES = 2  # times a lost instance's end is synthesised before giving up on it (and saying so)
_ACTIVE = [s.value for s in I if s.is_active()]


class Recovery:
    def __init__(self, scheduler: "Scheduler") -> None:
        self.scheduler = scheduler
        self._missing: dict[InstanceKey, int] = {}  # key: checks in a row it was missing
        self._strays: dict[InstanceKey, int] = {}
        self._synthesised: dict[InstanceKey, int] = {}

    def check(self, session: Session) -> None:
        """Once per round that holds a tick, in the scheduler's thread, after the round's events."""
        scheduler = self.scheduler
        running = scheduler.executor.running()
        active = {InstanceKey(*row) for row in session.execute(
            select(Task.uuid, Instance.instance_id, Instance.attempt)
            .join(Task, Instance.task_id == Task.id).where(Instance.state.in_(_ACTIVE)))}
        believed = active | set(scheduler._in_flight)
        self._missing = _count(self._missing, believed - running)
        self._strays = _count(self._strays, running - believed)
        self._synthesised = {k: n for k, n in self._synthesised.items() if k in self._missing}
        for key in [k for k, n in self._missing.items() if n >= STRIKES]:
            del self._missing[key]
            tries = self._synthesised[key] = self._synthesised.get(key, 0) + 1
            if tries > _SYNTHESES:
                log.error("%s stays active though no executor runs it; its end cannot be "
                          "recorded (see the errors above)", key)
                continue
            log.warning("%s: the executor no longer runs it and its end was never recorded; "
                        "settling it as lost", key)
            scheduler._events.put(Finished(key, exit_code=None, error=(
                "the instance was lost: its runner ended without its end being recorded")))
        for key in [k for k, n in self._strays.items() if n >= STRIKES]:
            del self._strays[key]
            log.warning("%s runs, but nothing it belongs to is active: cancelling it", key)
            scheduler.executor.cancel(key)

    def last_resort(self, event: object, exc: BaseException) -> set[str]:
        """An event failed a round on its own. A ``Finished`` still ends its instance (as
        failed, naming the error); anything else is dropped, and the ticks' checks and timers
        take it from the database again. Returns the uuids of the tasks that changed."""
        log.error("scheduler event %r failed on its own (%s): %s", event, type(exc).__name__,
                  "recording its instance as failed" if isinstance(event, Finished)
                  else "dropped; the next checks retry from the database")
        if not isinstance(event, Finished):
            return set()
        scheduler = self.scheduler
        scheduler._in_flight.discard(event.key)
        try:
            with scheduler.sessions() as session:
                found = scheduler._instance(session, event.key)
                if found is None or not I(found[0].state).is_active():
                    return set()
                instance, task = found
                instance.exit_code, instance.ended_at = event.exit_code, utcnow()
                instance.error = storable(
                    f"the server could not record this instance's end ({type(exc).__name__}: "
                    f"{exc}); it is marked failed" + (f"; its own error: {event.error}"
                                                      if event.error else ""))
                move_instance(task, instance, I.FAILED)
                refresh_task_state(session, task)
                session.commit()
                scheduler.metrics.ended(I.FAILED, instance.exit_code)
                return {task.uuid}
        except Exception:
            log.exception("recording %s as failed failed too", event.key)
            return set()


def _count(previous: dict[InstanceKey, int], now: Iterable[InstanceKey]) -> dict[InstanceKey, int]:
    return {key: previous.get(key, 0) + 1 for key in now}


class WorkDirs:
    """``<data dir>/work``: one directory per task (its attempts) and per pool (``share`` and
    its preparation runs). Removed by one background thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._remove_all, name="qcompute-workdirs",
                                        daemon=True)
        self._thread.start()

    def remove(self, uuid: str) -> None:
        """The task or pool ``uuid`` was deleted: its directory goes."""
        self._queue.put(self.root / uuid)

    def sweep(self, open_pools: set[str]) -> None:
        """At start, when nothing runs: everything goes but the ``share`` dirs of open pools."""
        if not self.root.is_dir():
            return
        for entry in self.root.iterdir():
            if entry.name not in open_pools:
                self._queue.put(entry)
                continue
            for inner in entry.iterdir():
                if inner.name != "share":
                    self._queue.put(inner)

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _remove_all(self) -> None:
        while (path := self._queue.get()) is not None:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)
