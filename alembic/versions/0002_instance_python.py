"""instances.python: the bootstrapped interpreter on a node

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: an ALTER TABLE ADD COLUMN that SQLite and PostgreSQL both do in place
    op.add_column("instances", sa.Column("python", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("python")
