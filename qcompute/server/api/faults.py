"""``POST /admin/faults``: fault injection for the fault tests, owner only. The route exists only
when the server runs with ``fault_injection = true`` (never in production)."""
from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..errors import validate
from .deps import ContextDep, OwnerUser, RawBody
from .idempotency import loads
from .rendering import JSONRoute

router = APIRouter(prefix="/admin", tags=["admin"], include_in_schema=False,
                   route_class=JSONRoute)


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    scheduler_rounds: int = Field(0, ge=0, le=10_000, alias="schedulerRounds")  # rounds to fail


@router.post("/faults", summary="Inject faults (tests only)")
def inject(body: RawBody, _owner: OwnerUser, ctx: ContextDep):
    faults = validate(Faults, loads(body), code="invalid_faults")
    ctx.scheduler.injected_faults = faults.scheduler_rounds
    return {"schedulerRounds": faults.scheduler_rounds}
