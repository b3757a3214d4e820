"""idempotency_keys.claim: a key is taken before its request runs

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("claim", sa.String(32), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_keys WHERE claim IS NOT NULL")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("claim")
