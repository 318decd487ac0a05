"""idempotent submits and contained cleanups: idempotency_keys (a submit's Idempotency-Key, per
submitter, with the SHA-256 of its spec and the run it made) and instances.cleanup_gave_up_at
(an ended run's cleanup gave up terminating it: the orphan sweep takes it over)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("submitter", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_idempotency_keys_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("submitter", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False)
    op.add_column("instances", sa.Column("cleanup_gave_up_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("cleanup_gave_up_at")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
