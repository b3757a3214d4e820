"""What ``/health`` says of each part of the cluster: ``"ok"``, or ``"down: <why>"``.

* ``database``: a ``SELECT 1`` through the server's own session factory;
* ``storage``: the storage backend's check (the embedded SeaweedFS's supervisor, then a
  ListBuckets with a short timeout);
* ``executor``: whether instances can start (not shut down, its workers can be started);
* ``scheduler``: whether the scheduler's loop thread is alive.

Each check is independent: one that raises names its part as down with the error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from ...states import InstanceState
from ..db.models import Instance

if TYPE_CHECKING:
    from ..scheduler import Scheduler
    from ..storage import StorageBackend

__all__ = ["OK", "check_parts", "active_instances"]

OK = "ok"


def check_parts(*, sessions: sessionmaker[Session], storage: "StorageBackend",
                scheduler: "Scheduler") -> dict[str, str]:
    """Each part's state, in a fixed order."""
    return {"database": _part(lambda: _database(sessions)),
            "storage": _part(storage.check),
            "executor": _part(scheduler.executor.problem),
            "scheduler": _part(lambda: None if scheduler.alive() else "its thread has stopped")}


def _part(check: Callable[[], Optional[str]]) -> str:
    try:
        problem = check()
    except Exception as exc:  # noqa: BLE001 - a check that fails says the part is down
        problem = f"{type(exc).__name__}: {exc}"
    return OK if problem is None else f"down: {problem}"


def _database(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        session.execute(text("SELECT 1")).scalar_one()


def active_instances(sessions: sessionmaker[Session]) -> int:
    """Instances handed to an executor and not finished, cluster-wide (what a standby
    replica, whose own executor runs nothing, reports)."""
    active = [state.value for state in InstanceState if state.is_active()]
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Instance)
                              .where(Instance.state.in_(active)))
