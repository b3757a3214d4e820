"""The stdout / stderr routes of tasks and pools, declared once.

``GET`` answers the stream so far; ``POST`` only what came since the last ``POST`` (a read cursor
kept in SQL per object, instance and stream). Without an instance id: the whole object's stream.

qcompute's own read for followers (``task.follow()``): ``GET ...?offset=N`` answers the bytes
from logical offset ``N``, and ``&wait=S`` holds the request until there are some, the object is
final, or ``S`` seconds passed (at most ``long_poll_max_seconds``). Every ``GET`` reply carries
``X-Output-Offset`` (the offset to read from next) and ``X-Output-Complete: true`` once the
object was final before the read (no more output will come). The ``POST`` cursors are untouched,
so any number of followers read side by side.
"""
from __future__ import annotations

import asyncio
from functools import partial
from typing import Annotated, Callable, Optional

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db.models import User
from ..errors import NotFound
from ..schemas.common import MAX_INSTANCE_ID
from ..services.output import STREAMS, TASK_LEVEL
from .deps import AppContext, ContextDep, CurrentUser, RawBody, SessionDep, signed_in
from .idempotency import run_once

__all__ = ["add_output_routes"]

# (session, user, uuid, instance id) → (the object's row id, whether it is final); raises
# NotFound for a bad one
Find = Callable[[Session, User, str, int], tuple[int, bool]]
InstanceId = Annotated[int, Path(ge=0, le=MAX_INSTANCE_ID)]  # an instance's, or a slot's
Offset = Annotated[Optional[int], Query(ge=0, description=(
    "qcompute: answer the bytes from this logical offset (see the X-Output-Offset header)"))]
Wait = Annotated[float, Query(ge=0, description=(
    "qcompute, with offset: seconds to hold the request until there is output past the offset "
    "or the object is final"))]
Authorization = Annotated[Optional[str], Header()]


def add_output_routes(router: APIRouter, kind: str, part: str, find: Find, cursor: type,
                      owner_key: str) -> None:
    """Declare the eight output routes of ``/{kind}s/{uuid}``. ``part`` names what an instance
    id designates (``instance``, ``slot``); ``cursor`` is the cursor table, keyed by
    ``owner_key`` (the object's row id), the instance id and the stream."""

    def fresh_read(session: Session, ctx: AppContext, user: User, uuid: str, stream: str,
                   instance_id: int) -> str:
        owner_id, _ = find(session, user, uuid, instance_id)
        row = session.get(cursor, (owner_id, instance_id, stream))
        if row is None:
            row = cursor(**{owner_key: owner_id}, instance_id=instance_id, stream=stream,
                         offset=0)
            try:
                with session.begin_nested():  # the scheduler may end a delete of it meanwhile
                    session.add(row)
            except IntegrityError:
                raise NotFound(f"{kind} {uuid} not found", code=f"{kind}_not_found") from None
        text, row.offset = ctx.outputs.read(uuid, instance_id, stream, since=row.offset)
        return text

    def read_since(ctx: AppContext, authorization: Optional[str], uuid: str, stream: str,
                   instance_id: int, offset: Optional[int]) -> tuple[str, int, bool]:
        """The text from ``offset``, the end offset, and whether the object was final before
        the read (so the text holds all its output). A session of its own: a held read keeps
        no connection."""
        with ctx.sessions() as session:
            _, final = find(session, signed_in(session, authorization), uuid, instance_id)
        text, end = ctx.outputs.read(uuid, instance_id, stream, since=offset)
        return text, end, final

    async def read(ctx: AppContext, authorization: Optional[str], uuid: str, stream: str,
                   instance_id: int, offset: Optional[int], wait: float) -> PlainTextResponse:
        load = partial(read_since, ctx, authorization, uuid, stream, instance_id, offset)
        text, end, final = await run_in_threadpool(load)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(wait, ctx.settings.long_poll_max_seconds)
        while offset is not None and not text and not final and loop.time() < deadline:
            with ctx.outputs.changes.watching([uuid]) as wrote, \
                    ctx.scheduler.changes.watching([uuid]) as changed:
                text, end, final = await run_in_threadpool(load)  # nothing slips in between
                if text or final:
                    break
                await asyncio.wait({wrote, changed}, timeout=deadline - loop.time(),
                                   return_when=asyncio.FIRST_COMPLETED)
            text, end, final = await run_in_threadpool(load)
        headers = {"X-Output-Offset": str(end)}
        if final:
            headers["X-Output-Complete"] = "true"
        return PlainTextResponse(text, headers=headers)

    for stream in STREAMS:
        _stream_routes(router, f"/{kind}s/{{uuid}}/{stream}", kind, part, stream, read,
                       fresh_read)


def _stream_routes(router: APIRouter, path: str, kind: str, part: str, stream: str,
                   read: Callable, fresh_read: Callable[..., str]) -> None:
    @router.get(path, response_class=PlainTextResponse, summary=f"The {kind}'s {stream} so far")
    async def whole(uuid: str, ctx: ContextDep, offset: Offset = None, wait: Wait = 0,
                    authorization: Authorization = None):
        return await read(ctx, authorization, uuid, stream, TASK_LEVEL, offset, wait)

    @router.post(path, response_class=PlainTextResponse,
                 summary=f"The {kind}'s {stream} since the last fresh read")
    def fresh(uuid: str, request: Request, body: RawBody, session: SessionDep,
              user: CurrentUser, ctx: ContextDep):
        return run_once(request, session, user, body, lambda: (
            200, fresh_read(session, ctx, user, uuid, stream, TASK_LEVEL)))

    @router.get(path + "/{instance_id}", response_class=PlainTextResponse,
                summary=f"One {part}'s {stream} so far")
    async def one(uuid: str, instance_id: InstanceId, ctx: ContextDep, offset: Offset = None,
                  wait: Wait = 0, authorization: Authorization = None):
        return await read(ctx, authorization, uuid, stream, instance_id, offset, wait)

    @router.post(path + "/{instance_id}", response_class=PlainTextResponse,
                 summary=f"One {part}'s {stream} since the last fresh read")
    def one_fresh(uuid: str, instance_id: InstanceId, request: Request, body: RawBody,
                  session: SessionDep, user: CurrentUser, ctx: ContextDep):
        return run_once(request, session, user, body, lambda: (
            200, fresh_read(session, ctx, user, uuid, stream, instance_id)))
