"""What every console module shares: its router, the templates, and how pages and errors render.

A console module declares ``router = console_router()`` and its routes on it; ``install`` (in
``__init__``) includes each. Routes take ``ConsoleUser`` (auth.py) and answer
``render(request, "x.html", {...})``; a :class:`~qcompute.server.errors.DomainError` they raise
becomes an error page (or, for an htmx request, a message in the page's ``#flash``), and a
request that is not signed in goes to the sign-in page.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from ..errors import DomainError
from .auth import SignInRequired, check_csrf, console_session, new_session, set_session

__all__ = ["console_router", "render", "templates", "PREFIX", "is_htmx"]

PREFIX = "/console"
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

# No page loads or sends anything to another host (and inline scripts do not run).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _when(value: Optional[datetime]) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


templates.env.filters["when"] = _when


def is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def render(request: Request, name: str, context: Optional[dict[str, Any]] = None,
           status_code: int = 200, headers: Optional[dict[str, str]] = None) -> HTMLResponse:
    """The template ``name`` with ``context``, plus ``csrf`` (this session's token) and the
    security headers. A visitor without a session gets one (for the sign-in form)."""
    session = console_session(request)
    fresh = new_session() if session is None else None
    response = templates.TemplateResponse(
        request, name, {"csrf": (session or fresh).csrf, **(context or {})},
        status_code=status_code, headers={**SECURITY_HEADERS, **(headers or {})})
    if fresh:
        set_session(request, response, fresh)
    return response


def _error(request: Request, status: int, message: str) -> Response:
    if is_htmx(request):  # shown in the page's flash area
        return render(request, "flash.html", {"message": message, "error": True}, status,
                      headers={"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"})
    return render(request, "error.html", {"message": message, "status": status}, status)


def _sign_in(request: Request) -> Response:
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    target = f"{PREFIX}/login?next={quote(here)}"
    if is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


class ConsoleRoute(APIRoute):
    """Errors as pages, and sign-in redirects, for every console route."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return _sign_in(request)
            except DomainError as exc:
                return _error(request, exc.status_code, exc.message)

        return guarded


def console_router() -> APIRouter:
    """A router under ``/console`` whose state-changing routes are CSRF-checked."""
    return APIRouter(prefix=PREFIX, route_class=ConsoleRoute, include_in_schema=False,
                     dependencies=[Depends(check_csrf)])
