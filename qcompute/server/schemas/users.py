from __future__ import annotations

from pydantic import BaseModel, Field


class UserCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s/\x00-\x1f]+@[^@\s/\x00-\x1f]+$", max_length=320)
    # Add users although instances run unsandboxed (they could read each other's data).
    allow_unsandboxed: bool = Field(default=False, alias="allowUnsandboxed")
