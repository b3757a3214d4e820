"""``Idempotency-Key`` on POST: a repeat with the same key replays the first response.

The stored response is written in the same transaction as the work it describes, so a request
either did its work and left its record, or did neither. A concurrent duplicate loses the race on
the unique (user, key) constraint, rolls back, and replays the winner.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any, Callable, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db.models import IdempotencyRecord, User, utcnow
from ..errors import BadRequest, Conflict
from .limits import check_json_depth

HEADER = "Idempotency-Key"


def _replay(record: IdempotencyRecord) -> Response:
    response = Response(record.body, record.status_code, media_type=record.media_type)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _find(session: Session, user: User, key: str,
          ttl_seconds: int) -> Optional[IdempotencyRecord]:
    record = session.scalar(select(IdempotencyRecord).where(
        IdempotencyRecord.user_id == user.id, IdempotencyRecord.key == key))
    if record is not None and record.created_at < utcnow() - timedelta(seconds=ttl_seconds):
        session.delete(record)  # expired: the key may be used afresh
        session.flush()
        return None
    return record


def _render(status: int, content: Any) -> Response:
    if isinstance(content, str):
        return PlainTextResponse(content, status)
    return JSONResponse(content, status)


def run_once(request: Request, session: Session, user: User, body: bytes,
             work: Callable[[], tuple[int, Any]]) -> Response:
    """Run ``work`` (which writes to ``session`` without committing) at most once per key,
    commit, and return its ``(status, content)`` as a response."""
    key = request.headers.get(HEADER)
    if not key:
        status, content = work()
        session.commit()
        return _render(status, content)
    if len(key) > 255:
        raise BadRequest(f"{HEADER} is longer than 255 characters", code="invalid_idempotency_key")
    route = f"{request.method} {request.url.path}"
    digest = hashlib.sha256(body).hexdigest()
    ttl = request.app.state.ctx.settings.idempotency_ttl_seconds
    record = _find(session, user, key, ttl)
    if record is None:
        status, content = work()
        response = _render(status, content)
        session.add(IdempotencyRecord(
            user_id=user.id, key=key, route=route, request_hash=digest, status_code=status,
            media_type=response.media_type or "application/json",
            body=response.body.decode()))
        try:
            session.commit()
            return response
        except IntegrityError:  # a concurrent request with this key committed first
            session.rollback()
            record = _find(session, user, key, ttl)
            assert record is not None
    if record.route != route or record.request_hash != digest:
        raise Conflict(f"{HEADER} {key!r} was already used for a different request",
                       code="idempotency_key_reused")
    return _replay(record)


def loads(body: bytes) -> Any:
    """The JSON of a request body (UTF-8), refused (400) if it is not JSON or nests too deep."""
    try:
        text = body.decode("utf-8-sig") if body else "null"
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the request body is not UTF-8: {exc}", code="invalid_json") from None
    check_json_depth(body)  # exact on UTF-8, where no byte of a character looks like '['
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}",
                         code="invalid_json") from None
