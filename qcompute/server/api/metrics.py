"""``GET /metrics``: the Prometheus exposition (metrics.py), for the cluster's owner only.

On the API port, behind the owner's token (``Authorization: Bearer <token>``, as Prometheus'
``authorization`` sends it), rather than on a port of its own: the numbers say who runs what,
and one port with one kind of authentication is one thing less to firewall.
"""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import Forbidden
from .deps import CurrentUser

router = APIRouter(tags=["operator"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, user: CurrentUser) -> Response:
    if not user.is_owner:
        raise Forbidden("only the cluster owner can read the metrics", code="owner_only")
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
