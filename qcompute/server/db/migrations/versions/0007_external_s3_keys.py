"""users.s3_access_key, users.sealed_s3_secret: keys an external S3 store issued (IAM)

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("s3_access_key", sa.String(128), nullable=True))
        batch.add_column(sa.Column("sealed_s3_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("sealed_s3_secret")
        batch.drop_column("s3_access_key")
