"""an ending written before it is carried out, and boot evidence kept: runs.ending_status,
ending_reason, ending_at (how the run ends, decided before its instances are terminated, so a
worker that takes over finishes the same ending); instances.booting_seen_at (the last time the
provider showed the instance booting: billing cannot have started before it)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ending_status", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("ending_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ending_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("booting_seen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("booting_seen_at")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("ending_at")
        batch_op.drop_column("ending_reason")
        batch_op.drop_column("ending_status")
