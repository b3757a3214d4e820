"""Owner-only user management: what `qcompute user add/list` call."""
from __future__ import annotations

from fastapi import APIRouter

from ..errors import validate
from ..schemas import UserCreate
from ..services import users as service
from ..services.wire import iso
from . import openapi
from .deps import ContextDep, OwnerUser, RawBody, SessionDep
from .idempotency import loads

router = APIRouter(prefix="/admin", tags=["admin"])


def _public(user) -> dict:
    return {"email": user.email, "bucketPrefix": user.bucket_prefix, "isOwner": user.is_owner,
            "creationDate": iso(user.created_at)}


@router.get("/users", summary="List users")
def list_users(session: SessionDep, _owner: OwnerUser):
    return [_public(u) for u in service.list_users(session)]


@router.post("/users", status_code=201, summary="Create a user; the reply holds its token",
             openapi_extra=openapi.body(UserCreate))
def add_user(body: RawBody, session: SessionDep, _owner: OwnerUser, ctx: ContextDep):
    data = validate(UserCreate, loads(body), code="invalid_user")
    # Not replayed through Idempotency-Key: that would store the token in clear. A retry finds
    # the user already there and gets a 409.
    user, token = service.create_user(session, data.email)
    # The S3 identity must exist before anyone gets the token; a failure rolls back the user.
    ctx.storage.provision_user(user.email, token, user.bucket_prefix or None)
    session.commit()
    return {**_public(user), "token": token}
