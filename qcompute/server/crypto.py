"""Secret values and API tokens sealed at rest, with one Fernet key (AES-128-CBC + HMAC-SHA256).

The key is ``settings.secrets_key_file`` when the operator names one (it must exist and hold a
valid key), else ``<data_dir>/secrets.key``, created on first start with mode 0600. A database
session carries the :class:`Sealer` in ``session.info`` (see ``db.make_session_factory``), so
services seal and open values with :func:`seal` / :func:`unseal`.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Optional

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select
from sqlalchemy.orm import Session

from .settings import ServerSettings

__all__ = ["Sealer", "SealError", "KeyFileError", "key_path", "load_sealer", "seal", "unseal",
           "check_key"]

log = logging.getLogger(__name__)

KEY_FILE_NAME = "secrets.key"


class SealError(Exception):
    """A sealed value is missing, or does not open with this key."""


class KeyFileError(RuntimeError):
    """The key file is missing, unreadable or invalid: the server does not start."""


class Sealer:
    """Seals text (the result is ASCII) and opens what it sealed."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)  # ValueError unless 32 url-safe base64-encoded bytes

    def seal(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except (InvalidToken, UnicodeError) as exc:
            raise SealError("a sealed value does not open with the server's key") from exc


def key_path(settings: ServerSettings) -> Path:
    return Path(settings.secrets_key_file or settings.data_dir / KEY_FILE_NAME)


def load_sealer(settings: ServerSettings) -> Sealer:
    """The sealer of the key file; the default one is created (mode 0600) if missing."""
    path, named = key_path(settings), bool(settings.secrets_key_file)
    if not named and not path.exists():
        _create_key(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        if path.stat().st_mode & 0o077:
            if named:
                log.warning("the secrets key file %s is readable by others: chmod 600 it", path)
            else:
                path.chmod(0o600)
        return Sealer(text.encode("ascii"))
    except FileNotFoundError:
        raise KeyFileError(f"the secrets key file {path} does not exist "
                           "(QCOMPUTE_SERVER_SECRETS_KEY_FILE)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read the secrets key file {path}: {exc.strerror}") from None
    except ValueError:
        raise KeyFileError(f"{path} does not hold a Fernet key (44 url-safe base64 characters, "
                           "from Fernet.generate_key())") from None


def _create_key(path: Path) -> None:
    """Write a new key atomically: a 0600 temporary file, then linked in place (O_EXCL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(Fernet.generate_key().decode("ascii") + "\n")
        os.link(tmp, path)
        log.info("created the secrets key %s", path)
    except FileExistsError:
        pass  # another start made it first: use theirs
    finally:
        tmp.unlink()


def _sealer(session: Session) -> Sealer:
    sealer = session.info.get("sealer")
    if sealer is None:
        raise RuntimeError("this database session has no sealer (make_session_factory)")
    return sealer


def seal(session: Session, text: str) -> str:
    return _sealer(session).seal(text)


def unseal(session: Session, sealed: Optional[str]) -> str:
    if sealed is None:
        raise SealError("no sealed value")
    return _sealer(session).open(sealed)


def check_key(session: Session, path: Path) -> None:
    """Refuse to start with a key that does not open what the database holds."""
    from .db.models import Secret, User  # noqa: PLC0415 (models are not needed to seal)

    sample = (session.scalar(select(User.sealed_token).where(User.sealed_token.is_not(None))
                             .limit(1))
              or session.scalar(select(Secret.value).limit(1)))
    if sample is None:
        return
    try:
        unseal(session, sample)
    except SealError:
        raise KeyFileError(f"the key in {path} does not open the secrets and tokens sealed in "
                           "the database: restore the key file it was sealed with") from None
