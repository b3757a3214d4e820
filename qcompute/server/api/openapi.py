"""Request-body schemas for routes that read the raw body (to hash it for Idempotency-Key).

FastAPI cannot see those bodies, so each such route declares its pydantic model here; the
models' schemas are added to the document's components by :func:`install`.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_COMPONENTS: dict[str, Any] = {}


def body(model: type[BaseModel], *, or_array: bool = False) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` (or an array of it) as the JSON request body."""
    schema = model.model_json_schema(by_alias=True, ref_template=_REF)
    _COMPONENTS.update(schema.pop("$defs", {}))
    _COMPONENTS[model.__name__] = schema
    ref = {"$ref": _REF.format(model=model.__name__)}
    shape = {"oneOf": [ref, {"type": "array", "items": ref}]} if or_array else ref
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": shape}}}}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_COMPONENTS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
