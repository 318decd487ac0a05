"""comparison requests: the runs and baselines a user asked to compare, their status and lease,
and the judge report they led to

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "comparison_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("report_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_token", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["report_id"],
            ["comparisons.id"],
            name=op.f("fk_comparison_requests_report_id_comparisons"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparison_requests")),
    )
    with op.batch_alter_table("comparison_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_comparison_requests_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_comparison_requests_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("comparison_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_comparison_requests_status"))
        batch_op.drop_index(batch_op.f("ix_comparison_requests_created_at"))
    op.drop_table("comparison_requests")
