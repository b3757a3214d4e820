"""Users and their tokens. Tokens are random and shown once. The database keeps a token's
SHA-256 hash, to authenticate, and the token sealed (``crypto.py``), for the runners' S3
identity and for tasks that export their credentials. An account made before tokens were
sealed gets its sealed token the first time it authenticates (:func:`remember_token`).

Bucket prefixes: the owner has none (any bucket name); every other user gets
``<slug>-<id>-``, where the slug is the e-mail's local part reduced to ``[a-z0-9]`` (no dash)
and ``id`` the user's row id (digits). The first dash ends the slug and the suffix holds no
dash, so no user's prefix can start with another's (``alice-1-`` vs ``alice1-5-``).

A removed user is not deleted: its row stays as a tombstone (e-mail ``removed/<id>/<email>``,
a token hash no token can have, the bucket prefix kept). Row ids and prefixes are therefore
never reused, so a later user can never reach a removed user's buckets. Tombstones are
invisible to every lookup here.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import delete, func, not_, select, update
from sqlalchemy.orm import Session

from qcompute.states import InstanceState as I
from qcompute.states import TaskState as T

from ..crypto import SealError, seal, unseal
from ..db.models import IdempotencyRecord, Instance, Job, Pool, PoolSlot, Secret, Task, User
from ..errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized

__all__ = ["hash_token", "new_token", "bare_token", "authenticate", "remember_token",
           "open_token", "TokenUnknown", "create_user", "list_users", "rotate_token",
           "get_owner", "find_user", "remove_user", "RemovedUser", "storage_keys",
           "set_storage_keys"]

_REMOVED = "removed/"  # tombstone mark; '/' cannot appear in a live user's e-mail
# What an S3 access key may hold (the embedded SeaweedFS uses the e-mail as access key).
_EMAIL = re.compile(r"[A-Za-z0-9._+=~-]+@[A-Za-z0-9.-]+", re.ASCII)
_SLUG_LENGTH = 20


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_hex(24)


def bare_token(authorization: Optional[str]) -> str:
    """The token of an ``Authorization`` header (raw token, or ``Bearer x``); "" if none."""
    token = (authorization or "").strip()
    return token[7:].strip() if token.lower().startswith("bearer ") else token


def authenticate(session: Session, authorization: Optional[str]) -> User:
    """The user owning the token of an ``Authorization`` header (raw token, or ``Bearer x``)."""
    token = bare_token(authorization)
    if not token:
        raise Unauthorized("missing token: send it in the Authorization header")
    # A tombstone's token_hash ("removed/<id>") is never the hex digest of a token.
    user = session.scalar(select(User).where(User.token_hash == hash_token(token)))
    if user is None:
        raise Unauthorized("invalid token", code="invalid_token")
    return user


def remember_token(session: Session, user: User, token: str) -> bool:
    """Seal the token of an account that has none yet (made before tokens were sealed), once:
    the write is conditional, so concurrent first requests store it once. True if it wrote."""
    if user.sealed_token is not None:
        return False
    written = session.execute(
        update(User).where(User.id == user.id, User.token_hash == hash_token(token),
                           User.sealed_token.is_(None))
        .values(sealed_token=seal(session, token)).execution_options(synchronize_session=False))
    session.refresh(user, ["sealed_token"])
    return written.rowcount == 1


class TokenUnknown(SealError):
    """The server does not hold a user's token: it cannot act as that user."""


def open_token(session: Session, user: User) -> str:
    """The user's current API token, opened from its sealed copy."""
    if user.sealed_token is None:
        raise TokenUnknown(
            f"the server does not know the API token of {user.email}: the account predates "
            "sealed tokens and has not called the API since the upgrade. Submit the task "
            f"again, or rotate the token (qcompute user rotate {user.email})")
    return unseal(session, user.sealed_token)


def storage_keys(session: Session, user: User) -> Optional[tuple[str, str]]:
    """The (access key, secret key) an external S3 store issued to ``user``, if any."""
    if user.s3_access_key is None or user.sealed_s3_secret is None:
        return None
    return user.s3_access_key, unseal(session, user.sealed_s3_secret)


def set_storage_keys(session: Session, user: User, keys: Optional[tuple[str, str]]) -> None:
    """Keep the key pair an external S3 store issued to ``user`` (None: forget it)."""
    user.s3_access_key = keys[0] if keys else None
    user.sealed_s3_secret = seal(session, keys[1]) if keys else None


def _live():
    return not_(User.email.startswith(_REMOVED))


def _slug(email: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", email.split("@")[0].lower())[:_SLUG_LENGTH] or "user"


def _clashes(session: Session, prefix: str, user_id: int) -> bool:
    """Whether ``prefix`` starts, or is the start of, the prefix of any user, removed or not
    (only possible with prefixes made by an older scheme)."""
    others = session.scalars(select(User.bucket_prefix).where(
        User.id != user_id, User.bucket_prefix != ""))
    return any(p.startswith(prefix) or prefix.startswith(p) for p in others)


def _assign_bucket_prefix(session: Session, user: User) -> None:
    """Give a flushed non-owner user the prefix ``<slug>-<id>-`` (see the module docstring)."""
    slug = _slug(user.email)
    prefix = f"{slug}-{user.id}-"
    for _ in range(5):
        if not _clashes(session, prefix, user.id):
            user.bucket_prefix = prefix
            return
        prefix = f"{slug}-{user.id}{secrets.token_hex(3)}-"  # still dash-free after the slug
    raise Conflict(f"no free bucket prefix for {user.email}", code="bucket_prefix_taken")


def find_user(session: Session, email: str) -> User:
    """The live user ``email``; NotFound otherwise."""
    user = session.scalar(select(User).where(User.email == email, _live()))
    if user is None:
        raise NotFound(f"no user {email}", code="user_not_found")
    return user


def create_user(session: Session, email: str, *, owner: bool = False) -> tuple[User, str]:
    """Create a user; return it with its token (the only time the token is known)."""
    if not _EMAIL.fullmatch(email):
        raise BadRequest(f"e-mail {email!r} may hold only letters, digits and ._+=~- before the "
                         "@ (it is the user's S3 access key)", code="invalid_user")
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise Conflict(f"user {email} already exists", code="user_exists")
    token = new_token()
    user = User(email=email, token_hash=hash_token(token), sealed_token=seal(session, token),
                is_owner=owner, bucket_prefix="")
    session.add(user)
    session.flush()  # the id makes the prefix
    if not owner:
        _assign_bucket_prefix(session, user)
        session.flush()
    return user, token


def rotate_token(session: Session, email: str) -> tuple[User, str]:
    """Give ``email`` a new token (the old one stops authenticating once committed)."""
    user = find_user(session, email)
    token = new_token()
    user.token_hash, user.sealed_token = hash_token(token), seal(session, token)
    session.flush()
    return user, token


@dataclass
class RemovedUser:
    """What :func:`remove_user` did, for the caller to finish after the commit."""

    email: str
    bucket_prefix: str
    task_uuids: list[str] = field(default_factory=list)
    active: list[tuple[str, int, int]] = field(default_factory=list)  # (task, instance, attempt)


def remove_user(session: Session, email: str, *, force: bool = False) -> RemovedUser:
    """Turn ``email`` into a tombstone and delete its tasks (flushed, not committed).

    The owner cannot be removed. A user with unfinished tasks is refused (409) unless
    ``force``: then those tasks are deleted too and the caller stops what still runs
    (``RemovedUser.active``). The user's buckets are left alone.
    """
    user = find_user(session, email)
    if user.is_owner:
        raise Forbidden(f"{email} is the cluster owner and cannot be removed",
                        code="owner_cannot_be_removed")
    tasks = list(session.scalars(select(Task).where(Task.owner_id == user.id)))
    final = {s.value for s in T if s.is_final()}
    unfinished = [t for t in tasks if t.state not in final]
    pools = session.scalar(select(func.count()).select_from(Pool).where(
        Pool.owner_id == user.id, Pool.state.not_in(["Closed", "Failure"])))
    if (unfinished or pools) and not force:
        raise Conflict(f"{email} has {len(unfinished)} unfinished task(s) and {pools} open "
                       "pool(s); wait for them, or remove the user with force to cancel them",
                       code="user_has_active_tasks")
    removed = RemovedUser(email=user.email, bucket_prefix=user.bucket_prefix,
                          task_uuids=[t.uuid for t in tasks])
    if tasks:
        by_id = {t.id: t.uuid for t in tasks}
        for instance in session.scalars(select(Instance).where(Instance.task_id.in_(by_id))):
            if I(instance.state).is_active():
                removed.active.append((by_id[instance.task_id], instance.instance_id,
                                       instance.attempt))
        session.execute(delete(Instance).where(Instance.task_id.in_(by_id)))
        for task in tasks:
            session.delete(task)  # tags with it; output cursors by ON DELETE CASCADE
    for slot, pool_uuid in session.execute(  # preparation runs still going
            select(PoolSlot, Pool.uuid).join(Pool, PoolSlot.pool_id == Pool.id)
            .where(Pool.owner_id == user.id, PoolSlot.state == "Preparing")):
        removed.active.append((pool_uuid, slot.slot, slot.attempt))
    for model in (Job, Pool, Secret):  # their slots, tags and cursors by ON DELETE CASCADE
        session.execute(delete(model).where(model.owner_id == user.id))
    session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id))
    user.email = f"{_REMOVED}{user.id}/{user.email}"[:320]
    user.token_hash, user.sealed_token = f"{_REMOVED}{user.id}", None
    set_storage_keys(session, user, None)
    session.flush()
    return removed


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).where(_live()).order_by(User.id)))


def get_owner(session: Session) -> Optional[User]:
    return session.scalar(select(User).where(User.is_owner.is_(True)).order_by(User.id))
