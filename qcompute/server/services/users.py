"""Users and their tokens. Tokens are random, shown once, and stored as SHA-256 hashes."""
from __future__ import annotations

import hashlib
import re
import secrets
from typing import Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.models import User
from ..errors import Conflict, NotFound, Unauthorized

__all__ = ["hash_token", "new_token", "authenticate", "create_user", "list_users",
           "rotate_token", "get_owner"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_hex(24)


def authenticate(session: Session, authorization: Optional[str]) -> User:
    """The user owning the token of an ``Authorization`` header (raw token, or ``Bearer x``)."""
    token = (authorization or "").strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token:
        raise Unauthorized("missing token: send it in the Authorization header")
    user = session.scalar(select(User).where(User.token_hash == hash_token(token)))
    if user is None:
        raise Unauthorized("invalid token", code="invalid_token")
    return user


def _bucket_prefix_for(session: Session, email: str) -> str:
    """A unique bucket-name prefix for a non-owner user, such as ``alice-3-``."""
    local = re.sub(r"[^a-z0-9]+", "-", email.split("@")[0].lower()).strip("-")[:20] or "user"
    number = (session.scalar(select(func.max(User.id))) or 0) + 1
    return f"{local}-{number}-"


def create_user(session: Session, email: str, *, owner: bool = False) -> tuple[User, str]:
    """Create a user; return it with its token (the only time the token is known)."""
    if session.scalar(select(User).where(User.email == email)) is not None:
        raise Conflict(f"user {email} already exists", code="user_exists")
    token = new_token()
    user = User(email=email, token_hash=hash_token(token), is_owner=owner,
                bucket_prefix="" if owner else _bucket_prefix_for(session, email))
    session.add(user)
    session.flush()
    return user, token


def rotate_token(session: Session, email: str) -> tuple[User, str]:
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        raise NotFound(f"no user {email}", code="user_not_found")
    token = new_token()
    user.token_hash = hash_token(token)
    session.flush()
    return user, token


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def get_owner(session: Session) -> Optional[User]:
    return session.scalar(select(User).where(User.is_owner.is_(True)).order_by(User.id))
