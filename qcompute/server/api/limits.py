"""Limits applied to every request before a route sees it: the body's size and its JSON depth.

* :class:`BodyLimit` (ASGI middleware): a body larger than ``max_request_bytes`` gets a 413
  ``{"message", "code": "request_too_large"}``. A ``Content-Length`` over the limit is refused
  before anything is read; a chunked body is counted as it arrives and refused as soon as it
  passes the limit, so no more than the limit is ever held in memory. It must be the
  innermost middleware: the error it raises while the route reads the body then reaches the
  app's error handlers directly (``BaseHTTPMiddleware`` would wrap it in an exception group).
* :func:`check_json_depth`: JSON nested deeper than :data:`MAX_JSON_DEPTH` is refused before
  it is parsed, so nothing downstream (the JSON decoder, pydantic, SQLAlchemy's JSON columns)
  ever recurses that deep.
"""
from __future__ import annotations

import itertools
import re

from fastapi.responses import JSONResponse

from ..errors import BadRequest, DomainError, error_body

__all__ = ["BodyLimit", "RequestTooLarge", "MAX_JSON_DEPTH", "check_json_depth"]

MAX_JSON_DEPTH = 100  # a filter 32 levels deep needs 67; documents need fewer than 10

# What is not a bracket: whole strings (escapes included) and runs of other characters.
_NOT_BRACKETS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[^"\[\]{}]+', re.DOTALL)
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1, ord('"'): 0}


def check_json_depth(body: bytes) -> None:
    """Raise BadRequest if ``body`` nests arrays and objects more than MAX_JSON_DEPTH deep
    (a malformed body is left to the JSON decoder)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    brackets = _NOT_BRACKETS.sub(b"", body)
    depth = max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
    if depth > MAX_JSON_DEPTH:
        raise BadRequest(f"the request body nests arrays and objects more than "
                         f"{MAX_JSON_DEPTH} levels deep", code="json_too_deep")


class RequestTooLarge(DomainError):
    status_code = 413
    code = "request_too_large"


def _too_large(limit: int, setting: str = "max_request_bytes") -> RequestTooLarge:
    return RequestTooLarge(f"the request body is larger than this server's limit of {limit} "
                           f"bytes ({setting})")


class BodyLimit:
    """ASGI middleware capping request bodies at ``max_bytes``, or at the limit of the first
    ``(path pattern, bytes, setting name)`` of ``paths`` whose pattern matches the whole path
    (the console's uploads)."""

    def __init__(self, app, max_bytes: int,
                 paths: tuple[tuple[str, int, str], ...] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = [(re.compile(pattern), limit, name) for pattern, limit, name in paths]

    def _limit(self, path: str) -> tuple[int, str]:
        return next(((limit, name) for pattern, limit, name in self.paths
                     if pattern.fullmatch(path)), (self.max_bytes, "max_request_bytes"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, setting = self._limit(scope["path"])
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and (len(length) > 18 or int(length) > limit):
            error = _too_large(limit, setting)
            response = JSONResponse(error_body(error.message, error.code), error.status_code,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body: rendered by the app's handler
                    raise _too_large(limit, setting)
            return message

        await self.app(scope, counted, send)
