"""plans, budgets, orphans: throughput records, the trainer's start line and a graceful-stop
request on runs, run purpose (train | probe), orphan instances, cost entries without a run

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 20:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("purpose", sa.String(length=20), nullable=False, server_default="train"))
    op.add_column("runs", sa.Column("trainer_start", sa.JSON(), nullable=True))
    op.add_column("runs", sa.Column("stop_requested_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("stop_reason", sa.Text(), nullable=True))
    # an orphan instance of a run the database does not know is booked with no run
    with op.batch_alter_table("cost_entries") as batch:  # SQLite alters a column by copying the table
        batch.alter_column("run_id", existing_type=sa.String(length=32), nullable=True)
    op.create_table(
        "throughput_records",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("instance_type", sa.String(length=100), nullable=False),
        sa.Column("gpu", sa.String(length=100), nullable=True),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("gpus_per_node", sa.Integer(), nullable=False),
        sa.Column("shape_key", sa.String(length=64), nullable=False),
        sa.Column("preset", sa.String(length=40), nullable=False),
        sa.Column("overrides", sa.JSON(), nullable=False),
        sa.Column("seq_len", sa.Integer(), nullable=False),
        sa.Column("precision", sa.String(length=20), nullable=False),
        sa.Column("micro_batch", sa.Integer(), nullable=False),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("flops_per_token", sa.Float(), nullable=True),
        sa.Column("tokens_per_s", sa.Float(), nullable=False),
        sa.Column("mfu", sa.Float(), nullable=True),
        sa.Column("launch_to_first_step_s", sa.Float(), nullable=True),
        sa.Column("eval_s", sa.Float(), nullable=True),
        sa.Column("tokens_trained", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_throughput_records_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_throughput_records")),
        sa.UniqueConstraint("run_id", name=op.f("uq_throughput_records_run_id")),
    )
    op.create_index(
        "ix_throughput_records_type_shape", "throughput_records", ["instance_type", "shape_key"], unique=False
    )
    op.create_index(op.f("ix_throughput_records_created_at"), "throughput_records", ["created_at"], unique=False)
    op.create_table(
        "orphan_instances",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("provider_instance_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("instance_type", sa.String(length=100), nullable=False),
        sa.Column("region", sa.String(length=100), nullable=True),
        sa.Column("price_cents_per_hour", sa.Integer(), nullable=False),
        sa.Column("billing_minute_s", sa.Float(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("terminate_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("terminated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cost_entry_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["cost_entry_id"],
            ["cost_entries.id"],
            name=op.f("fk_orphan_instances_cost_entry_id_cost_entries"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_orphan_instances_run_id_runs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orphan_instances")),
    )
    op.create_index(
        "ix_orphan_instances_provider_instance",
        "orphan_instances",
        ["provider", "provider_instance_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_orphan_instances_provider_instance", table_name="orphan_instances")
    op.drop_table("orphan_instances")
    op.drop_index(op.f("ix_throughput_records_created_at"), table_name="throughput_records")
    op.drop_index("ix_throughput_records_type_shape", table_name="throughput_records")
    op.drop_table("throughput_records")
    op.execute("DELETE FROM cost_entries WHERE run_id IS NULL")
    with op.batch_alter_table("cost_entries") as batch:
        batch.alter_column("run_id", existing_type=sa.String(length=32), nullable=False)
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("stop_reason")
        batch.drop_column("stop_requested_at")
        batch.drop_column("trainer_start")
        batch.drop_column("purpose")
