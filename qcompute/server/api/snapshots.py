"""Snapshot routes (reference §1.3): upload a running task's results now, or periodically."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from ..errors import validate
from ..schemas.snapshots import PeriodicSnapshot, SnapshotConfig
from ..services import snapshots as service
from . import openapi
from .deps import ContextDep, CurrentUser, RawBody, SessionDep
from .idempotency import loads, run_once
from .rendering import JSONRoute

router = APIRouter(tags=["snapshots"], route_class=JSONRoute)


@router.post("/tasks/{uuid}/snapshot/periodic",
             summary="Upload the task's results every `interval` seconds while it runs",
             openapi_extra=openapi.body(PeriodicSnapshot))
def periodic_snapshot(uuid: str, request: Request, body: RawBody, session: SessionDep,
                      user: CurrentUser, ctx: ContextDep):
    config = validate(PeriodicSnapshot, loads(body), code="invalid_snapshot")
    changed: list[int] = []

    def work() -> tuple[int, Any]:
        task, snap = service.set_periodic(session, user, uuid, config)
        changed.append(task.id)
        return 200, {"uuid": uuid, "id": snap.uuid, "interval": snap.interval_sec}

    response = run_once(request, session, user, body, work)
    if changed:
        ctx.scheduler.periodic_snapshot_changed(changed[0])
    return response


@router.post("/tasks/{uuid}/snapshot", summary="Upload the running task's results now",
             openapi_extra=openapi.body(SnapshotConfig))
def trigger_snapshot(uuid: str, request: Request, body: RawBody, session: SessionDep,
                     user: CurrentUser, ctx: ContextDep):
    config = validate(SnapshotConfig, loads(body) or {}, code="invalid_snapshot")
    triggered: list[tuple[int, str]] = []

    def work() -> tuple[int, Any]:
        task, snap = service.trigger_snapshot(session, user, uuid, config)
        triggered.append((task.id, snap.uuid))
        return 200, {"id": snap.uuid}

    response = run_once(request, session, user, body, work)
    if triggered:
        ctx.scheduler.snapshot(*triggered[0])
    return response


@router.get("/tasks/{uuid}/snapshot/{snapshot_id}", summary="One snapshot and its status")
def get_snapshot(uuid: str, snapshot_id: str, session: SessionDep, user: CurrentUser):
    return service.snapshot_to_json(service.get_snapshot(session, user, uuid, snapshot_id), uuid)
