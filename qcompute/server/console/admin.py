"""Console pages for the cluster owner only: users, and nodes (the executor's live nodes, or
this host's node kinds, with cores, memory, labels and free slots; each part's health).
Anyone else gets a 403 page, and base.html hides their links."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import func, select

from ..api.catalogue import _nodes
from ..api.deps import ContextDep, SessionDep
from ..db.models import Task, User
from ..errors import Forbidden
from ..services.health import OK, check_parts
from ..services.users import list_users
from .auth import ConsoleUser
from .pages import console_router, render

router = console_router()


def console_owner(user: ConsoleUser) -> User:
    if not user.is_owner:
        raise Forbidden("only the cluster owner can see this page", code="owner_only")
    return user


ConsoleOwner = Annotated[User, Depends(console_owner)]


@router.get("/users")
def users(request: Request, session: SessionDep, user: ConsoleOwner):
    found = list_users(session)
    tasks = dict(session.execute(select(Task.owner_id, func.count()).group_by(Task.owner_id)
                                 .where(Task.owner_id.in_([u.id for u in found]))).all())
    return render(request, "admin/users.html", {
        "user": user, "section": "users",
        "rows": [{"user": u, "tasks": tasks.get(u.id, 0)} for u in found]})


@router.get("/nodes")
def nodes(request: Request, user: ConsoleOwner, ctx: ContextDep):
    executor = ctx.scheduler.executor
    parts = check_parts(sessions=ctx.sessions, storage=ctx.storage, scheduler=ctx.scheduler)
    return render(request, "admin/nodes.html", {
        "user": user, "section": "nodes", "nodes": _nodes(ctx), "parts": parts, "ok": OK,
        "executor": ctx.settings.executor, "isolation": executor.isolation,
        "capacity": executor.capacity, "running": len(executor.running()),
        "storage": ctx.storage.describe()})
