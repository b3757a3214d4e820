"""The served OpenAPI document: request bodies of raw-body routes, errors as answered, links.

- Routes that read the raw body (to hash it for Idempotency-Key) declare their pydantic model
  with :func:`body`; FastAPI cannot see those bodies otherwise.
- Bad input answers ``400 {"message", "code"}`` (errors.py), not FastAPI's 422.
- OpenAPI links say which operations take what a creating call answers (a task's ``uuid``, a
  snapshot's ``id``, ...): readers of ``/docs`` see them, and schemathesis' state machine
  follows them (tests/server/test_fuzz.py).
"""
from __future__ import annotations

from typing import Any, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"
_COMPONENTS: dict[str, Any] = {
    "Error": {"title": "Error", "type": "object", "required": ["message", "code"],
              "properties": {"message": {"type": "string"}, "code": {"type": "string"}}},
}
_BAD_REQUEST = {"description": "Bad request: the message names the problem",
                "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}

# (method, path that creates) → (its success status, the paths that take it, their parameters)
_LINKS: dict[tuple[str, str], tuple[str, str, dict[str, str]]] = {
    ("post", "/tasks"): ("201", "/tasks/{uuid}", {"uuid": "$response.body#/uuid"}),
    ("post", "/pools"): ("201", "/pools/{uuid}", {"uuid": "$response.body#/uuid"}),
    ("post", "/jobs"): ("201", "/jobs/{uuid}", {"uuid": "$response.body#/uuid"}),
    ("post", "/tasks/{uuid}/snapshot"): ("200", "/tasks/{uuid}/snapshot/{snapshot_id}",
                                         {"uuid": "$request.path.uuid",
                                          "snapshot_id": "$response.body#/id"}),
    ("put", "/secrets-manager/data/{key}"): ("201", "/secrets-manager/data/{key}",
                                             {"key": "$request.path.key"}),
    ("post", "/admin/users"): ("201", "/admin/users/{email}",
                               {"email": "$response.body#/email"}),
}


def body(model: type[BaseModel], *, or_array: bool = False,
         example: Optional[Any] = None) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` (or an array of it) as the JSON request body."""
    schema = model.model_json_schema(by_alias=True, ref_template=_REF)
    _COMPONENTS.update(schema.pop("$defs", {}))
    _COMPONENTS[model.__name__] = schema
    ref = {"$ref": _REF.format(model=model.__name__)}
    media: dict[str, Any] = {"schema": {"oneOf": [ref, {"type": "array", "items": ref}]}
                             if or_array else ref}
    if example is not None:
        media["example"] = example
    return {"requestBody": {"required": True, "content": {"application/json": media}}}


def _errors_as_answered(paths: dict[str, Any]) -> None:
    for operations in paths.values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", _BAD_REQUEST)


def _links(paths: dict[str, Any]) -> None:
    for (method, producer), (status, prefix, parameters) in _LINKS.items():
        response = paths.get(producer, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links = response.setdefault("links", {})
        for path, operations in paths.items():
            if path != prefix and not path.startswith(prefix + "/"):
                continue
            for operation in operations.values():
                links[operation["operationId"]] = {"operationId": operation["operationId"],
                                                   "parameters": parameters}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            components.update(_COMPONENTS)
            _errors_as_answered(schema["paths"])
            _links(schema["paths"])
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
