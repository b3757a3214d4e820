"""Console task pages: the list (state, progress, tags; owner and state filters; pages)."""
from __future__ import annotations

from typing import Any, Optional

from fastapi import Request
from sqlalchemy import select

from qcompute.states import InstanceState as I
from qcompute.states import TaskState

from ..api.deps import SessionDep
from ..db.models import Task, TaskTag
from ..errors import validate
from ..schemas import PageRequest
from ..services import listing
from ..services.users import list_users
from .auth import ConsoleUser, scoped_user
from .pages import console_router, render

router = console_router()

PAGE_SIZE = 25
_DONE = (I.SUCCEEDED.value, I.FAILED.value, I.CANCELLED.value)
_HIDDEN_STATES = (TaskState.UNSUBMITTED, TaskState.DOWNLOADING_RESULTS)  # never stored


def _filter(state: Optional[str], tag: Optional[str]) -> Optional[dict[str, Any]]:
    leaves = [{"operator": "Equal", "field": "State", "value": state}] if state else []
    leaves += [{"operator": "Equal", "field": "Tags", "value": tag}] if tag else []
    if len(leaves) > 1:
        return {"operator": "And", "filters": leaves}
    return leaves[0] if leaves else None


def _tags(session, tasks: list[Task]) -> dict[int, list[str]]:
    """The tags of a page of tasks, in one query."""
    found: dict[int, list[str]] = {t.id: [] for t in tasks}
    rows = session.execute(select(TaskTag.task_id, TaskTag.tag)
                           .where(TaskTag.task_id.in_(list(found)))
                           .order_by(TaskTag.task_id, TaskTag.position))
    for task_id, tag in rows:
        found[task_id].append(tag)
    return found


def done_count(task: Task) -> int:
    counts = task.instance_counts or {}
    return sum(counts.get(state, 0) for state in _DONE)


@router.get("/tasks")
def task_list(request: Request, session: SessionDep, user: ConsoleUser,
              owner: Optional[str] = None, state: Optional[str] = None,
              tag: Optional[str] = None, token: Optional[str] = None):
    """Newest first, a page at a time (``token``: the next page's, from the previous one)."""
    whose = scoped_user(session, user, owner)
    page = validate(PageRequest, {"filter": _filter(state, tag), "token": token or None,
                                  "maximumResults": PAGE_SIZE}, code="invalid_page_request")
    tasks, next_token = listing.page_tasks(session, whose, page, newest_first=True)
    tags = _tags(session, tasks)
    rows = [{"task": t, "tags": tags[t.id], "done": done_count(t)} for t in tasks]
    return render(request, "tasks/list.html", {
        "user": user, "section": "tasks", "rows": rows, "next_token": next_token,
        "whose": whose, "owners": list_users(session) if user.is_owner else [],
        "states": [s.value for s in TaskState if s not in _HIDDEN_STATES], "state": state or "", "tag": tag or "",
        "first_page": not token, "query": [(k, v) for k, v in (
            ("owner", owner if whose.id != user.id else None), ("state", state), ("tag", tag))
            if v],
    })
