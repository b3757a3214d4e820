"""Owner-only user management: what `qcompute user add/list/rotate/remove` call.

Each change touches two stores, the database and the S3 identities, and leaves no half-written
state: the database change is flushed, the S3 identity changed, and only then is the database
committed. If S3 fails, the database is rolled back; if the commit fails, the S3 change is
undone where that is possible (a new identity is deleted again).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import APIRouter, Query

from ..bootstrap import client_config_path, write_client_config
from ..errors import BadRequest, Conflict, StorageUnavailable, validate
from ..executors.base import InstanceKey
from ..sandbox import BWRAP_PACKAGE
from ..schemas import UserCreate
from ..services import users as service
from ..services.wire import iso
from . import openapi
from .deps import ContextDep, OwnerUser, RawBody, SessionDep
from .idempotency import loads
from .rendering import JSONRoute

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin", tags=["admin"], route_class=JSONRoute)


def _public(user) -> dict:
    return {"email": user.email, "bucketPrefix": user.bucket_prefix, "isOwner": user.is_owner,
            "creationDate": iso(user.created_at)}


def _apply_to_storage(session, what: str, action: Callable[[], Any]) -> None:
    """Run an S3 identity change; on failure roll the session back and answer 4xx/503."""
    try:
        action()
    except ValueError as exc:  # a value the S3 store cannot take
        session.rollback()
        raise BadRequest(f"cannot {what}: {exc}", code="invalid_user") from None
    except Exception as exc:
        session.rollback()
        log.exception("S3 identity change failed: %s", what)
        raise StorageUnavailable(f"cannot {what}: the S3 store refused or is down ({exc}); "
                                 "nothing was changed, try again") from None


def _provision(session, storage, user, token: str) -> None:
    """Give ``user`` its S3 identity; keep the keys the store issued (external IAM), if any."""
    keys = storage.provision_user(user.email, token, user.bucket_prefix or None)
    if keys is not None:
        service.set_storage_keys(session, user, keys)


@router.get("/users", summary="List users")
def list_users(session: SessionDep, _owner: OwnerUser):
    return [_public(u) for u in service.list_users(session)]


@router.post("/users", status_code=201, summary="Create a user; the reply holds its token",
             openapi_extra=openapi.body(UserCreate))
def add_user(body: RawBody, session: SessionDep, _owner: OwnerUser, ctx: ContextDep):
    data = validate(UserCreate, loads(body), code="invalid_user")
    executor = ctx.scheduler.executor
    if not executor.sandboxed and not data.allow_unsandboxed:
        raise Conflict(f"instances run unsandboxed on this cluster ({executor.isolation}): any "
                       "user's task could read every other user's data. Install the "
                       f"{BWRAP_PACKAGE} package and restart the server, or add the user with "
                       "--allow-unsandboxed (allowUnsandboxed: true)", code="unsandboxed_cluster")
    # Not replayed through Idempotency-Key: that would store the token in clear. A retry finds
    # the user already there and gets a 409.
    user, token = service.create_user(session, data.email)
    # The S3 identity must exist before anyone gets the token; a failure rolls back the user.
    _apply_to_storage(session, f"create the S3 identity of {user.email}",
                      lambda: _provision(session, ctx.storage, user, token))
    try:
        session.commit()
    except Exception:
        try:
            ctx.storage.remove_user(data.email)
        except Exception:
            log.exception("could not delete the S3 identity of %s after a failed commit",
                          data.email)
        raise
    return {**_public(user), "token": token}


@router.post("/users/{email}/token", summary="Rotate a user's token; the reply holds the new one")
def rotate_token(email: str, session: SessionDep, _owner: OwnerUser, ctx: ContextDep):
    """The old token stops working at once, for the API and as S3 secret key."""
    user, token = service.rotate_token(session, email)
    _apply_to_storage(session, f"change the S3 secret key of {email}",
                      lambda: _provision(session, ctx.storage, user, token))
    try:
        session.commit()
    except Exception:
        # The S3 secret is already the new token while the database keeps the old one: the
        # user must be rotated again.
        log.exception("rotating %s: S3 has the new secret but the database kept the old "
                      "token; rotate again", email)
        raise
    if user.is_owner:  # keep the server's copy of the owner's config working across restarts
        path = client_config_path(ctx.settings)
        try:
            write_client_config(path, cluster_url=ctx.settings.advertised_url, token=token,
                                storage_url=None)  # asked from GET /settings (bootstrap.py)
        except OSError:  # still hand out the token: it is the only copy
            log.exception("could not write the owner's new token to %s", path)
    return {**_public(user), "token": token}


@router.delete("/users/{email}", summary="Remove a user: keys revoked, tasks deleted")
def remove_user(email: str, session: SessionDep, _owner: OwnerUser, ctx: ContextDep,
                force: bool = Query(False, description="also cancel and delete unfinished tasks")):
    """The user's API token and S3 keys stop working at once and their tasks are deleted (409
    while some are unfinished, unless ``force``). Their buckets are kept; the owner can still
    reach them, and their bucket prefix is never given to anyone else."""
    removed = service.remove_user(session, email, force=force)
    _apply_to_storage(session, f"delete the S3 identity of {email}",
                      lambda: ctx.storage.remove_user(removed.email))
    try:
        session.commit()
    except Exception:
        log.exception("removing %s: the S3 keys are revoked but the database change failed; "
                      "remove the user again", email)
        raise
    ctx.scheduler.forget([InstanceKey(*key) for key in removed.active])
    for uuid in removed.task_uuids:
        ctx.scheduler.discard_files(uuid)
    return {"email": removed.email, "bucketPrefix": removed.bucket_prefix,
            "deletedTasks": len(removed.task_uuids), "message": "removed"}
