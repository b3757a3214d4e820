"""Sign in with an API token, and sign out."""
from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.responses import RedirectResponse

from ..api.deps import SessionDep, signed_in
from ..errors import Unauthorized
from .auth import console_session, new_session, set_session
from .pages import PREFIX, console_router, render

router = console_router()
HOME = f"{PREFIX}/tasks"


def _next(target: str) -> str:
    """Only a console path (no other host, no scheme-relative ``//host``)."""
    ok = target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target
    return target if ok else HOME


@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse(HOME, status_code=303)


@router.get("/login")
async def sign_in_page(request: Request, next: str = HOME):
    return render(request, "login.html", {"next": _next(next)})


@router.post("/login")
def sign_in(request: Request, session: SessionDep, token: Annotated[str, Form()] = "",
            next: Annotated[str, Form()] = HOME):
    """Check the token as the API's bearer auth does; a good one starts a signed-in session."""
    try:
        signed_in(session, token.strip())
    except Unauthorized as exc:
        return render(request, "login.html", {"next": _next(next), "error": exc.message}, 401)
    response = RedirectResponse(_next(next), status_code=303)
    set_session(request, response, new_session(token.strip()))
    return response


@router.post("/logout")
async def sign_out(request: Request) -> RedirectResponse:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    if console_session(request) is not None:
        set_session(request, response, new_session())  # no token, a new CSRF token
    return response
