"""Console task pages: the list (state, progress, tags; owner, state and tag filters; pages),
and a task's page (its instances with their telemetry and errors, its live output by
server-sent events; abort, delete, rerun-failed). The cluster owner may look at another user's
tasks (``?owner=``) but, as in the API, act only on its own (auth.acting_user)."""
from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Annotated, Any, AsyncIterator, Optional
from urllib.parse import urlencode

from fastapi import Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I
from qcompute.states import TaskState

from ..api.deps import AppContext, ContextDep, SessionDep
from ..api.tasks import delete_and_stop, submit_one
from ..db.models import Task, TaskTag, User, utcnow
from ..errors import DomainError, validate
from ..schemas import PageRequest
from ..services import listing
from ..services import tasks as service
from ..services.output import STREAMS, TASK_LEVEL
from ..services.users import list_users
from ..services.wire import task_to_json
from .auth import (ConsoleUser, SignInRequired, acting_user, owner_query, scoped_user,
                   signed_in_user)
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
        "states": [s.value for s in TaskState if s not in _HIDDEN_STATES],
        "state": state or "", "tag": tag or "",
        "first_page": not token, "query": [(k, v) for k, v in (
            ("owner", owner if whose.id != user.id else None), ("state", state), ("tag", tag))
            if v],
    })


# -- one task ---------------------------------------------------------------------------------

def _status(ctx: AppContext, session: Session, user: User, whose: User,
            uuid: str) -> dict[str, Any]:
    """What the status part of a task page shows: the API's document of the task (state,
    errors, telemetry of running instances), and a row per instance."""
    task = service.get_task(session, whose, uuid)
    instances = service.task_instances(session, task)
    doc = task_to_json(task, instances, utcnow(), None, ctx.scheduler.telemetry.get,
                       ctx.settings.node_kinds[0].cpu_model)
    running = {i["instanceId"]: i for i in doc["status"]["runningInstancesInfo"][
        "perRunningInstanceInfo"]}
    rows = [{"instance": i, "live": running.get(i.instance_id)} for i in instances]
    return {"task": task, "doc": doc, "rows": rows, "done": done_count(task),
            "final": TaskState(task.state).is_final(), "owner_q": owner_query(user, whose),
            "mine": whose.id == user.id, "whose": whose,
            "failed": bool(doc["status"]["failedRange"])}


@router.get("/tasks/{uuid}")
def task_page(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
              ctx: ContextDep, owner: Optional[str] = None):
    whose = scoped_user(session, user, owner)
    status = _status(ctx, session, user, whose, uuid)
    query = {"known": status["task"].state, **({"owner": whose.email} if whose.id != user.id
                                               else {})}
    return render(request, "tasks/page.html", {
        "user": user, "section": "tasks", "whose": whose, **status,
        "events_url": f"/console/tasks/{uuid}/events?{urlencode(query)}"})


@router.get("/tasks/{uuid}/status")
def task_status(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
                ctx: ContextDep, owner: Optional[str] = None):
    """The status part of the page alone: htmx reloads it when the task changes."""
    whose = scoped_user(session, user, owner)
    return render(request, "tasks/status.html", _status(ctx, session, user, whose, uuid))


@router.post("/tasks/{uuid}/abort")
def abort_task(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
               ctx: ContextDep, owner: Optional[str] = None):
    mine = acting_user(user, owner)
    task = service.request_abort(session, mine, uuid)
    session.commit()
    ctx.scheduler.abort(task.id)
    return render(request, "tasks/status.html", _status(ctx, session, user, mine, uuid))


@router.delete("/tasks/{uuid}")
def delete_task(uuid: str, session: SessionDep, user: ConsoleUser, ctx: ContextDep,
                owner: Optional[str] = None) -> Response:
    delete_and_stop(session, ctx, acting_user(user, owner), uuid)
    return Response(status_code=204, headers={"HX-Redirect": "/console/tasks"})


@router.post("/tasks/{uuid}/rerun-failed")
def rerun_failed(uuid: str, session: SessionDep, user: ConsoleUser, ctx: ContextDep,
                 owner: Optional[str] = None) -> Response:
    """A new task runs the failed instances again (the SDK's ``Task.rerun_failed``)."""
    mine = acting_user(user, owner)
    rerun = submit_one(session, ctx, mine, service.rerun_document(session, mine, uuid))
    session.commit()
    ctx.scheduler.wake()
    return Response(status_code=204, headers={"HX-Redirect": f"/console/tasks/{rerun.uuid}"})


# -- live output --------------------------------------------------------------------------------

TICK_SECONDS = 5.0  # without news, the page's status (telemetry) is refreshed this often
RECONNECT_MS = 500  # how soon the browser reconnects to a stream that ended early


def _event(name: str, data: Any, event_id: Optional[str] = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data)}\n\n"


def _offsets(last_event_id: Optional[str]) -> dict[str, int]:
    """Where a reconnecting EventSource left off: its last event id is ``<stdout>-<stderr>``."""
    try:
        out, err = (int(part) for part in (last_event_id or "").split("-"))
        return {"stdout": max(out, 0), "stderr": max(err, 0)}
    except ValueError:
        return {"stdout": 0, "stderr": 0}


def _read(ctx: AppContext, request: Request, owner: Optional[str], uuid: str,
          offsets: dict[str, int]) -> tuple[str, dict[str, str]]:
    """The task's state (checked in a short session of its own: a stream holds no
    connection), then its output past ``offsets`` (moved on): read after the state, so a
    final state means all the output."""
    with ctx.sessions() as session:
        user = signed_in_user(request, session)
        state = service.get_task(session, scoped_user(session, user, owner), uuid).state
    texts = {}
    for stream in STREAMS:
        texts[stream], offsets[stream] = ctx.outputs.read(uuid, TASK_LEVEL, stream,
                                                          since=offsets[stream])
    return state, texts


@router.get("/tasks/{uuid}/events")
async def task_events(uuid: str, request: Request, ctx: ContextDep,
                      owner: Optional[str] = None, known: Optional[str] = None,
                      last_event_id: Annotated[Optional[str], Header()] = None):
    """Server-sent events of the task's output as it arrives (``stdout``/``stderr``: the new
    text), its state changes (``state``), a ``tick`` every few quiet seconds while it runs,
    and ``end`` once it is final and all its output sent (or it is gone). Woken by the same
    changes as the API's ``?offset&wait`` long poll. Like a long poll, one stream lasts at
    most ``long_poll_max_seconds`` (so the server can stop): the browser then reconnects,
    and resumes from the offsets in its last event id."""
    offsets = _offsets(last_event_id)
    read = partial(_read, ctx, request, owner, uuid, offsets)
    state, texts = await run_in_threadpool(read)  # a bad request fails here, as a page would

    async def events() -> AsyncIterator[str]:
        nonlocal state, texts
        shown, sent = known, dict(offsets)  # what the browser has
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ctx.settings.long_poll_max_seconds
        yield f"retry: {RECONNECT_MS}\n\n"
        while True:
            for stream in STREAMS:
                if texts[stream]:
                    sent[stream] = offsets[stream]
                    yield _event(stream, texts[stream], f"{sent['stdout']}-{sent['stderr']}")
            if state != shown:
                yield _event("state", state)
                shown = state
            if TaskState(state).is_final():
                yield _event("end", state)
                return
            if loop.time() >= deadline:
                return
            with ctx.outputs.changes.watching([uuid]) as wrote, \
                    ctx.scheduler.changes.watching([uuid]) as changed:
                try:
                    state, texts = await run_in_threadpool(read)  # nothing slips in between
                    if not (any(texts.values()) or state != shown or
                            TaskState(state).is_final()):
                        done, _ = await asyncio.wait(
                            {wrote, changed}, timeout=min(TICK_SECONDS, deadline - loop.time()),
                            return_when=asyncio.FIRST_COMPLETED)
                        if not done:
                            yield _event("tick", state)
                        state, texts = await run_in_threadpool(read)
                except (DomainError, SignInRequired):  # deleted, or signed out meanwhile
                    yield _event("end", "gone")
                    return

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
