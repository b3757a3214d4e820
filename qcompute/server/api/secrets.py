"""Secret routes (``/secrets-manager``, reference §1.3): thin wrappers over services.secrets.

Keys are paths, so the routes take ``{key:path}``. PUT creates (409 if the key exists), PATCH
updates (404 if it does not). These routes do not replay ``Idempotency-Key``s: the stored record
would hold a hash of the request, so of the secret. A repeated PUT gets a 409, a repeated PATCH
or DELETE does the same thing again (or a 404), as for user creation.
"""
from __future__ import annotations

from fastapi import APIRouter

from ..schemas.secrets import SecretValue
from ..services import secrets as service
from . import openapi
from .deps import CurrentUser, RawBody, SessionDep
from .idempotency import loads
from .rendering import JSONRoute

router = APIRouter(prefix="/secrets-manager", tags=["secrets"], route_class=JSONRoute)


@router.get("/data/{key:path}", summary="A secret's value")
def get_secret(key: str, session: SessionDep, user: CurrentUser):
    return {"value": service.secret_value(session, user, key)}


@router.put("/data/{key:path}", status_code=201, summary="Create a secret (409 if it exists)",
            openapi_extra=openapi.body(SecretValue))
def create_secret(key: str, body: RawBody, session: SessionDep, user: CurrentUser):
    secret = service.create_secret(session, user, key, service.read_value(loads(body)))
    session.commit()
    return {"key": secret.key}


@router.patch("/data/{key:path}", summary="Change a secret's value (404 if it does not exist)",
              openapi_extra=openapi.body(SecretValue))
def update_secret(key: str, body: RawBody, session: SessionDep, user: CurrentUser):
    secret = service.update_secret(session, user, key, service.read_value(loads(body)))
    session.commit()
    return {"key": secret.key}


@router.delete("/data/{key:path}", summary="Delete a secret")
def delete_secret(key: str, session: SessionDep, user: CurrentUser):
    key = service.delete_secret(session, user, key)
    session.commit()
    return {"key": key, "message": "deleted"}


@router.get("/search/{prefix:path}", summary="Keys and folders one level under a prefix")
@router.get("/search", include_in_schema=False)
def search_secrets(session: SessionDep, user: CurrentUser, prefix: str = ""):
    return {"keys": service.search_secrets(session, user, prefix)}
