"""Job routes. ``POST /jobs/`` keeps the trailing slash the official SDK sends."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ..db.models import Job, Pool, utcnow
from ..errors import BadRequest, validate
from ..schemas import PageRequest
from ..schemas.pools import JobSubmit
from ..services import jobs as service
from ..services import listing
from ..services.wire_pools import job_to_json
from . import openapi
from .deps import ContextDep, CurrentUser, RawBody, SessionDep
from .idempotency import loads, run_once
from .tasks import _fulls as task_jsons
from .rendering import JSONRoute

router = APIRouter(tags=["jobs"], route_class=JSONRoute)


def _full(session, job: Job) -> dict[str, Any]:
    pool = session.get(Pool, job.pool_id) if job.pool_id is not None else None
    return job_to_json(job, utcnow(), pool.uuid if pool else job.document.get("poolUuid"))


def submit_job(request: Request, body: RawBody, session: SessionDep, user: CurrentUser):
    payload = loads(body)
    if not isinstance(payload, dict):
        raise BadRequest("a job must be a JSON object")

    def work() -> tuple[int, Any]:
        job = service.submit_job(session, user, validate(JobSubmit, payload, code="invalid_job"))
        return 201, {"uuid": job.uuid}

    return run_once(request, session, user, body, work)


for _path in ("/jobs/", "/jobs"):
    router.add_api_route(_path, submit_job, methods=["POST"], status_code=201,
                         summary="Create a job", include_in_schema=_path == "/jobs",
                         openapi_extra=openapi.body(JobSubmit, example={"name": "pipeline"}))


@router.get("/jobs", summary="All jobs (older clients), every one; ?tag= filters")
def list_jobs(session: SessionDep, user: CurrentUser,
              tag: Annotated[list[str] | None, Query()] = None):
    return [_full(session, j) for jobs in listing.every(
        listing.page_jobs, session, user, listing.tag_filter(tag)) for j in jobs]


@router.post("/jobs/paginate", summary="A page of jobs, with filters",
             openapi_extra=openapi.body(PageRequest))
def paginate(body: RawBody, session: SessionDep, user: CurrentUser):
    """A read: a repeat reads again (its Idempotency-Key is not recorded)."""
    page = validate(PageRequest, loads(body) or {}, code="invalid_page_request")
    jobs, next_token = listing.page_jobs(session, user, page)
    return {"data": [_full(session, j) for j in jobs], "token": page.token,
            "nextToken": next_token, "isTruncated": next_token is not None}


@router.get("/jobs/{uuid}", summary="One job")
def get_job(uuid: str, session: SessionDep, user: CurrentUser):
    return _full(session, service.get_job(session, user, uuid))


@router.get("/jobs/{uuid}/tasks", summary="The job's tasks")
def job_tasks(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep):
    job = service.get_job(session, user, uuid)
    return task_jsons(ctx, session, service.job_tasks(session, job))


@router.post("/jobs/{uuid}/terminate", summary="Cancel the job's unfinished tasks and end it")
def terminate(uuid: str, request: Request, body: RawBody, session: SessionDep,
              user: CurrentUser, ctx: ContextDep):
    aborted: list[int] = []

    def work() -> tuple[int, Any]:
        job = service.get_job(session, user, uuid)
        aborted.extend(service.terminate_job(session, user, job))
        return 200, {"uuid": uuid, "state": job.state}

    response = run_once(request, session, user, body, work)
    for task_id in aborted:
        ctx.scheduler.abort(task_id)
    return response


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise BadRequest(f"force must be true or false, not {value!r}", code="invalid_request")
    return value.lower() in ("true", "1")


@router.delete("/jobs/{uuid}", summary="Delete a job and its tasks (force: stop them first)")
def delete_job(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep,
               force: Annotated[str, Query()] = "false"):
    tasks = service.delete_job(session, user, uuid, _flag(force))
    session.commit()
    ctx.scheduler.forget_tasks([t.uuid for t in tasks])
    for task in tasks:
        ctx.scheduler.discard_files(task.uuid)
    return {"uuid": uuid, "message": "deleted"}
