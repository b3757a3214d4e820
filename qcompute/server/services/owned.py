"""The one owner-scoped lookup: another user's object is a 404, like a missing one."""
from __future__ import annotations

from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import User
from ..errors import NotFound
from ..schemas.common import shown

__all__ = ["find_owned"]

Owned = TypeVar("Owned")


def find_owned(session: Session, model: type[Owned], user: User, uuid: str, kind: str) -> Owned:
    """The ``kind`` (task, pool, job) ``uuid`` of ``user``, or NotFound ``<kind>_not_found``."""
    if len(uuid) > 64 or "\x00" in uuid:  # no object has such an id (PostgreSQL refuses NUL)
        raise NotFound(f"{kind} {shown(uuid)} not found", code=f"{kind}_not_found")
    found = session.scalar(select(model).where(model.uuid == uuid,  # type: ignore[attr-defined]
                                               model.owner_id == user.id))  # type: ignore[attr-defined]
    if found is None:
        raise NotFound(f"{kind} {uuid} not found", code=f"{kind}_not_found")
    return found
