"""users.s3_access_key, users.sealed_s3_secret: keys an external S3 store issued (IAM)

Plain ADD/DROP COLUMN, never a rebuilt ``users`` table (its children reference it). An SQLite
older than 3.35 has no DROP COLUMN: the downgrade then empties the columns instead.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("s3_access_key", sa.String(128), nullable=True))
    op.add_column("users", sa.Column("sealed_s3_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    db = op.get_bind()
    if db.dialect.name != "sqlite" or db.dialect.dbapi.sqlite_version_info >= (3, 35):
        op.drop_column("users", "sealed_s3_secret")
        op.drop_column("users", "s3_access_key")
    else:
        db.execute(sa.text("UPDATE users SET s3_access_key = NULL, sealed_s3_secret = NULL"))
