"""Console sign-in: a sealed session cookie, CSRF checks, and the ``console_user`` dependency.

The cookie holds ``{"t": token, "c": csrf, "at": issued}`` sealed with the server's key
(``crypto.Sealer``, Fernet: encrypted and authenticated), never the raw token. It is HttpOnly,
SameSite=Strict, and Secure when the request came over https or to a loopback host (browsers
keep Secure cookies on ``http://127.0.0.1``). A visitor who has not signed in gets a session
without a token, so the sign-in form is CSRF-protected too.

Every state-changing request (anything but GET/HEAD) must carry the session's CSRF token (the
``X-CSRF-Token`` header, which htmx and console.js send, or a ``csrf_token`` field of a POSTed
form)
and come from this origin (``Origin``, else ``Referer``); otherwise it is refused with a 403.
"""
from __future__ import annotations

import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Optional
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, Request, Response
from sqlalchemy.orm import Session

from ..api.deps import SessionDep, signed_in
from ..crypto import SealError, Sealer
from ..db.models import User
from ..errors import DomainError, Forbidden, Unauthorized
from ..services.users import find_user

__all__ = ["COOKIE", "ConsoleSession", "ConsoleUser", "CsrfRefused", "SignInRequired",
           "acting_user", "check_csrf", "console_session", "console_user", "new_session",
           "owner_query", "scoped_user", "set_session", "signed_in_user"]

COOKIE = "qcompute_console"
MAX_AGE = 12 * 3600  # seconds a sign-in lasts
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page."""


class CsrfRefused(DomainError):
    status_code = 403
    code = "csrf_refused"


@dataclass(frozen=True)
class ConsoleSession:
    csrf: str
    token: Optional[str] = None
    issued: float = 0.0

    def seal(self, sealer: Sealer) -> str:
        return sealer.seal(json.dumps({"c": self.csrf, "t": self.token, "at": self.issued}))

    @classmethod
    def open(cls, sealer: Sealer, sealed: str) -> Optional["ConsoleSession"]:
        try:
            data = json.loads(sealer.open(sealed))
            found = cls(str(data["c"]), data.get("t"), float(data["at"]))
        except (SealError, ValueError, KeyError, TypeError):
            return None
        return found if time.time() - found.issued < MAX_AGE else None


def _sealer(request: Request) -> Sealer:
    return request.app.state.sealer


def console_session(request: Request) -> Optional[ConsoleSession]:
    """The request's session, from its cookie (None if absent, forged or expired)."""
    if not hasattr(request.state, "console_session"):
        sealed = request.cookies.get(COOKIE)
        request.state.console_session = (ConsoleSession.open(_sealer(request), sealed)
                                         if sealed else None)
    return request.state.console_session


def new_session(token: Optional[str] = None) -> ConsoleSession:
    """A session with a fresh CSRF token: at sign-in, sign-out, and for a new visitor."""
    return ConsoleSession(secrets.token_urlsafe(32), token, time.time())


def set_session(request: Request, response: Response, session: ConsoleSession) -> None:
    """Put ``session`` in the response's cookie (and make it this request's session)."""
    secure = request.url.scheme == "https" or request.url.hostname in _LOOPBACK
    response.set_cookie(COOKIE, session.seal(_sealer(request)), max_age=MAX_AGE,
                        path="/console", httponly=True, samesite="strict", secure=secure)
    request.state.console_session = session


def _same_origin(request: Request) -> bool:
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    return urlsplit(source).netloc.lower() == request.headers.get("host", "").lower()


async def check_csrf(request: Request) -> None:
    """Router dependency: refuse a state-changing request without this session's CSRF token,
    or from another origin."""
    if request.method in SAFE_METHODS:
        return
    if not _same_origin(request):
        raise CsrfRefused("refused: this request did not come from the console's own origin "
                          "(no matching Origin or Referer header)")
    session = console_session(request)
    sent = request.headers.get("x-csrf-token")  # a PUT's body (an upload) is never read here
    if sent is None and request.method == "POST" and request.headers.get(
            "content-type", "").startswith(("application/x-www-form-urlencoded",
                                            "multipart/form-data")):
        sent = (await request.form()).get("csrf_token")
    if session is None or not isinstance(sent, str) \
            or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise CsrfRefused("refused: the CSRF token is missing or stale; reload the page and "
                          "try again")


def signed_in_user(request: Request, session: Session) -> User:
    """The signed-in user (as the API's bearer auth would find it); else ``SignInRequired``.
    For a route that holds its request open (server-sent events), in a session of its own."""
    found = console_session(request)
    if found is None or not found.token:
        raise SignInRequired()
    try:
        return signed_in(session, found.token)
    except Unauthorized:  # the token was rotated or the user removed
        raise SignInRequired() from None


def console_user(request: Request, session: SessionDep) -> User:
    """Dependency: the signed-in user; a request without one goes to the sign-in page."""
    return signed_in_user(request, session)


ConsoleUser = Annotated[User, Depends(console_user)]


def scoped_user(session: Session, user: User, owner: Optional[str]) -> User:
    """Whose objects a page shows: the user's own; the cluster owner may name another user by
    e-mail (the ``?owner=`` filter). Anyone else naming another user gets a 403."""
    if not owner or owner == user.email:
        return user
    if not user.is_owner:
        raise Forbidden("only the cluster owner can look at another user's objects",
                        code="owner_only")
    return find_user(session, owner)


def acting_user(user: User, owner: Optional[str]) -> User:
    """Whose objects an action (abort, delete, close ...) changes: the user's own only, as in
    the API, which has no route for the cluster owner to change another user's tasks, pools or
    jobs. Naming another user (``?owner=``) is refused with a 403."""
    if owner and owner != user.email:
        raise Forbidden(f"only {owner} can change their own tasks, pools and jobs: the cluster "
                        "owner may look at them here, but the API lets no one else abort, "
                        "delete, rerun, close or terminate them", code="not_your_object")
    return user


def owner_query(user: User, whose: User) -> str:
    """The ``?owner=`` that keeps the owner's view of another user's objects in the links."""
    return "" if whose.id == user.id else "?" + urlencode({"owner": whose.email})
