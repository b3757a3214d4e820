"""Console pool pages: the list (state, slots, tags) and a pool's page (state, slots, elastic
settings, its tasks), with close and delete. The cluster owner may look at another user's
pools (``?owner=``), not change them (auth.acting_user)."""
from __future__ import annotations

from typing import Optional

from fastapi import Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from ..api import pools as api
from ..api.deps import ContextDep, SessionDep
from ..db.models import PoolSlot, Task, utcnow
from ..errors import validate
from ..schemas import PageRequest
from ..services import listing
from ..services import pools as service
from ..services.wire_pools import pool_to_json
from ..services.users import list_users
from .auth import ConsoleUser, acting_user, owner_query, scoped_user
from .pages import PREFIX, console_router, render

router = console_router()

PAGE_SIZE = 25
POOL_TASKS = 50  # the newest tasks shown on a pool's page


@router.get("/pools")
def pool_list(request: Request, session: SessionDep, user: ConsoleUser,
              owner: Optional[str] = None, token: Optional[str] = None):
    whose = scoped_user(session, user, owner)
    page = validate(PageRequest, {"token": token or None, "maximumResults": PAGE_SIZE},
                    code="invalid_page_request")
    pools, next_token = listing.page_pools(session, whose, page, newest_first=True)
    now = utcnow()
    rows = [{"pool": p, "doc": pool_to_json(session, p, now)} for p in pools]
    return render(request, "pools/list.html", {
        "user": user, "section": "pools", "rows": rows, "next_token": next_token,
        "first_page": not token, "whose": whose, "owner_q": owner_query(user, whose),
        "owners": list_users(session) if user.is_owner else []})


@router.get("/pools/{uuid}")
def pool_page(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
              owner: Optional[str] = None):
    whose = scoped_user(session, user, owner)
    pool = service.get_pool(session, whose, uuid)
    slots = session.scalars(select(PoolSlot).where(PoolSlot.pool_id == pool.id)
                            .order_by(PoolSlot.slot))
    tasks = session.scalars(select(Task).where(Task.pool_id == pool.id)
                            .order_by(Task.id.desc()).limit(POOL_TASKS))
    return render(request, "pools/page.html", {
        "user": user, "section": "pools", "pool": pool, "slots": list(slots),
        "tasks": list(tasks), "doc": pool_to_json(session, pool, utcnow()),
        "elastic": service.elastic_of(pool), "whose": whose, "mine": whose.id == user.id,
        "owner_q": owner_query(user, whose)})


@router.post("/pools/{uuid}/close")
def close(uuid: str, request: Request, session: SessionDep, user: ConsoleUser,
          ctx: ContextDep, owner: Optional[str] = None):
    api.close_pool(uuid, request, b"", session, acting_user(user, owner), ctx)
    return RedirectResponse(f"{PREFIX}/pools/{uuid}", status_code=303)


@router.post("/pools/{uuid}/delete")
def delete(uuid: str, session: SessionDep, user: ConsoleUser, ctx: ContextDep,
           owner: Optional[str] = None):
    api.delete_pool(uuid, session, acting_user(user, owner), ctx)
    return RedirectResponse(f"{PREFIX}/pools", status_code=303)
