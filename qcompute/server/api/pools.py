"""Pool routes: thin wrappers that validate, call one service, and answer in the dialect."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from qcompute.states import PoolState as P

from ..db.models import Pool, PoolOutputCursor, Task, utcnow
from ..errors import BadRequest, validate
from ..schemas import PageRequest
from ..schemas.pools import PoolSubmit, PoolUpdate
from ..services import listing
from ..services import pools as service
from ..services.wire_pools import pool_to_json
from . import openapi
from .deps import AppContext, ContextDep, CurrentUser, RawBody, SessionDep
from .idempotency import loads, run_once
from .output import add_output_routes
from .rendering import JSONRoute

router = APIRouter(tags=["pools"], route_class=JSONRoute)


def _full(ctx: AppContext, session, pool: Pool) -> dict[str, Any]:
    """The pool's document, with the live telemetry of what runs on its slots."""
    return pool_to_json(session, pool, utcnow(), ctx.scheduler.telemetry.get,
                        ctx.settings.node_kinds[0].cpu_model)


def _summary(ctx: AppContext, session, pool: Pool) -> dict[str, Any]:
    doc = _full(ctx, session, pool)
    keep = ("uuid", "name", "shortname", "profile", "state", "previousState",
            "stateTransitionTime", "previousStateTransitionTime", "lastModified",
            "creationDate", "endDate", "runningInstanceCount", "runningCoreCount",
            "executionTime", "wallTime", "instanceCount", "tags", "poolUsage",
            "totalSlotCapacity", "queuedOrRunningTaskInstancesCount")
    return {key: doc.get(key) for key in keep}


@router.post("/pools", status_code=201, summary="Create a pool",
             openapi_extra=openapi.body(PoolSubmit, example={
                 "name": "renders", "profile": "docker-batch", "instanceCount": 1}))
def submit_pool(request: Request, body: RawBody, session: SessionDep, user: CurrentUser,
                ctx: ContextDep):
    payload = loads(body)
    if not isinstance(payload, dict):
        raise BadRequest("a pool must be a JSON object")

    def work() -> tuple[int, Any]:
        doc = validate(PoolSubmit, payload, code="invalid_pool")
        pool = service.submit_pool(session, ctx.settings, user, doc,
                                   ctx.scheduler.executor.capacity)
        return 201, {"uuid": pool.uuid}

    response = run_once(request, session, user, body, work)
    ctx.scheduler.wake()
    return response


@router.get("/pools", summary="All pools (older clients), every one")
def list_pools(session: SessionDep, user: CurrentUser, ctx: ContextDep):
    return [_full(ctx, session, p) for pools in listing.every(
        listing.page_pools, session, user) for p in pools]


@router.get("/pools/summaries", summary="Pool summaries (older clients), every one")
def list_summaries(session: SessionDep, user: CurrentUser, ctx: ContextDep):
    return [_summary(ctx, session, p) for pools in listing.every(
        listing.page_pools, session, user) for p in pools]


def _page(body: bytes, session, user, ctx: AppContext, summary: bool):
    """A read: a repeat reads again (its Idempotency-Key is not recorded)."""
    page = validate(PageRequest, loads(body) or {}, code="invalid_page_request")
    pools, next_token = listing.page_pools(session, user, page)
    render = _summary if summary else _full
    return {"data": [render(ctx, session, p) for p in pools],
            "token": page.token, "nextToken": next_token,
            "isTruncated": next_token is not None}


@router.post("/pools/paginate", summary="A page of pools, with filters",
             openapi_extra=openapi.body(PageRequest))
def paginate(body: RawBody, session: SessionDep, user: CurrentUser,
             ctx: ContextDep):
    return _page(body, session, user, ctx, summary=False)


@router.post("/pools/summaries/paginate", summary="A page of pool summaries, with filters",
             openapi_extra=openapi.body(PageRequest))
def paginate_summaries(body: RawBody, session: SessionDep, user: CurrentUser,
                       ctx: ContextDep):
    return _page(body, session, user, ctx, summary=True)


@router.get("/pools/{uuid}", summary="One pool")
def get_pool(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep):
    return _full(ctx, session, service.get_pool(session, user, uuid))


@router.put("/pools/{uuid}", summary="Update a pool: name, tags, labels, elastic settings",
            openapi_extra=openapi.body(PoolUpdate))
def update_pool(uuid: str, body: RawBody, session: SessionDep, user: CurrentUser,
                ctx: ContextDep):
    payload = loads(body)
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a pool document (a JSON object)")
    pool = service.update_pool(session, user, uuid, payload, ctx.scheduler.executor.capacity)
    session.commit()
    ctx.scheduler.wake()
    return _full(ctx, session, pool)


@router.patch("/pools/{uuid}", summary="Push new resource files to the pool's running tasks")
def update_resources(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep):
    pool = service.get_pool(session, user, uuid)
    if pool.close_requested or P(pool.state).is_final():
        raise BadRequest(f"pool {uuid} is {pool.state}: it has no running tasks",
                         code="pool_not_open")
    pool.resources_version += 1
    running = list(session.scalars(select(Task.id).where(Task.pool_id == pool.id,
                                                         Task.ended_at.is_(None))))
    session.commit()
    for task_id in running:
        ctx.scheduler.refresh_resources(task_id)
    return {"uuid": uuid, "resourcesVersion": pool.resources_version}


@router.post("/pools/{uuid}/close", summary="Close a pool, cancelling its unfinished tasks")
def close_pool(uuid: str, request: Request, body: RawBody, session: SessionDep,
               user: CurrentUser, ctx: ContextDep):
    response = run_once(request, session, user, body, lambda: (
        200, {"uuid": uuid, "state": service.close_pool(session, user, uuid).state}))
    ctx.scheduler.wake()
    return response


@router.delete("/pools/{uuid}", summary="Delete a pool, cancelling its unfinished tasks")
def delete_pool(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep):
    _, aborted = service.request_delete_pool(session, user, uuid)
    session.commit()
    for task_id in aborted:
        ctx.scheduler.abort(task_id)
    ctx.scheduler.wake()
    ctx.scheduler.discard_files(uuid)
    return {"uuid": uuid, "message": "deleted"}


def _find(session, user, uuid: str, _slot: int) -> tuple[int, bool]:
    pool = service.get_pool(session, user, uuid)
    return pool.id, P(pool.state).is_final()


# the preparation task's output, for the whole pool or one slot
add_output_routes(router, "pool", "slot", _find, PoolOutputCursor, "pool_id")
