"""checkpoints in the artifact store: checkpoint state, node path, stored time, one row per step;
the run's artifact folder

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 03:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifact_uri", sa.Text(), nullable=True))
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=20), nullable=False, server_default="on_node"))
        batch_op.add_column(sa.Column("node_path", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_checkpoints_run_id_step", ["run_id", "step"], unique=True)
    # the default was only for rows that existed before; the models set it on insert
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.alter_column("state", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_checkpoints_run_id_step")
        batch_op.drop_column("stored_at")
        batch_op.drop_column("node_path")
        batch_op.drop_column("state")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("artifact_uri")
