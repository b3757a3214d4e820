"""Task routes: thin wrappers that validate, call one service, and answer in the dialect."""
from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from qcompute.states import InstanceState as I
from qcompute.states import TaskState

from ..db.models import OutputCursor, Task, utcnow
from ..errors import BadRequest, DomainError, NotFound, StorageUnavailable, validate
from ..executors.base import InstanceKey
from ..schemas import PageRequest, TaskSubmit, TaskUpdate, WaitRequest
from ..services import snapshots
from ..services import tasks as service
from ..services import timeline
from ..services.explain import explain_task
from ..services.output import TASK_LEVEL
from ..services.listing import every, tag_filter
from ..services.placement import dependencies_json, dependencies_of, dependents_of
from ..services.wire import task_summary_to_json, task_to_json
from . import openapi
from .deps import AppContext, ContextDep, CurrentUser, RawBody, SessionDep, signed_in
from .idempotency import loads, run_once
from .output import add_output_routes
from .rendering import JSONRoute

router = APIRouter(tags=["tasks"], route_class=JSONRoute)


def _parse_submit(item: Any) -> TaskSubmit:
    if not isinstance(item, dict):
        raise BadRequest("a task must be a JSON object")
    return validate(TaskSubmit, item, code="invalid_task")


def submit_one(session, ctx: AppContext, user, item: Any) -> Task:
    """Store one task; then the storage prepares its result bucket (see the storage backend)."""
    doc = _parse_submit(item)
    task = service.submit_task(session, ctx.settings, user, doc)
    if doc.result_bucket:
        try:
            ctx.storage.prepare_result_bucket(doc.result_bucket)
        except Exception as exc:
            raise StorageUnavailable(f"cannot prepare result bucket {doc.result_bucket!r}: "
                                     f"{exc}") from None
    return task


@router.post("/tasks", status_code=201, summary="Submit a task, or an array of tasks (bulk)",
             openapi_extra=openapi.body(TaskSubmit, or_array=True, example={
                 "name": "hello", "profile": "docker-batch",
                 "constants": [{"key": "DOCKER_CMD", "value": "echo hello"}]}))
def submit_tasks(request: Request, body: RawBody, session: SessionDep, user: CurrentUser,
                 ctx: ContextDep) -> Response:
    payload = loads(body)
    waiting: list[int] = []  # tasks with dependencies: the scheduler resolves them
    represent = _prefers_representation(request) and not isinstance(payload, list)

    def work() -> tuple[int, Any]:
        if not isinstance(payload, list):
            task = submit_one(session, ctx, user, payload)
            waiting.extend([task.id] if task.waiting_on else [])
            if represent:  # the whole document: the client needs no GET after its POST
                return 201, _full(ctx, session, task)
            return 201, {"uuid": task.uuid}
        results = []
        for item in payload:  # each item stands alone: one bad task does not sink the rest
            try:
                with session.begin_nested():
                    task = submit_one(session, ctx, user, item)
                waiting.extend([task.id] if task.waiting_on else [])
                results.append({"statusCode": 201, "uuid": task.uuid, "message": "created"})
            except DomainError as exc:
                results.append({"statusCode": exc.status_code, "uuid": None,
                                "message": exc.message})
        return 200, results

    response = run_once(request, session, user, body, work)
    if waiting:
        ctx.scheduler.submitted(waiting)
    ctx.scheduler.wake()
    if represent:
        response.headers["Preference-Applied"] = "return=representation"
    return response


def _prefers_representation(request: Request) -> bool:
    """RFC 7240 ``Prefer: return=representation``, which qcompute's SDK sends (the official
    SDK does not, and gets ``{"uuid"}`` as from Qarnot)."""
    return any(p.strip().lower() == "return=representation"
               for value in request.headers.getlist("prefer") for p in value.split(","))


# Lists are plain JSON already: JSONRoute renders them with orjson, never FastAPI's
# jsonable_encoder, which walks every value again (a page of 1,000 full documents).


def _full(ctx: AppContext, session, task: Task) -> dict[str, Any]:
    return _fulls(ctx, session, [task])[0]


def _fulls(ctx: AppContext, session, tasks: list[Task]) -> list[dict[str, Any]]:
    """Full documents of a page of tasks: their instances and parents in one query each."""
    ids = [t.id for t in tasks]
    instances, parents, now = service.instances_of(session, ids), dependencies_of(session, ids), utcnow()
    return [task_to_json(t, instances[t.id], now,
                         dependencies_json(session, t, parents.get(t.id, [])),
                         ctx.scheduler.telemetry.get, ctx.settings.node_kinds[0].cpu_model)
            for t in tasks]


def _summaries(session, tasks: list[Task]) -> list[dict[str, Any]]:
    now = utcnow()
    seconds = service.execution_seconds(session, [t.id for t in tasks])
    return [task_summary_to_json(t, t.instance_counts or {}, seconds.get(t.id, 0.0), now)
            for t in tasks]


@router.get("/tasks", summary="All tasks (older clients), every one; ?tag= filters")
def list_tasks(session: SessionDep, user: CurrentUser, ctx: ContextDep,
               tag: Annotated[list[str] | None, Query()] = None):
    return [doc for tasks in every(service.page_tasks, session, user, tag_filter(tag))
            for doc in _fulls(ctx, session, tasks)]


@router.get("/tasks/summaries", summary="Task summaries (older clients), every one; ?tag= "
            "filters")
def list_summaries(session: SessionDep, user: CurrentUser,
                   tag: Annotated[list[str] | None, Query()] = None):
    return [doc for tasks in every(service.page_tasks, session, user, tag_filter(tag))
            for doc in _summaries(session, tasks)]


def _page(body: bytes, session, user, ctx: AppContext, summary: bool) -> dict[str, Any]:
    """A read: a repeat reads again (its Idempotency-Key is not recorded)."""
    page = validate(PageRequest, loads(body) or {}, code="invalid_page_request")
    tasks, next_token = service.page_tasks(session, user, page)
    data = _summaries(session, tasks) if summary else _fulls(ctx, session, tasks)
    return {"data": data, "token": page.token, "nextToken": next_token,
            "isTruncated": next_token is not None}


@router.post("/tasks/paginate", summary="A page of tasks, with filters",
             openapi_extra=openapi.body(PageRequest))
def paginate(body: RawBody, session: SessionDep, user: CurrentUser,
             ctx: ContextDep):
    return _page(body, session, user, ctx, summary=False)


@router.post("/tasks/summaries/paginate", summary="A page of task summaries, with filters",
             openapi_extra=openapi.body(PageRequest))
def paginate_summaries(body: RawBody, session: SessionDep, user: CurrentUser,
                       ctx: ContextDep):
    return _page(body, session, user, ctx, summary=True)


def _load(ctx: AppContext, authorization: Optional[str], uuid: str) -> dict[str, Any]:
    """One task's document, in a session of its own (long polls hold no connection)."""
    with ctx.sessions() as session:
        user = signed_in(session, authorization)
        return _full(ctx, session, service.get_task(session, user, uuid))


@router.get("/tasks/{uuid}", summary="One task; with ?wait=S, hold until its state changes")
async def get_task(
    uuid: str, ctx: ContextDep, authorization: Annotated[Optional[str], Header()] = None,
    wait: Annotated[float, Query(ge=0, description="Seconds to hold the request until the "
                                 "state differs from knownState (or is final)")] = 0,
    known_state: Annotated[Optional[str], Query(alias="knownState")] = None,
    until: Annotated[Optional[Literal["final"]], Query(
        description="``final``: hold until the task is final, through its other changes")] = None,
):
    load = partial(_load, ctx, authorization, uuid)
    doc = await run_in_threadpool(load)
    known = known_state or doc["state"]
    # while held, each change reads the task's state only: the whole document (every
    # instance) is read again once, at the end
    state_of = partial(_states, ctx, authorization, [uuid])

    def held(state: str) -> bool:
        return not TaskState(state).is_final() and (until or state == known)

    deadline = asyncio.get_running_loop().time() + min(wait, ctx.settings.long_poll_max_seconds)
    state, waited = doc["state"], False
    while held(state):
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        waited = True
        with ctx.scheduler.changes.watching([uuid]) as changed:
            state = (await run_in_threadpool(state_of))[uuid]  # a change may have landed
            if not held(state):  # before we watched
                break
            try:
                await asyncio.wait_for(changed, remaining)
            except asyncio.TimeoutError:
                break
        state = (await run_in_threadpool(state_of))[uuid]
    return await run_in_threadpool(load) if waited else doc


def _states(ctx: AppContext, authorization: Optional[str], uuids: list[str]) -> dict[str, str]:
    with ctx.sessions() as session:
        user = signed_in(session, authorization)
        states = service.task_states(session, user, uuids)
    missing = [u for u in uuids if u not in states]
    if missing:
        raise NotFound(f"tasks not found: {', '.join(missing[:10])}", code="task_not_found")
    return states


@router.post("/tasks/wait", summary="Hold until all (or any) of the tasks are final",
             openapi_extra=openapi.body(WaitRequest))
async def wait_tasks(body: RawBody, ctx: ContextDep,
                     authorization: Annotated[Optional[str], Header()] = None):
    request = validate(WaitRequest, loads(body), code="invalid_wait_request")
    uuids = list(dict.fromkeys(request.uuids))
    load = partial(_states, ctx, authorization, uuids)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(request.timeout, ctx.settings.long_poll_max_seconds)

    def done(states: dict[str, str]) -> bool:
        final = [TaskState(s).is_final() for s in states.values()]
        return all(final) if request.return_when == "ALL" else any(final)

    states = await run_in_threadpool(load)
    while not done(states) and loop.time() < deadline:
        pending = [u for u, s in states.items() if not TaskState(s).is_final()]
        with ctx.scheduler.changes.watching(pending) as changed:
            states = await run_in_threadpool(load)
            if done(states):
                break
            try:
                await asyncio.wait_for(changed, deadline - loop.time())
            except asyncio.TimeoutError:
                break
        states = await run_in_threadpool(load)
    return {"done": done(states), "states": states}


@router.put("/tasks/{uuid}", summary="Update a task's mutable fields (name, tags, labels)",
            openapi_extra=openapi.body(TaskUpdate))
def update_task(uuid: str, body: RawBody, session: SessionDep, user: CurrentUser,
                ctx: ContextDep):
    payload = loads(body)
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a task document (a JSON object)")
    task = service.update_task(session, user, uuid, payload)
    session.commit()
    return _full(ctx, session, task)


@router.patch("/tasks/{uuid}", summary="Pull new resource files into running instances")
def update_resources(uuid: str, request: Request, body: RawBody, session: SessionDep,
                     user: CurrentUser, ctx: ContextDep):
    refreshed: list[int] = []

    def work() -> tuple[int, Any]:
        task = snapshots.update_resources(session, user, uuid)
        refreshed.append(task.id)
        return 200, {"uuid": uuid, "resourcesVersion": task.resources_version}

    response = run_once(request, session, user, body, work)
    if refreshed:
        ctx.scheduler.refresh_resources(refreshed[0])
    return response


@router.delete("/tasks/{uuid}", summary="Delete a task, stopping what still runs")
def delete_task(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep):
    delete_and_stop(session, ctx, user, uuid)
    return {"uuid": uuid, "message": "deleted"}


def delete_and_stop(session, ctx: AppContext, user, uuid: str) -> None:
    """Delete the task (committed), stop what still runs of it, and release its children
    (the API's DELETE and the console's)."""
    task = service.get_task(session, user, uuid)
    running = [InstanceKey(task.uuid, i.instance_id, i.attempt)
               for i in service.task_instances(session, task) if I(i.state).is_active()]
    children = [t.id for t in dependents_of(session, uuid)]  # they can no longer run
    service.delete_task(session, user, uuid)
    session.commit()
    ctx.scheduler.forget(running)
    if children:
        ctx.scheduler.submitted(children)
    ctx.scheduler.discard_files(uuid)


@router.post("/tasks/{uuid}/abort", summary="Cancel a task")
def abort_task(uuid: str, request: Request, body: RawBody, session: SessionDep,
               user: CurrentUser, ctx: ContextDep):
    holder: dict[str, int] = {}

    def work() -> tuple[int, Any]:
        task = service.request_abort(session, user, uuid)
        holder["id"] = task.id
        return 200, {"uuid": uuid, "state": task.state}

    response = run_once(request, session, user, body, work)
    if "id" in holder:
        ctx.scheduler.abort(holder["id"])
    return response


@router.get("/tasks/{uuid}/timeline",
            summary="When the task was accepted, and when each instance's current attempt "
                    "reached each step (qcompute; epoch seconds)")
def get_timeline(uuid: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    return timeline.task_timeline(session, user, uuid)


@router.get("/tasks/{uuid}/explain",
            summary="Why the task is not running (yet): its reasons, each with a code, a "
                    "message and its details (qcompute)")
def get_explanation(uuid: str, session: SessionDep, user: CurrentUser,
                    ctx: ContextDep) -> dict[str, Any]:
    return explain_task(session, user, uuid, ctx.scheduler)


def _find(session, user, uuid: str, instance_id: int) -> tuple[int, bool]:
    task = service.get_task(session, user, uuid)
    if instance_id != TASK_LEVEL:
        service.check_instance(session, task, instance_id)
    return task.id, TaskState(task.state).is_final()


add_output_routes(router, "task", "instance", _find, OutputCursor, "task_id")
