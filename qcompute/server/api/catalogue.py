"""Account and catalogue routes: /settings, /info, /profiles, /versions, /health,
/hardware-constraints."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from qcompute._version import __version__
from qcompute.states import InstanceState as I
from qcompute.states import PoolState as P
from qcompute.states import TaskState as T

from ..db.models import Instance, Pool, Task
from ..errors import NotFound, StorageUnavailable
from ..services import hardware
from ..services.health import OK, active_instances, check_parts
from ..services.users import storage_keys
from .deps import ContextDep, CurrentUser, SessionDep
from .rendering import JSONRoute

router = APIRouter(tags=["catalogue"], route_class=JSONRoute)
QARNOT_SDK_AGENT = "qarnot-sdk-python"  # the official SDK: qarnot-sdk-python/v2.23.0


@router.get("/health", summary="Each part's state, and what the cluster runs",
            responses={503: {"description": "A part is down: ``status`` is ``degraded`` and "
                                            "``parts`` names it and why"}})
def health(ctx: ContextDep):
    """``parts``: ``database``, ``storage``, ``executor`` and ``scheduler``, each ``ok`` or
    ``down: <why>``. 200 with ``status`` ``ok`` when every part is ok; else 503, ``degraded``.
    ``role``: ``scheduler`` on the replica that runs the scheduler, else ``standby``.
    ``instance``: the id made once per data dir, by which ``qcompute up`` knows its server."""
    parts = check_parts(sessions=ctx.sessions, storage=ctx.storage, scheduler=ctx.scheduler)
    healthy = all(state == OK for state in parts.values())
    body = {"status": "ok" if healthy else "degraded", "parts": parts, "version": __version__,
            "instance": ctx.instance_id,
            "storage": ctx.storage.endpoint_url, "storageProcess": ctx.storage.describe(),
            "executor": ctx.settings.executor,
            "sandboxed": ctx.scheduler.executor.sandboxed,
            "isolation": ctx.scheduler.executor.isolation,
            "capacity": ctx.scheduler.executor.capacity,
            # with replicas on PostgreSQL, one runs the scheduler and the others stand by
            "role": "scheduler" if ctx.scheduler.started else "standby",
            "running": len(ctx.scheduler.executor.running()) if ctx.scheduler.started
            else active_instances(ctx.sessions),
            "nodes": _nodes(ctx)}
    return body if healthy else JSONResponse(body, status_code=503)


def _nodes(ctx) -> list[dict]:
    """The cluster's nodes: the executor's live ones, else the configured node kinds with the
    executor's slots (one host). ``heldSlots``: the slots open pools hold (idle or busy with
    their tasks); ``freeSlots``: those neither held nor busy, for tasks outside pools."""
    executor = ctx.scheduler.executor
    live = executor.describe_nodes()
    if live is not None:
        return live
    try:
        with ctx.sessions() as session:
            busy, unheld = ctx.scheduler.general_slots(session)
    except SQLAlchemyError:  # the database is down (/health says so): count without pools
        busy, unheld = len(executor.running()), executor.capacity
    held = executor.capacity - unheld
    return [{**node.to_json(), "slots": executor.capacity, "heldSlots": held,
             "freeSlots": max(0, unheld - busy)} for node in ctx.settings.node_kinds]


@router.get("/settings", summary="Cluster settings: where the S3 storage is")
def settings(ctx: ContextDep, user_agent: Annotated[str, Header()] = ""):
    """``storage`` is what every client reads; ``taskWaitMaxSeconds`` advertises the long poll
    (``GET /tasks/{uuid}?wait=`` and ``POST /tasks/wait``) that qcompute's SDK uses;
    ``sandboxed``/``isolation`` say how instances are kept apart.

    The official SDK (User-Agent ``qarnot-sdk-python/...``) gets the S3 front where CreateBucket
    of a bucket it owns answers 200, as Qarnot's storage does, and names such as ``meshroomIn``
    can be created (``storage/s3front.py``). The others get SeaweedFS itself; every client gets
    the front as ``qcomputeCreateBucketUrl``, where qcompute's SDK sends its CreateBucket."""
    storage = (ctx.storage.qarnot_sdk_endpoint_url if user_agent.startswith(QARNOT_SDK_AGENT)
               else ctx.storage.endpoint_url)
    executor = ctx.scheduler.executor
    doc = {"storage": storage, "taskWaitMaxSeconds": ctx.settings.long_poll_max_seconds,
           "sandboxed": executor.sandboxed, "isolation": executor.isolation}
    if ctx.storage.create_bucket_url:
        doc["qcomputeCreateBucketUrl"] = ctx.storage.create_bucket_url
    return doc


@router.get("/versions", summary="API versions")
def versions():
    return [{"version": "1", "endOfLife": None}]


_ACTIVE = [s.value for s in I if s.is_active()]
_OPEN_POOL = [s.value for s in P if not s.is_final()]


def _count(model, *where):
    return select(func.count()).select_from(model).where(*where).scalar_subquery()


@router.get("/info", summary="The current user's account: own counts, buckets and limits")
def info(session: SessionDep, user: CurrentUser, ctx: ContextDep):
    """Counts are the caller's own, read in one query; bucket figures come from the storage
    (``null`` when it cannot say). A limit is given only where the server enforces one:
    instances per task, and the cluster's executor slots (one core each); the others are absent
    (no quota). On an external S3 store, ``storageKeys`` (``accessKey``, ``secretKey``) is the
    caller's key pair there, which qcompute's SDK uses instead of (e-mail, token)."""
    final = [s.value for s in T if s.is_final()]
    tasks, running_tasks, pools, running_pools, running = session.execute(select(
        _count(Task, Task.owner_id == user.id),
        _count(Task, Task.owner_id == user.id, Task.state.not_in(final)),
        _count(Pool, Pool.owner_id == user.id),
        _count(Pool, Pool.owner_id == user.id, Pool.state.in_(_OPEN_POOL)),
        _count(Instance, Instance.state.in_(_ACTIVE), Instance.task_id.in_(
            select(Task.id).where(Task.owner_id == user.id))))).one()
    usage = ctx.storage.usage(user.bucket_prefix)
    slots = ctx.scheduler.executor.capacity
    doc = {"email": user.email, "bucketPrefix": user.bucket_prefix, "isOwner": user.is_owner,
            "taskCount": tasks, "runningTaskCount": running_tasks,
            "poolCount": pools, "runningPoolCount": running_pools,
            "runningInstanceCount": running, "runningCoreCount": running,
            "maxInstances": ctx.settings.max_instances_per_task,
            "maxFlexInstances": slots, "maxFlexCores": slots,
            "bucketCount": usage.buckets if usage else None,
            "usedQuotaBytesBucket": usage.bytes if usage else None,
            "projects": []}
    try:
        keys = ctx.storage.user_keys(user.email, storage_keys(session, user))
    except ValueError as exc:  # the operator's keys file cannot be read
        raise StorageUnavailable(str(exc)) from None
    if keys is not None:  # an external store's keys replace (e-mail, token) for qcompute's SDK
        doc["storageKeys"] = {"accessKey": keys[0], "secretKey": keys[1]}
    return doc


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


@router.get("/hardware-constraints", summary="A page of the hardware constraints this cluster "
            "can satisfy")
def hardware_constraints(ctx: ContextDep, _user: CurrentUser,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                         offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0):
    """``nodes`` (a qcompute extra): the nodes these constraints come from, with their cores,
    memory, labels and free slots."""
    offered = hardware.offered_constraints(ctx.settings.node_kinds)
    return {"data": offered[offset:offset + limit], "offset": offset, "limit": limit,
            "total": len(offered), "nodes": _nodes(ctx)}


@router.get("/hardware-constraints/cpu-model-constraints/search",
            summary="CPU model constraints matching cpuModel: exact, then prefix, then substring")
def search_cpu_model_constraints(ctx: ContextDep, _user: CurrentUser,
                                 cpu_model: Annotated[str, Query(alias="cpuModel")] = ""):
    return hardware.search_cpu_models(ctx.settings.node_kinds, cpu_model)
