"""JSON rendering for every route: orjson, in the route's own call.

A route that returns a dict or a list would otherwise go through FastAPI's
``jsonable_encoder``, a recursive walk in Python that costs about a millisecond for one task
document on the event loop (bench/profile.md). Our routes return plain JSON types, so
:class:`JSONRoute` renders them with orjson instead; a route that returns a ``Response`` keeps it.
"""
from __future__ import annotations

import functools
import inspect
import json
from typing import Any, Callable

import orjson
from fastapi import Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute

__all__ = ["JSONRoute", "render"]

_OPTIONS = orjson.OPT_NON_STR_KEYS


def render(content: Any, status_code: int = 200) -> Response:
    try:
        body = orjson.dumps(content, option=_OPTIONS)
    except TypeError:  # what orjson refuses and JSON allows: an integer beyond 64 bits
        body = json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code, media_type="application/json")


def _rendering(endpoint: Callable, status_code: int) -> Callable:
    """``endpoint``, returning a rendered response (sync stays sync: it runs in the pool)."""

    def rendered(result: Any) -> Any:
        return result if isinstance(result, Response) else render(result, status_code)

    if inspect.iscoroutinefunction(endpoint):
        @functools.wraps(endpoint)
        async def call_async(*args, **kwargs):
            return rendered(await endpoint(*args, **kwargs))
        return call_async

    @functools.wraps(endpoint)
    def call(*args, **kwargs):
        return rendered(endpoint(*args, **kwargs))
    return call


class JSONRoute(APIRoute):
    """Renders with orjson the routes that keep the default response class."""

    def __init__(self, path: str, endpoint: Callable, **kwargs: Any) -> None:
        if isinstance(kwargs.get("response_class", DefaultPlaceholder(None)), DefaultPlaceholder):
            endpoint = _rendering(endpoint, kwargs.get("status_code") or 200)
        super().__init__(path, endpoint, **kwargs)
