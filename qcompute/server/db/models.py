"""SQL tables. Every task query is filtered by owner; instances carry the real states."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer,
                        String, Text)
from sqlalchemy import UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # stored naive, always UTC


class Base(DeclarativeBase):
    pass


class Lifecycle:
    """The state columns of tasks, pools and jobs, and the one way their state changes."""

    state: Mapped[str] = mapped_column(String(32), index=True)
    previous_state: Mapped[Optional[str]] = mapped_column(String(32))
    state_transition_time: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    previous_state_transition_time: Mapped[Optional[datetime]] = mapped_column(DateTime)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[Optional[datetime]] = mapped_column(DateTime)

    def move_to(self, state: str, now: datetime, *, final: bool) -> bool:
        """Enter ``state`` (keeping the previous one); ``final`` sets the end date. True if
        the state changed."""
        self.updated_at = now
        if state == self.state:
            return False
        self.previous_state, self.previous_state_transition_time = (self.state,
                                                                    self.state_transition_time)
        self.state, self.state_transition_time = state, now
        if final:
            self.ended_at = now
        return True


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    # The token itself, sealed (crypto.py): the runners sign S3 with it, and tasks that export
    # their credentials get it. None for an account made before 0004 until it authenticates.
    sealed_token: Mapped[Optional[str]] = mapped_column(Text)
    bucket_prefix: Mapped[str] = mapped_column(String(64), default="")  # "" = any bucket name
    # The user's key pair on an external S3 store that issued it (IAM), the secret sealed; None
    # where the keys are the e-mail and token (embedded) or the operator's file.
    s3_access_key: Mapped[Optional[str]] = mapped_column(String(128))
    sealed_s3_secret: Mapped[Optional[str]] = mapped_column(Text)
    is_owner: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Task(Lifecycle, Base):
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
    # How many instances are in each state: kept in step by services.tasks.move_instance, so
    # that deriving the task's state costs the same for 1 instance or 100,000. Nullable as
    # migration 0002 made it (a task of no instance had no row to count); read as ``or {}``.
    instance_counts: Mapped[Optional[dict[str, int]]] = mapped_column(JSON, default=dict)
    abort_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    results_count: Mapped[int] = mapped_column(Integer, default=0)
    pool_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), index=True)
    job_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    # Parents not yet final (dependencies): the task's instances are not dispatched above 0.
    waiting_on: Mapped[int] = mapped_column(Integer, default=0)
    retries_used: Mapped[int] = mapped_column(Integer, default=0)  # maxTotalRetries budget
    resources_version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by PATCH
    # The periodic snapshot's interval (its config: the Snapshot row with periodic=True), and
    # the last keys snapshots uploaded (a short list, newest last): shown in the task JSON.
    snapshot_interval_sec: Mapped[int] = mapped_column(Integer, default=0)
    snapshot_results: Mapped[Optional[list[str]]] = mapped_column(JSON)
    # Timers the scheduler's tick acts on (indexed: the tick costs what is due, not the table).
    queue_deadline: Mapped[Optional[datetime]] = mapped_column(DateTime, index=True)
    delete_after: Mapped[Optional[datetime]] = mapped_column(DateTime, index=True)

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
    app_failures: Mapped[int] = mapped_column(Integer, default=0)  # maxPerInstanceRetries budget
    # The current attempt's steps, in epoch seconds (services/timeline.py): written with the
    # dispatch and with the end, never read by the scheduler (deferred: loaded only on request).
    timeline: Mapped[Optional[dict[str, float]]] = mapped_column(JSON, deferred=True)
    # Where the current attempt runs or ran: {"id", "hostname"} of its node (executors that
    # span several nodes say so with a Placed event; None elsewhere)
    node: Mapped[Optional[dict[str, str]]] = mapped_column(JSON)


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
    # While its request runs, the key is claimed: a random token of that request, and no
    # response yet (status 0). None once the response is stored, with the work, in one commit.
    claim: Mapped[Optional[str]] = mapped_column(String(32))


class OutputCursor(Base):
    """Where the last fresh_stdout / fresh_stderr read stopped (logical byte offset)."""

    __tablename__ = "output_cursors"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1: the whole task
    stream: Mapped[str] = mapped_column(String(8), primary_key=True)
    offset: Mapped[int] = mapped_column(Integer, default=0)


class TaskDependency(Base):
    """``dependsOn`` / ``advancedDependsOn``: the child waits until the parent is final."""

    __tablename__ = "task_dependencies"

    task_id: Mapped[int] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    parent_uuid: Mapped[str] = mapped_column(String(36), primary_key=True, index=True)
    conditions: Mapped[list[str]] = mapped_column(JSON, default=list)  # success/failure/cancelled
    actual_final_state: Mapped[Optional[str]] = mapped_column(String(32))


class Pool(Lifecycle, Base):
    __tablename__ = "pools"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    shortname: Mapped[str] = mapped_column(String(512))
    profile: Mapped[str] = mapped_column(String(128))
    document: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted (and PUT), echoed back
    close_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    slot_target: Mapped[int] = mapped_column(Integer, default=0)  # slots wanted now
    resized_at: Mapped[Optional[datetime]] = mapped_column(DateTime)  # elastic: last resize
    resources_version: Mapped[int] = mapped_column(Integer, default=0)  # bumped by PATCH
    delete_after: Mapped[Optional[datetime]] = mapped_column(DateTime, index=True)

    tags: Mapped[list["PoolTag"]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="PoolTag.position")


class PoolSlot(Base):
    """One executor slot an open pool holds. Its preparation task runs on it before any task."""

    __tablename__ = "pool_slots"
    __table_args__ = (UniqueConstraint("pool_id", "slot"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), index=True)
    slot: Mapped[int] = mapped_column(Integer)  # 0..n-1 within the pool
    state: Mapped[str] = mapped_column(String(16))  # Preparing, Ready, Failed
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # preparation runs started
    exit_code: Mapped[Optional[int]] = mapped_column(Integer)
    error: Mapped[Optional[str]] = mapped_column(Text)
    idle_since: Mapped[Optional[datetime]] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PoolOutputCursor(Base):
    """Where the last fresh read of a pool's stdout / stderr stopped (see OutputCursor)."""

    __tablename__ = "pool_output_cursors"

    pool_id: Mapped[int] = mapped_column(
        ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True)
    instance_id: Mapped[int] = mapped_column(Integer, primary_key=True)  # -1: the whole pool
    stream: Mapped[str] = mapped_column(String(8), primary_key=True)
    offset: Mapped[int] = mapped_column(Integer, default=0)


class PoolTag(Base):
    __tablename__ = "pool_tags"

    pool_id: Mapped[int] = mapped_column(
        ForeignKey("pools.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Job(Lifecycle, Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(512))
    shortname: Mapped[str] = mapped_column(String(512))
    pool_id: Mapped[Optional[int]] = mapped_column(
        ForeignKey("pools.id", ondelete="SET NULL"), index=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    use_dependencies: Mapped[bool] = mapped_column(Boolean, default=False)
    wall_deadline: Mapped[Optional[datetime]] = mapped_column(DateTime, index=True)
    delete_after: Mapped[Optional[datetime]] = mapped_column(DateTime, index=True)

    tags: Mapped[list["JobTag"]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="JobTag.position")


class JobTag(Base):
    __tablename__ = "job_tags"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(256), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class Secret(Base):
    """A user's secret (``/secrets-manager``). Keys are paths: ``db/password``."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("owner_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(1024))
    value: Mapped[str] = mapped_column(Text)  # sealed (crypto.py)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Snapshot(Base):
    """One snapshot of a running task's results: instant, or one round of a periodic one."""

    __tablename__ = "snapshots"

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)  # the wire ``id``
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    periodic: Mapped[bool] = mapped_column(Boolean, default=False)
    interval_sec: Mapped[int] = mapped_column(Integer, default=0)  # periodic only
    # {"whitelist", "blacklist", "bucket", "bucketPrefix"}, defaults resolved at creation
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))  # Triggered, InProgress, Success, Failure
    pending: Mapped[int] = mapped_column(Integer, default=0)  # instances still uploading it
    size_to_upload: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes
    transferred_size: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[Optional[str]] = mapped_column(Text)  # why it failed (the first error)
    trigger_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_update_date: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
