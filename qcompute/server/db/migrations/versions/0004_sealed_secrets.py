"""secrets and tokens sealed at rest: users.sealed_token added, secrets.value sealed,
tasks.exported_token dropped (its tokens fill their owners' sealed_token where the hash matches)

The key comes from ``qcompute.server.db.migrate(engine, sealer)`` (``config.attributes``). When
clear values were sealed, ``migrate`` rebuilds a SQLite file (VACUUM) afterwards.

Revision ID: 0004
Revises: 0003
"""
import hashlib

import sqlalchemy as sa
from alembic import context, op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _sealer():
    sealer = context.config.attributes.get("sealer")
    if sealer is None:
        raise RuntimeError("migration 0004 seals secrets and tokens and needs the server's key: "
                           "run it through qcompute.server.db.migrate(engine, sealer) (the "
                           "server does at start), not the alembic command")
    return sealer


def _can_drop_column(db) -> bool:
    return db.dialect.name != "sqlite" or db.dialect.dbapi.sqlite_version_info >= (3, 35)


def upgrade() -> None:
    sealer = _sealer()
    db = op.get_bind()
    op.add_column("users", sa.Column("sealed_token", sa.Text(), nullable=True))
    rows = db.execute(sa.text("SELECT id, value FROM secrets")).all()
    for row_id, value in rows:
        db.execute(sa.text("UPDATE secrets SET value = :value WHERE id = :id"),
                   {"value": sealer.seal(value), "id": row_id})
    exported = db.execute(sa.text(
        "SELECT t.exported_token, u.id, u.token_hash FROM tasks t JOIN users u "
        "ON u.id = t.owner_id WHERE t.exported_token IS NOT NULL")).all()
    sealed: set[int] = set()
    for token, user_id, token_hash in exported:  # a token that matches the hash is current
        if user_id not in sealed and hashlib.sha256(token.encode()).hexdigest() == token_hash:
            db.execute(sa.text("UPDATE users SET sealed_token = :sealed WHERE id = :id"),
                       {"sealed": sealer.seal(token), "id": user_id})
            sealed.add(user_id)
    if _can_drop_column(db):  # natively: a rebuilt table would cascade-delete its children
        op.drop_column("tasks", "exported_token")
    else:
        db.execute(sa.text("UPDATE tasks SET exported_token = NULL"))  # unmapped from now on
    if rows or exported:
        context.config.attributes["sealed_clear_values"] = True


def downgrade() -> None:
    sealer = _sealer()
    db = op.get_bind()
    if "exported_token" not in {c["name"] for c in sa.inspect(db).get_columns("tasks")}:
        op.add_column("tasks", sa.Column("exported_token", sa.String(length=256), nullable=True))
    for row_id, value in db.execute(sa.text("SELECT id, value FROM secrets")).all():
        db.execute(sa.text("UPDATE secrets SET value = :value WHERE id = :id"),
                   {"value": sealer.open(value), "id": row_id})
    if _can_drop_column(db):
        op.drop_column("users", "sealed_token")
    else:
        db.execute(sa.text("UPDATE users SET sealed_token = NULL"))
