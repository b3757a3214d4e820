"""``Idempotency-Key`` on POST: a repeat with the same key replays the first response.

A request with a key first *claims* it: it inserts the key's record, without a response, in a
short transaction of its own. Its work then runs in one transaction that also stores the
response in that record, on the condition that the claim is still its own. So:

* a repeat while the first request runs finds the claim, waits for it (up to
  ``idempotency_wait_seconds``) and replays the stored response, or answers 409
  ``idempotency_key_in_use`` with ``Retry-After`` (qcompute's SDK retries it);
* work whose request fails leaves nothing, and gives the key back;
* a claim older than ``idempotency_lease_seconds`` (its server died) is taken over; the request
  that held it, if it still runs, can no longer commit (its conditional store finds another
  claim and rolls back). At most one request's work commits per key.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import timedelta
from typing import Any, Callable, Union

from fastapi import Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db.models import IdempotencyRecord, User, utcnow
from ..errors import BadRequest, Conflict
from ..settings import ServerSettings
from .limits import check_json_depth
from .rendering import render

HEADER = "Idempotency-Key"
_POLL_SECONDS = (0.02, 0.5)  # first and longest pause while a repeat waits for the first


class KeyInUse(Conflict):
    code = "idempotency_key_in_use"

    def __init__(self, key: str) -> None:
        super().__init__(f"a request with {HEADER} {key!r} is still running: retry later")
        self.headers = {"Retry-After": "1"}


_COLUMNS = (IdempotencyRecord.id, IdempotencyRecord.route, IdempotencyRecord.request_hash,
            IdempotencyRecord.claim, IdempotencyRecord.created_at, IdempotencyRecord.status_code,
            IdempotencyRecord.media_type, IdempotencyRecord.body)


def _replay(record: Any) -> Response:
    response = Response(record.body, record.status_code, media_type=record.media_type)
    response.headers["Idempotent-Replayed"] = "true"
    return response


def _render(status: int, content: Any) -> Response:
    if isinstance(content, str):
        return PlainTextResponse(content, status)
    return render(content, status)


class _Key:
    """One request's use of a key: claim it, store its response, or give it back."""

    def __init__(self, session: Session, settings: ServerSettings, user: User, key: str,
                 route: str, digest: str) -> None:
        self.session, self.settings, self.key = session, settings, key
        self.user_id, self.route, self.digest = user.id, route, digest
        self.token = uuid.uuid4().hex
        self.record_id = 0

    def _mine(self):
        return (IdempotencyRecord.id == self.record_id) & (IdempotencyRecord.claim == self.token)

    def _try_insert(self) -> bool:
        record = IdempotencyRecord(user_id=self.user_id, key=self.key, route=self.route,
                                   request_hash=self.digest, status_code=0, media_type="",
                                   body="", claim=self.token, created_at=utcnow())
        self.session.add(record)
        try:
            self.session.commit()
        except IntegrityError:
            self.session.rollback()
            return False
        self.record_id = record.id
        return True

    def _take_over(self, record: Any) -> bool:
        """Claim a record whose holder's lease ran out (committed at once)."""
        taken = self.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record.id, IdempotencyRecord.claim == record.claim)
            .values(claim=self.token, created_at=utcnow())).rowcount
        self.session.commit()
        self.record_id = record.id if taken else 0
        return bool(taken)

    def claim(self) -> Union[None, Response]:
        """Take the key (None), or the response of the request that already used it."""
        wait = self.settings.idempotency_wait_seconds
        deadline, pause = time.monotonic() + wait, _POLL_SECONDS[0]
        while True:  # look before inserting: on SQLite a read never waits for a writer
            record = self.session.execute(select(*_COLUMNS).where(
                IdempotencyRecord.user_id == self.user_id,
                IdempotencyRecord.key == self.key)).first()
            self.session.rollback()  # end the read: the next look sees the newest commit
            if record is None:
                if self._try_insert():
                    return None
                continue  # another request took it first
            now = utcnow()
            if record.created_at < now - timedelta(seconds=self.settings.idempotency_ttl_seconds):
                self.session.execute(delete(IdempotencyRecord).where(
                    IdempotencyRecord.id == record.id,
                    IdempotencyRecord.created_at == record.created_at))
                self.session.commit()  # expired: the key may be used afresh
                continue
            if record.route != self.route or record.request_hash != self.digest:
                raise Conflict(f"{HEADER} {self.key!r} was already used for a different "
                               "request", code="idempotency_key_reused")
            if record.claim is None:
                return _replay(record)
            lease = timedelta(seconds=self.settings.idempotency_lease_seconds)
            if record.created_at < now - lease and self._take_over(record):
                return None
            if time.monotonic() + pause > deadline:
                raise KeyInUse(self.key)
            time.sleep(pause)
            pause = min(pause * 2, _POLL_SECONDS[1])

    def store(self, status: int, response: Response) -> bool:
        """Write the response into the claimed record, in the work's transaction; False if
        the claim was taken over meanwhile (the caller then rolls the work back)."""
        return bool(self.session.execute(
            update(IdempotencyRecord).where(self._mine())
            .values(claim=None, status_code=status,
                    media_type=response.media_type or "application/json",
                    body=response.body.decode())).rowcount)

    def give_back(self) -> None:
        """After a failed request: the key is free again (if still ours)."""
        self.session.rollback()
        self.session.execute(delete(IdempotencyRecord).where(self._mine()))
        self.session.commit()


def run_once(request: Request, session: Session, user: User, body: bytes,
             work: Callable[[], tuple[int, Any]]) -> Response:
    """Run ``work`` (which writes to ``session`` without committing) at most once per key,
    commit it as one transaction, and return its ``(status, content)`` as a response."""
    key = request.headers.get(HEADER)
    if not key:
        status, content = work()
        session.commit()
        return _render(status, content)
    if len(key) > 255:
        raise BadRequest(f"{HEADER} is longer than 255 characters", code="invalid_idempotency_key")
    settings = request.app.state.ctx.settings
    claimed = _Key(session, settings, user, key, f"{request.method} {request.url.path}",
                   hashlib.sha256(body).hexdigest())
    replay = claimed.claim()
    if replay is not None:
        return replay
    try:
        status, content = work()
        response = _render(status, content)
        if not claimed.store(status, response):  # a retry took the key over after our lease
            raise KeyInUse(key)                  # ran out: our work rolls back, it answers
        session.commit()
    except BaseException:
        claimed.give_back()
        raise
    return response


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
