"""tasks.instance_counts: per-state instance counts, so task state derivation is O(1)

Revision ID: 0002
Revises: 0001
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("instance_counts", sa.JSON(), nullable=True))
    connection = op.get_bind()
    counts: dict[int, dict[str, int]] = {}
    rows = connection.execute(sa.text(
        "SELECT task_id, state, COUNT(*) FROM instances GROUP BY task_id, state"))
    for task_id, state, number in rows:
        counts.setdefault(task_id, {})[state] = number
    for task_id, per_state in counts.items():
        connection.execute(sa.text("UPDATE tasks SET instance_counts = :counts WHERE id = :id"),
                           {"counts": json.dumps(per_state), "id": task_id})


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("instance_counts")
