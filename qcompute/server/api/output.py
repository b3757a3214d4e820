"""The stdout / stderr routes of tasks and pools, declared once.

``GET`` answers the stream so far; ``POST`` only what came since the last ``POST`` (a read cursor
kept in SQL per object, instance and stream). Without an instance id: the whole object's stream.
"""
from __future__ import annotations

from typing import Annotated, Callable

from fastapi import APIRouter, Path, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy.orm import Session

from ..db.models import User
from ..schemas.common import MAX_INSTANCE_ID
from ..services.output import STREAMS, TASK_LEVEL
from .deps import AppContext, ContextDep, CurrentUser, RawBody, SessionDep
from .idempotency import run_once

__all__ = ["add_output_routes"]

# (session, user, uuid, instance id) → the object's row id; raises NotFound for a bad one
Find = Callable[[Session, User, str, int], int]
InstanceId = Annotated[int, Path(ge=0, le=MAX_INSTANCE_ID)]  # an instance's, or a slot's


def add_output_routes(router: APIRouter, kind: str, part: str, find: Find, cursor: type,
                      owner_key: str) -> None:
    """Declare the eight output routes of ``/{kind}s/{uuid}``. ``part`` names what an instance
    id designates (``instance``, ``slot``); ``cursor`` is the cursor table, keyed by
    ``owner_key`` (the object's row id), the instance id and the stream."""

    def read(session: Session, ctx: AppContext, user: User, uuid: str, stream: str,
             instance_id: int, fresh: bool) -> str:
        owner_id = find(session, user, uuid, instance_id)
        if not fresh:
            return ctx.outputs.read(uuid, instance_id, stream)[0]
        row = session.get(cursor, (owner_id, instance_id, stream))
        if row is None:
            row = cursor(**{owner_key: owner_id}, instance_id=instance_id, stream=stream,
                         offset=0)
            session.add(row)
        text, row.offset = ctx.outputs.read(uuid, instance_id, stream, since=row.offset)
        return text

    for stream in STREAMS:
        _stream_routes(router, f"/{kind}s/{{uuid}}/{stream}", kind, part, stream, read)


def _stream_routes(router: APIRouter, path: str, kind: str, part: str, stream: str,
                   read: Callable[..., str]) -> None:
    @router.get(path, response_class=PlainTextResponse, summary=f"The {kind}'s {stream} so far")
    def whole(uuid: str, session: SessionDep, user: CurrentUser, ctx: ContextDep):
        return read(session, ctx, user, uuid, stream, TASK_LEVEL, fresh=False)

    @router.post(path, response_class=PlainTextResponse,
                 summary=f"The {kind}'s {stream} since the last fresh read")
    def fresh(uuid: str, request: Request, body: RawBody, session: SessionDep,
              user: CurrentUser, ctx: ContextDep):
        return run_once(request, session, user, body, lambda: (
            200, read(session, ctx, user, uuid, stream, TASK_LEVEL, fresh=True)))

    @router.get(path + "/{instance_id}", response_class=PlainTextResponse,
                summary=f"One {part}'s {stream} so far")
    def one(uuid: str, instance_id: InstanceId, session: SessionDep, user: CurrentUser,
            ctx: ContextDep):
        return read(session, ctx, user, uuid, stream, instance_id, fresh=False)

    @router.post(path + "/{instance_id}", response_class=PlainTextResponse,
                 summary=f"One {part}'s {stream} since the last fresh read")
    def one_fresh(uuid: str, instance_id: InstanceId, request: Request, body: RawBody,
                  session: SessionDep, user: CurrentUser, ctx: ContextDep):
        return run_once(request, session, user, body, lambda: (
            200, read(session, ctx, user, uuid, stream, instance_id, fresh=True)))
