"""Domain errors raised by services, and the handlers that turn every error into
``{"message", "code"}`` with a 4xx (or, for a bug, a 500 that still names the request id)."""
from __future__ import annotations

import logging
import uuid
from typing import Any, Sequence, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class DomainError(Exception):
    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None  # e.g. Retry-After

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code


class BadRequest(DomainError):
    pass


class Unauthorized(DomainError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class StorageUnavailable(DomainError):
    status_code = 503
    code = "storage_unavailable"


def error_body(message: str, code: str) -> dict[str, str]:
    return {"message": message, "code": code}


def field_path(loc: Sequence[Any]) -> str:
    """``("constants", 3, "key")`` → ``constants[3].key``."""
    path = ""
    for part in loc:
        if part == "body":
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def describe_validation(errors: Sequence[Any]) -> str:
    """pydantic errors as one line: ``constants[3].key: ... contains '='; name: ...``."""
    parts = []
    for err in errors:
        where = field_path(err.get("loc", ()))
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


Model = TypeVar("Model", bound=BaseModel)


def validate(model: type[Model], data: Any, *, code: str) -> Model:
    """``model.model_validate(data)``, or a :class:`BadRequest` naming every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc.errors()), code=code) from None


class RequestId:
    """ASGI middleware: every response carries ``X-Request-ID`` (the client's, or a new one),
    and a bug becomes a 500 that names it, logged with the same id. Plain ASGI rather than
    ``@app.middleware("http")``, whose task group and streams cost more than most routes."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"),
                   None) or uuid.uuid4().hex
        header = (b"x-request-id", rid.encode("latin-1"))
        started = False

        async def tagged(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, tagged)
        except Exception:  # a bug: log it with the id the client sees
            log.exception("unhandled error in %s %s (request %s)", scope["method"],
                          scope["path"], rid)
            if started:
                raise
            response = JSONResponse(
                error_body(f"internal error (request id {rid})", "internal_error"), 500)
            await response(scope, receive, tagged)


def install_error_handlers(app: FastAPI) -> None:
    app.add_middleware(RequestId)

    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError):
        return JSONResponse(error_body(exc.message, exc.code), exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(describe_validation(exc.errors()), "invalid_request"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), f"http_{exc.status_code}"),
                            exc.status_code)
