"""Engine and session factories; schema migrations with Alembic."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from ..crypto import Sealer

_MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # WAL: readers never block the writer
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_session_factory(engine: Engine, sealer: "Sealer") -> sessionmaker[Session]:
    """Sessions that carry ``sealer`` (``session.info``): secrets and tokens are sealed."""
    return sessionmaker(engine, expire_on_commit=False, info={"sealer": sealer})


def migrate(engine: Engine, sealer: "Sealer") -> None:
    """Bring the schema to the newest Alembic revision. Migrations that seal values get
    ``sealer`` (``config.attributes``); if one sealed values that were in clear, a SQLite file
    is rebuilt (VACUUM) so that the old pages holding them are gone."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["sealer"] = sealer
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    if config.attributes.get("sealed_clear_values") and engine.dialect.name == "sqlite":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM")
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # no copy in the WAL
