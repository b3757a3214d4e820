"""FastAPI dependencies as Annotated aliases: the app context, a DB session, the current user."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Iterator, Optional

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session, sessionmaker

from ..db.models import User
from ..errors import Forbidden
from ..scheduler import Scheduler
from ..services.output import OutputStore
from ..services.users import authenticate
from ..settings import ServerSettings


@dataclass
class AppContext:
    settings: ServerSettings
    sessions: sessionmaker[Session]
    scheduler: Scheduler
    outputs: OutputStore
    storage: Any  # qcompute.server.storage.StorageBackend


def get_context(request: Request) -> AppContext:
    return request.app.state.ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with ctx.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def current_user(session: SessionDep,
                 authorization: Annotated[Optional[str], Header()] = None) -> User:
    return authenticate(session, authorization)


CurrentUser = Annotated[User, Depends(current_user)]


def owner_user(user: CurrentUser) -> User:
    if not user.is_owner:
        raise Forbidden("only the cluster owner can manage users", code="owner_only")
    return user


OwnerUser = Annotated[User, Depends(owner_user)]


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]
