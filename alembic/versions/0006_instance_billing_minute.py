"""instances.billing_minute_s: the provider's billing increment, frozen at launch like the price

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 17:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a server default fills the rows already there (every provider so far bills by the minute)
    op.add_column("instances", sa.Column("billing_minute_s", sa.Float(), nullable=False, server_default="60"))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("billing_minute_s")
