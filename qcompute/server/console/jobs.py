"""Console job pages: the list, and a job's page with its tasks and its dependency graph
(drawn on the server as SVG: graph.py), with terminate and delete. The cluster owner may look
at another user's jobs (``?owner=``), not change them (auth.acting_user)."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Form, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import func, select

from qcompute.states import JobState

from ..api import jobs as api
from ..api.deps import ContextDep, SessionDep
from ..db.models import Pool, Task
from ..errors import validate
from ..schemas import PageRequest
from ..services import jobs as service
from ..services import listing
from ..services.job_graph import job_graph
from ..services.users import list_users
from .auth import ConsoleUser, acting_user, owner_query, scoped_user
from .graph import render_graph
from .pages import PREFIX, console_router, render

router = console_router()

PAGE_SIZE = 25
JOB_TASKS = 300  # tasks listed on a job's page (the graph draws as many)


@router.get("/jobs")
def job_list(request: Request, session: SessionDep, user: ConsoleUser,
             owner: Optional[str] = None, token: Optional[str] = None):
    whose = scoped_user(session, user, owner)
    page = validate(PageRequest, {"token": token or None, "maximumResults": PAGE_SIZE},
                    code="invalid_page_request")
    jobs, next_token = listing.page_jobs(session, whose, page, newest_first=True)
    counts = dict(session.execute(
        select(Task.job_id, func.count()).where(Task.job_id.in_([j.id for j in jobs]))
        .group_by(Task.job_id)).all())
    pools = _pool_names(session, {j.pool_id for j in jobs if j.pool_id})
    rows = [{"job": j, "tasks": counts.get(j.id, 0), "pool": pools.get(j.pool_id)}
            for j in jobs]
    return render(request, "jobs/list.html", {
        "user": user, "section": "jobs", "rows": rows, "next_token": next_token,
        "first_page": not token, "whose": whose, "owner_q": owner_query(user, whose),
        "owners": list_users(session) if user.is_owner else []})


def _pool_names(session, ids: set[int]) -> dict[int, Pool]:
    if not ids:
        return {}
    return {p.id: p for p in session.scalars(select(Pool).where(Pool.id.in_(ids)))}


@router.get("/jobs/{uuid}")
def job_page(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
             owner: Optional[str] = None):
    whose = scoped_user(session, user, owner)
    owner_q = owner_query(user, whose)
    job = service.get_job(session, whose, uuid)
    tasks = list(session.scalars(select(Task).where(Task.job_id == job.id)
                                 .order_by(Task.id).limit(JOB_TASKS)))
    graph = job_graph(session, job, limit=JOB_TASKS)
    return render(request, "jobs/page.html", {
        "user": user, "section": "jobs", "job": job, "tasks": tasks, "graph": graph,
        "svg": render_graph(graph, lambda task: f"{PREFIX}/tasks/{task}{owner_q}"),
        "pool": _pool_names(session, {job.pool_id} if job.pool_id else set()).get(job.pool_id),
        "active": job.state == JobState.ACTIVE.value,
        "unfinished": sum(1 for t in tasks if t.ended_at is None),
        "whose": whose, "mine": whose.id == user.id, "owner_q": owner_q})


@router.post("/jobs/{uuid}/terminate")
def terminate(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
              ctx: ContextDep, owner: Optional[str] = None):
    api.terminate(uuid, request, b"", session, acting_user(user, owner), ctx)
    return RedirectResponse(f"{PREFIX}/jobs/{uuid}", status_code=303)


@router.post("/jobs/{uuid}/delete")
def delete(uuid: str, session: SessionDep, user: ConsoleUser, ctx: ContextDep,
           force: Annotated[str, Form()] = "false", owner: Optional[str] = None):
    api.delete_job(uuid, session, acting_user(user, owner), ctx, force)
    return RedirectResponse(f"{PREFIX}/jobs", status_code=303)
