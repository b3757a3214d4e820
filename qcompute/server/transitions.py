"""The cluster's story in its log: one line per committed change of state of a task, pool or
job, on the logger ``qcompute.transitions``.

The lines come from one place, the database session, not from the code paths that move
states: a flush collects what it writes (a new row: ``submitted``; a changed ``state``
column: the transition; a deleted row: ``deleted``), the commit logs it, and a rollback drops
it, so that a line is written only for what the database holds. Each line carries ``event``
(submitted, dispatched, running, uploading, cancelling, closing, terminating, ended, deleted),
``kind``, ``uuid``, ``state`` and ``previous_state``; a task's ``ended`` line adds its
instances by state, and the ``exit_code``, ``failure`` class (services/lifecycle.py,
:func:`failure_class`) and ``error`` of its first failed instance (0 and no failure for a
success). In text the fields are ``key=value`` pairs after the event; in JSON
(``log_format``, logs.py) they are fields of the record.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Optional

from sqlalchemy import event, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from qcompute.states import InstanceState as I
from qcompute.states import JobState, PoolState, TaskState

from .db.models import Instance, Job, Lifecycle, Pool, Task
from .services.lifecycle import failure_class

log = logging.getLogger("qcompute.transitions")

__all__ = ["watch"]

_PENDING = "qcompute.transitions"  # the session.info key of what the next commit logs
_KINDS = {Task: ("task", TaskState), Pool: ("pool", PoolState), Job: ("job", JobState)}
_EVENTS = {"Submitted": "submitted", "Active": "submitted",
           "PartiallyDispatched": "dispatched", "FullyDispatched": "dispatched",
           "PartiallyExecuting": "running", "FullyExecuting": "running",
           "UploadingResults": "uploading", "PendingCancel": "cancelling",
           "Closing": "closing", "Terminating": "terminating"}
_ERROR_CHARS = 300  # of a failed instance's error, in the line


def watch(sessions: sessionmaker[Session]) -> None:
    """Log the transitions committed by the sessions of this factory."""
    event.listen(sessions, "after_flush", _collect)
    event.listen(sessions, "after_commit", _write)
    event.listen(sessions, "after_transaction_end", _drop)


def _collect(session: Session, _context) -> None:
    pending = session.info.setdefault(_PENDING, [])
    for row in session.new:
        if isinstance(row, Lifecycle):
            pending.append(_line(session, row, "submitted", None))
    for row in session.dirty:
        if isinstance(row, Lifecycle):
            history = inspect(row).attrs.state.history
            if history.added and history.deleted:
                pending.append(_line(session, row, None, history.deleted[0]))
    for row in session.deleted:
        if isinstance(row, Lifecycle):
            pending.append(_line(session, row, "deleted", None))


def _write(session: Session) -> None:
    for message, fields in session.info.pop(_PENDING, ()):
        log.info(message, extra=fields)


def _drop(session: Session, transaction) -> None:
    if transaction.parent is None:  # the outermost transaction ended: rolled back, or closed
        session.info.pop(_PENDING, None)


def _line(session: Session, row: Lifecycle, name: Optional[str],
          previous: Optional[str]) -> tuple[str, dict[str, Any]]:
    kind, states = _KINDS[type(row)]
    final = row.state in states.__members__.values() and states(row.state).is_final()
    fields: dict[str, Any] = {
        "event": name or ("ended" if final else _EVENTS.get(row.state, row.state.lower())),
        "kind": kind, "uuid": row.uuid, "state": row.state, "previous_state": previous}
    if kind == "task" and fields["event"] == "ended":
        fields.update(_task_end(session, row))
    text = " ".join(f"{key}={_shown(value)}" for key, value in fields.items()
                    if key not in ("event", "kind", "uuid") and value is not None)
    return f"{kind} {row.uuid} {fields['event']} {text}", fields


def _shown(value: Any) -> str:
    """A value as logfmt shows it: bare when it is one word, else quoted (JSON)."""
    text = str(value)
    return text if isinstance(value, (int, str)) and text and not any(
        c in text for c in ' "=\n') else json.dumps(value)


def _task_end(session: Session, task: Task) -> dict[str, Any]:
    """The instances by state, and the exit code and failure class of the end: those of the
    first failed instance, if one failed (one indexed query, once per task)."""
    end: dict[str, Any] = {"instances": dict(task.instance_counts or {}), "exit_code": None,
                           "failure": None, "error": None}
    if task.state == TaskState.SUCCESS.value:
        end["exit_code"] = 0
    elif task.state == TaskState.CANCELLED.value:
        end["failure"] = failure_class(I.CANCELLED, None)
    else:
        first = session.connection().execute(
            select(Instance.exit_code, Instance.error)
            .where(Instance.task_id == task.id, Instance.state == I.FAILED.value)
            .order_by(Instance.ended_at, Instance.id).limit(1)).first()
        if first is not None:
            end["exit_code"], error = first
            end["failure"] = failure_class(I.FAILED, first.exit_code)
            end["error"] = error[:_ERROR_CHARS] if error else None
    return end
