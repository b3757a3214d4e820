"""FastAPI dependencies as Annotated aliases: the app context, a DB session, the current user."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Optional

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import User
from ..errors import Forbidden
from ..scheduler import Scheduler
from ..services.output import OutputStore
from ..services.users import authenticate, bare_token, remember_token
from ..settings import ServerSettings


@dataclass
class AppContext:
    settings: ServerSettings
    sessions: sessionmaker[Session]
    scheduler: Scheduler
    outputs: OutputStore
    storage: Any  # qcompute.server.storage.StorageBackend
    instance_id: str = ""  # made once per data dir (bootstrap.ensure_instance_id)


# Dependencies that do no I/O are ``async``: FastAPI runs a sync one in the thread pool, and each
# hop there costs a thread switch under the GIL (see bench/profile.md).
async def get_context(request: Request) -> AppContext:
    return request.app.state.ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_session(ctx: ContextDep) -> AsyncIterator[Session]:
    """A session opens no connection until its first statement (in the route's thread); the
    close at the end only hands the connection back to the pool."""
    with ctx.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def signed_in(session: Session, authorization: Optional[str]) -> User:
    """The user of the token; an account that predates sealed tokens gets its token sealed
    now, committed at once (the first thing the request's session does)."""
    user = authenticate(session, authorization)
    if user.sealed_token is None and remember_token(session, user, bare_token(authorization)):
        session.commit()
    return user


def current_user(session: SessionDep,
                 authorization: Annotated[Optional[str], Header()] = None) -> User:
    return signed_in(session, authorization)


CurrentUser = Annotated[User, Depends(current_user)]


def owner_user(user: CurrentUser) -> User:
    if not user.is_owner:
        raise Forbidden("only the cluster owner can manage users", code="owner_only")
    return user


OwnerUser = Annotated[User, Depends(owner_user)]


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]
