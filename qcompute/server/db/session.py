"""Engine and session factories; schema migrations with Alembic."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from ..crypto import Sealer

_MIGRATIONS = Path(__file__).parent / "migrations"


_READS = ("SELECT", "PRAGMA", "EXPLAIN")
_MIGRATION_LOCK = int.from_bytes(b"qcmigrat", "big")  # a PostgreSQL advisory lock key


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_transactions(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_transactions(engine: Engine) -> None:
    """SQLAlchemy's pysqlite recipe ("Serializable isolation / Savepoints / Transactional
    DDL"): sqlite3 itself never begins a transaction (``isolation_level = None``); we do.

    Left to sqlite3, a SAVEPOINT opened before the first INSERT begins a transaction of its own
    and its RELEASE commits it: ``begin_nested()`` then commits item by item. Here the
    transaction begins with ``BEGIN IMMEDIATE`` right before its first write (or SAVEPOINT), so
    everything it writes commits or rolls back as one. The recipe's plain ``BEGIN`` at the
    transaction's start would fail at once ("database is locked") whenever a transaction that
    has read tries to write after another writer: IMMEDIATE takes the write lock up front,
    waiting for it (``timeout``), and reads before the first write still never block. (A
    connection that served AUTOCOMMIT comes back with sqlite3's control on again; it does no
    harm: our BEGIN comes first, and sqlite3 begins nothing inside a transaction.)
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # WAL: readers never block the writer
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "before_cursor_execute")
    def _begin_before_first_write(conn, cursor, statement, _params, _context, _many):
        dbapi_conn = cursor.connection
        if (dbapi_conn.in_transaction or statement.lstrip()[:7].upper().startswith(_READS)
                or conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"):
            return
        dbapi_conn.execute("BEGIN IMMEDIATE")


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
        if connection.dialect.name == "postgresql":  # replicas starting at once: one by one
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    if config.attributes.get("sealed_clear_values") and engine.dialect.name == "sqlite":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM")
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # no copy in the WAL
