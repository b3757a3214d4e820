"""SQL tables. Every task query is filtered by owner; instances carry the real states."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy import UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive, always UTC


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    bucket_prefix: Mapped[str] = mapped_column(String(64), default="")  # "" = any bucket name
    is_owner: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)  # submission order; the paging cursor
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    shortname: Mapped[str] = mapped_column(String(512))
    profile: Mapped[Optional[str]] = mapped_column(String(128))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)  # the submitted document, echoed back
    instance_count: Mapped[int] = mapped_column(Integer)
    # Derived from the instances by services.lifecycle.derive_task_state, stored for listing.
    state: Mapped[str] = mapped_column(String(32), index=True)
    previous_state: Mapped[Optional[str]] = mapped_column(String(32))
    state_transition_time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    previous_state_transition_time: Mapped[Optional[datetime]] = mapped_column(DateTime)
    # How many instances are in each state: kept in step by services.tasks.move_instance, so
    # that deriving the task's state costs the same for 1 instance or 100,000.
    instance_counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    abort_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    results_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[Optional[datetime]] = mapped_column(DateTime)

    tags: Mapped[list["TaskTag"]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="TaskTag.position")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        UniqueConstraint("task_id", "instance_id"),
        Index("ix_instances_state_id", "state", "id"),  # the dispatch query: oldest queued first
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int] = mapped_column(Integer)  # 0..N-1, or a value of advancedRanges
    rank: Mapped[int] = mapped_column(Integer)  # position in the task, 0..N-1 (QRANK)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # executions started
    infra_failures: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[Optional[int]] = mapped_column(Integer)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    ended_at: Mapped[Optional[datetime]] = mapped_column(DateTime)
    exec_time_sec: Mapped[float] = mapped_column(Float, default=0.0)
    wall_time_sec: Mapped[float] = mapped_column(Float, default=0.0)
    peak_memory_mb: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[Optional[str]] = mapped_column(Text)


class TaskTag(Base):
    __tablename__ = "task_tags"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(512))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class OutputCursor(Base):
    """Where the last fresh_stdout / fresh_stderr read stopped (logical byte offset)."""

    __tablename__ = "output_cursors"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1: the whole task
    stream: Mapped[str] = mapped_column(String(8), primary_key=True)
    offset: Mapped[int] = mapped_column(Integer, default=0)
