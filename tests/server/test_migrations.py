"""Alembic migrations: a database made by an older revision upgrades with its data intact, on
SQLite and on PostgreSQL (each test gets an empty database of either)."""
from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from cryptography.fernet import Fernet

from qcompute.server.crypto import Sealer
from qcompute.server.db import make_engine, migrate
from qcompute.server.db.models import Base
from qcompute.server.db.session import _MIGRATIONS

from .conftest import BACKENDS


@pytest.fixture(params=BACKENDS)
def empty_url(request, tmp_path) -> str:
    """An empty database: a SQLite file, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("postgres").create_database()


def _upgrade_to(engine, revision: str, sealer=None, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["sealer"] = sealer
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def _old_task(db, instance_count: int, state: str) -> None:
    """User 1 and its task 1 (uuid ``u``), as the early schema stores them."""
    db.execute(sa.text("INSERT INTO users (id, email, token_hash, bucket_prefix, is_owner, "
                       "created_at) VALUES (1, 'a@b.c', 'h', '', :yes, '2026-01-01')"),
               {"yes": True})
    db.execute(sa.text(
        "INSERT INTO tasks (id, uuid, owner_id, name, shortname, document, instance_count, "
        "state, state_transition_time, abort_requested, errors, results_count, created_at, "
        "updated_at) VALUES (1, 'u', 1, 't', 't', '{}', :count, :state, '2026-01-01', :no, "
        "'[]', 0, '2026-01-01', '2026-01-01')"),
        {"count": instance_count, "state": state, "no": False})


def test_0002_backfills_instance_counts(empty_url):
    engine = make_engine(empty_url)
    _upgrade_to(engine, "0001")
    with engine.begin() as db:
        _old_task(db, 3, "PartiallyExecuting")
        for iid, state in enumerate(["Success", "Running", "Running"]):
            db.execute(sa.text(
                "INSERT INTO instances (task_id, instance_id, rank, state, attempt, "
                "infra_failures, exec_time_sec, wall_time_sec, peak_memory_mb) "
                "VALUES (1, :iid, :iid, :state, 1, 0, 0, 0, 0)"), {"iid": iid, "state": state})
    migrate(engine, Sealer(Fernet.generate_key()))  # to head
    with engine.connect() as db:
        counts = db.execute(sa.text("SELECT instance_counts FROM tasks WHERE id = 1")).scalar()
        version = db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        # 0003 added columns with server defaults: old rows read as "no pool, no job, no wait"
        pool, job, waiting = db.execute(sa.text(
            "SELECT pool_id, job_id, waiting_on FROM tasks WHERE id = 1")).one()
    counts = json.loads(counts) if isinstance(counts, str) else counts  # PostgreSQL: parsed
    assert counts == {"Success": 1, "Running": 2}
    assert (pool, job, waiting) == (None, None, 0)
    assert version == "0008"


# -- 0004: secrets and tokens sealed --------------------------------------------------------------

SECRET = "clear-secret-value-0004"


def _on_disk(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def _clear_0003(url: str) -> tuple:
    """A database at 0003 holding a secret and exported tokens in clear: alice's current
    token (twice), and bob's old one (he rotated since)."""
    engine = make_engine(url)
    _upgrade_to(engine, "0003")
    alice, bob, bob_old = (secrets.token_hex(24) for _ in range(3))
    with engine.begin() as db:
        for uid, token in ((1, alice), (2, bob)):
            db.execute(sa.text(
                "INSERT INTO users (id, email, token_hash, bucket_prefix, is_owner, created_at) "
                "VALUES (:id, :email, :hash, '', :no, '2026-01-01')"),
                {"id": uid, "email": f"u{uid}@x.org", "no": False,
                 "hash": hashlib.sha256(token.encode()).hexdigest()})
        db.execute(sa.text("INSERT INTO secrets (owner_id, key, value, created_at, updated_at) "
                           "VALUES (1, 'db/password', :v, '2026-01-01', '2026-01-01')"),
                   {"v": SECRET})
        for tid, owner, token in ((1, 1, alice), (2, 1, alice), (3, 2, bob_old)):
            db.execute(sa.text(
                "INSERT INTO tasks (id, uuid, owner_id, name, shortname, document, "
                "instance_count, state, state_transition_time, abort_requested, errors, "
                "results_count, created_at, updated_at, exported_token) VALUES (:id, :uuid, "
                ":owner, 't', 't', '{}', 1, 'Submitted', '2026-01-01', :no, '[]', 0, "
                "'2026-01-01', '2026-01-01', :token)"),
                {"id": tid, "uuid": f"u{tid}", "owner": owner, "token": token, "no": False})
            db.execute(sa.text("INSERT INTO instances (task_id, instance_id, rank, state, "
                               "attempt, infra_failures, exec_time_sec, wall_time_sec, "
                               "peak_memory_mb) VALUES (:id, 0, 0, 'Queued', 0, 0, 0, 0, 0)"),
                       {"id": tid})
    return engine, alice, bob_old


def test_0004_seals_clear_values(empty_url):
    engine, alice, _ = _clear_0003(empty_url)
    sealer = Sealer(Fernet.generate_key())
    migrate(engine, sealer)
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0008"
        value = db.execute(sa.text("SELECT value FROM secrets")).scalar()
        tokens = dict(db.execute(sa.text("SELECT id, sealed_token FROM users")).all())
        columns = {c["name"] for c in sa.inspect(db).get_columns("tasks")}
        instances = db.execute(sa.text("SELECT COUNT(*) FROM instances")).scalar()
    assert value != SECRET and sealer.open(value) == SECRET
    assert sealer.open(tokens[1]) == alice and tokens[2] is None  # bob's token was stale
    assert "exported_token" not in columns and instances == 3  # no cascade from the drop
    engine.dispose()


def test_0004_leaves_no_clear_value_in_the_sqlite_file(tmp_path):
    path = tmp_path / "old.db"
    engine, alice, bob_old = _clear_0003(f"sqlite:///{path}")
    before = _on_disk(path)
    assert SECRET.encode() in before and alice.encode() in before and bob_old.encode() in before
    migrate(engine, Sealer(Fernet.generate_key()))
    engine.dispose()
    after = _on_disk(path)
    for clear in (SECRET, alice, bob_old):
        assert clear.encode() not in after, clear
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_0004_needs_the_key_and_changes_nothing_without_it(empty_url):
    engine, _, _ = _clear_0003(empty_url)
    with pytest.raises(RuntimeError, match="needs the server's key"):
        _upgrade_to(engine, "head")
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0003"
        assert db.execute(sa.text("SELECT value FROM secrets")).scalar() == SECRET
        assert "sealed_token" not in {c["name"] for c in sa.inspect(db).get_columns("users")}


def test_0004_downgrade_opens_the_values_again(empty_url):
    engine, _, _ = _clear_0003(empty_url)
    sealer = Sealer(Fernet.generate_key())
    migrate(engine, sealer)
    _upgrade_to(engine, "0003", sealer, down=True)
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT value FROM secrets")).scalar() == SECRET
        assert "exported_token" in {c["name"] for c in sa.inspect(db).get_columns("tasks")}
        assert "sealed_token" not in {c["name"] for c in sa.inspect(db).get_columns("users")}


# -- 0006: instances.timeline ----------------------------------------------------------------------

def test_0006_adds_an_empty_timeline_and_drops_it_on_downgrade(empty_url):
    engine = make_engine(empty_url)
    sealer = Sealer(Fernet.generate_key())
    _upgrade_to(engine, "0005", sealer)
    with engine.begin() as db:
        _old_task(db, 1, "Success")
        db.execute(sa.text("INSERT INTO instances (task_id, instance_id, rank, state, attempt, "
                           "infra_failures, exec_time_sec, wall_time_sec, peak_memory_mb) "
                           "VALUES (1, 0, 0, 'Success', 1, 0, 0.5, 0, 0)"))
    migrate(engine, sealer)
    with engine.connect() as db:
        row = db.execute(sa.text("SELECT state, exec_time_sec, timeline FROM instances")).one()
    assert tuple(row) == ("Success", 0.5, None)  # an old row: no timeline, nothing else lost
    _upgrade_to(engine, "0005", sealer, down=True)
    with engine.connect() as db:
        assert "timeline" not in {c["name"] for c in sa.inspect(db).get_columns("instances")}
        assert db.execute(sa.text("SELECT state FROM instances")).scalar() == "Success"


# -- 0007: instances.node --------------------------------------------------------------------------

def test_0007_adds_an_empty_node_and_drops_it_on_downgrade(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    sealer = Sealer(Fernet.generate_key())
    _upgrade_to(engine, "0006", sealer)
    with engine.begin() as db:
        _old_task(db, 1, "Success")
        db.execute(sa.text("INSERT INTO instances (task_id, instance_id, rank, state, attempt, "
                           "infra_failures, exec_time_sec, wall_time_sec, peak_memory_mb) "
                           "VALUES (1, 0, 0, 'Success', 1, 0, 0.5, 0, 0)"))
    migrate(engine, sealer)
    with engine.connect() as db:
        row = db.execute(sa.text("SELECT state, exec_time_sec, node FROM instances")).one()
    assert tuple(row) == ("Success", 0.5, None)  # an old row: no node, nothing else lost
    _upgrade_to(engine, "0006", sealer, down=True)
    with engine.connect() as db:
        assert "node" not in {c["name"] for c in sa.inspect(db).get_columns("instances")}
        assert db.execute(sa.text("SELECT state FROM instances")).scalar() == "Success"


# -- 0008: users' keys on an external S3 store -----------------------------------------------------

def test_0008_adds_empty_s3_keys_and_drops_them_on_downgrade(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    sealer = Sealer(Fernet.generate_key())
    _upgrade_to(engine, "0007", sealer)
    with engine.begin() as db:
        db.execute(sa.text(
            "INSERT INTO users (id, email, token_hash, bucket_prefix, is_owner, created_at) "
            "VALUES (1, 'u1@x.org', 'h', 'u-1-', 0, '2026-01-01')"))
    migrate(engine, sealer)
    with engine.connect() as db:
        row = db.execute(sa.text(
            "SELECT email, bucket_prefix, s3_access_key, sealed_s3_secret FROM users")).one()
    assert tuple(row) == ("u1@x.org", "u-1-", None, None)  # an old user: keys by convention
    _upgrade_to(engine, "0007", sealer, down=True)
    with engine.connect() as db:
        columns = {c["name"] for c in sa.inspect(db).get_columns("users")}
        assert "s3_access_key" not in columns and "sealed_s3_secret" not in columns
        assert db.execute(sa.text("SELECT email FROM users")).scalar() == "u1@x.org"


# -- every revision --------------------------------------------------------------------------------

def test_the_newest_schema_is_the_models_and_goes_down_and_up_again(empty_url):
    """Head matches the ORM models (no difference for Alembic's autogenerate), and every
    downgrade and upgrade runs."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(empty_url)
    sealer = Sealer(Fernet.generate_key())
    migrate(engine, sealer)
    with engine.connect() as db:
        assert compare_metadata(MigrationContext.configure(db), Base.metadata) == []
    _upgrade_to(engine, "base", sealer, down=True)
    with engine.connect() as db:
        assert set(sa.inspect(db).get_table_names()) <= {"alembic_version"}
    migrate(engine, sealer)
    with engine.connect() as db:
        assert db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0008"
    engine.dispose()


@pytest.mark.postgres
def test_replicas_that_start_together_migrate_one_after_the_other(postgres):
    """Without the migration lock, two of three fail (the tables already exist)."""
    import threading

    url, sealer, errors = postgres.create_database(), Sealer(Fernet.generate_key()), []

    def start() -> None:
        engine = make_engine(url)
        try:
            migrate(engine, sealer)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        engine.dispose()

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
