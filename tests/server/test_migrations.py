"""Alembic migrations: a database made by an older revision upgrades with its data intact."""
from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from qcompute.server.db import make_engine, migrate
from qcompute.server.db.session import _MIGRATIONS


def _upgrade_to(engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_0002_backfills_instance_counts(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    _upgrade_to(engine, "0001")
    with engine.begin() as db:
        db.execute(sa.text("INSERT INTO users (id, email, token_hash, bucket_prefix, is_owner, "
                           "created_at) VALUES (1, 'a@b.c', 'h', '', 1, '2026-01-01')"))
        db.execute(sa.text(
            "INSERT INTO tasks (id, uuid, owner_id, name, shortname, document, instance_count, "
            "state, state_transition_time, abort_requested, errors, results_count, created_at, "
            "updated_at) VALUES (1, 'u', 1, 't', 't', '{}', 3, 'PartiallyExecuting', "
            "'2026-01-01', 0, '[]', 0, '2026-01-01', '2026-01-01')"))
        for iid, state in enumerate(["Success", "Running", "Running"]):
            db.execute(sa.text(
                "INSERT INTO instances (task_id, instance_id, rank, state, attempt, "
                "infra_failures, exec_time_sec, wall_time_sec, peak_memory_mb) "
                "VALUES (1, :iid, :iid, :state, 1, 0, 0, 0, 0)"), {"iid": iid, "state": state})
    migrate(engine)  # to head
    with engine.connect() as db:
        counts = db.execute(sa.text("SELECT instance_counts FROM tasks WHERE id = 1")).scalar()
        version = db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        # 0003 added columns with server defaults: old rows read as "no pool, no job, no wait"
        pool, job, waiting = db.execute(sa.text(
            "SELECT pool_id, job_id, waiting_on FROM tasks WHERE id = 1")).one()
    assert json.loads(counts) == {"Success": 1, "Running": 2}
    assert (pool, job, waiting) == (None, None, 0)
    assert version == "0003"
