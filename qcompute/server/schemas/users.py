from __future__ import annotations

from pydantic import BaseModel, Field


class UserCreate(BaseModel):
    email: str = Field(pattern=r"^[^@\s/]+@[^@\s/]+$", max_length=320)
