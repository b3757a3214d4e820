"""Console pages for the cluster owner only: users, and nodes (the executor's live nodes, or
this host's node kinds, with cores, memory, labels and free slots; each part's health).
Anyone else gets a 403 page, and base.html hides their links.

The users page does what the owner's ``qcompute user add | rotate | remove`` do, through the
same routes (api/admin.py): add a user, rotate a token, remove a user (``force``: also cancel
their unfinished tasks). A new token is shown once, in the answer to the form.
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Optional

from fastapi import Depends, Form, Request
from sqlalchemy import func, select

from ..api import admin as api
from ..api.catalogue import _nodes
from ..api.deps import ContextDep, SessionDep
from ..db.models import Task, User
from ..errors import DomainError, Forbidden
from ..services.health import OK, check_parts
from ..services.users import list_users
from .auth import ConsoleUser, new_session, set_session
from .pages import console_router, render

router = console_router()


def console_owner(user: ConsoleUser) -> User:
    if not user.is_owner:
        raise Forbidden("only the cluster owner can see this page", code="owner_only")
    return user


ConsoleOwner = Annotated[User, Depends(console_owner)]


def _users_page(request: Request, session, user: User, ctx, status: int = 200,
                **shown: Any):
    """The users page, with what an action left to show: ``issued`` (a new token),
    ``removed``, ``error`` (and the ``email`` typed, ``refused`` the user a removal needs
    ``force`` for)."""
    found = list_users(session)
    tasks = dict(session.execute(select(Task.owner_id, func.count()).group_by(Task.owner_id)
                                 .where(Task.owner_id.in_([u.id for u in found]))).all())
    return render(request, "admin/users.html", {
        "user": user, "section": "users", "sandboxed": ctx.scheduler.executor.sandboxed,
        "rows": [{"user": u, "tasks": tasks.get(u.id, 0)} for u in found], **shown},
        status_code=status)


@router.get("/users")
def users(request: Request, session: SessionDep, user: ConsoleOwner, ctx: ContextDep):
    return _users_page(request, session, user, ctx)


@router.post("/users")
def add_user(request: Request, session: SessionDep, user: ConsoleOwner, ctx: ContextDep,
             email: Annotated[str, Form()] = "",
             allow_unsandboxed: Annotated[Optional[str], Form()] = None):
    body = {"email": email.strip(), **({"allowUnsandboxed": True} if allow_unsandboxed else {})}
    try:
        issued = api.add_user(json.dumps(body).encode(), session, user, ctx)
    except DomainError as exc:
        return _users_page(request, session, user, ctx, exc.status_code, error=exc.message,
                           email=email)
    return _users_page(request, session, user, ctx, 201, issued={**issued, "new": True})


@router.post("/users/{email}/rotate")
def rotate(email: str, request: Request, session: SessionDep, user: ConsoleOwner,
           ctx: ContextDep):
    try:
        issued = api.rotate_token(email, session, user, ctx)
    except DomainError as exc:
        return _users_page(request, session, user, ctx, exc.status_code, error=exc.message)
    response = _users_page(request, session, user, ctx, issued=issued)
    if email == user.email:  # the owner's own token: keep this session signed in
        set_session(request, response, new_session(issued["token"]))
    return response


@router.post("/users/{email}/remove")
def remove(email: str, request: Request, session: SessionDep, user: ConsoleOwner,
           ctx: ContextDep, force: Annotated[Optional[str], Form()] = None):
    try:
        removed = api.remove_user(email, session, user, ctx, force=bool(force))
    except DomainError as exc:
        return _users_page(request, session, user, ctx, exc.status_code, error=exc.message,
                           refused=email if exc.code == "user_has_active_tasks" else None)
    return _users_page(request, session, user, ctx, removed=removed)


@router.get("/nodes")
def nodes(request: Request, user: ConsoleOwner, ctx: ContextDep):
    executor = ctx.scheduler.executor
    parts = check_parts(sessions=ctx.sessions, storage=ctx.storage, scheduler=ctx.scheduler)
    nodes = _nodes(ctx)
    return render(request, "admin/nodes.html", {
        "user": user, "section": "nodes", "nodes": nodes, "parts": parts, "ok": OK,
        "held": sum(n.get("heldSlots", 0) for n in nodes),
        "executor": ctx.settings.executor, "isolation": executor.isolation,
        "capacity": executor.capacity, "running": len(executor.running()),
        "storage": ctx.storage.describe()})
