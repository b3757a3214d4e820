"""Account and catalogue routes: /settings, /info, /profiles, /versions, /health."""
from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from qcompute._version import __version__
from qcompute.states import TaskState as T

from ..db.models import Task
from ..errors import NotFound
from .deps import ContextDep, CurrentUser, SessionDep

router = APIRouter(tags=["catalogue"])


@router.get("/health", summary="Liveness and what the cluster runs")
def health(ctx: ContextDep):
    return {"status": "ok", "version": __version__, "storage": ctx.storage.endpoint_url,
            "storageProcess": ctx.storage.describe(),
            "executor": ctx.settings.executor,
            "capacity": ctx.scheduler.executor.capacity,
            "running": len(ctx.scheduler.executor.running())}


@router.get("/settings", summary="Cluster settings: where the S3 storage is")
def settings(ctx: ContextDep):
    """``storage`` is what every client reads; ``taskWaitMaxSeconds`` advertises the long poll
    (``GET /tasks/{uuid}?wait=`` and ``POST /tasks/wait``) that qcompute's SDK uses."""
    return {"storage": ctx.storage.endpoint_url,
            "taskWaitMaxSeconds": ctx.settings.long_poll_max_seconds}


@router.get("/versions", summary="API versions")
def versions():
    return [{"version": "1", "endOfLife": None}]


@router.get("/info", summary="The current user's account")
def info(session: SessionDep, user: CurrentUser, ctx: ContextDep):
    final = [s.value for s in T if s.is_final()]
    count = session.scalar(select(func.count()).select_from(Task).where(Task.owner_id == user.id))
    running = session.scalar(select(func.count()).select_from(Task).where(
        Task.owner_id == user.id, Task.state.not_in(final)))
    limit = ctx.settings.max_instances_per_task
    return {"email": user.email, "bucketPrefix": user.bucket_prefix, "isOwner": user.is_owner,
            "taskCount": count, "runningTaskCount": running, "maxTask": 1_000_000,
            "maxRunningTask": 1_000_000, "maxInstances": limit,
            "maxFlexCores": ctx.settings.max_concurrent_instances,
            "runningInstanceCount": len(ctx.scheduler.executor.running()),
            "maxBucket": 1000, "bucketCount": 0, "quotaBytesBucket": 0,
            "usedQuotaBytesBucket": 0, "projects": []}


@router.get("/profiles", summary="Names of the profiles")
def profiles(ctx: ContextDep, _user: CurrentUser):
    return [p.name for p in ctx.settings.profiles]


@router.get("/profiles/{name}", summary="One profile and its default constants")
def profile(name: str, ctx: ContextDep, _user: CurrentUser):
    found = ctx.settings.profile(name)
    if found is None:
        raise NotFound(f"profile {name!r} not found", code="profile_not_found")
    return {"name": found.name, "description": found.description,
            "constants": [{"name": k, "value": v} for k, v in found.constants.items()]}
