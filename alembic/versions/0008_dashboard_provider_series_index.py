"""dashboards: runs.provider (the spec's compute.provider, indexed, for the runs list's filter), an
index on metric_points (run_id, kind, id) for the series endpoint, and metric_rollups (the points
pre-aggregated per 32 steps, orchestrator.rollups), backfilled from the existing points

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: the series a metric_rollups row aggregates (min, max and non-null count of each)
_ROLLUP_SERIES = ("train_loss", "lr", "tokens_per_s", "val_loss")


def upgrade() -> None:
    op.add_column("runs", sa.Column("provider", sa.String(length=40), nullable=False, server_default="local"))
    # Backfill from the stored spec. The JSON path renders per dialect (JSON_EXTRACT on SQLite,
    # #>> on PostgreSQL); a spec without one (a hand-made row) keeps the default, as the spec's does.
    runs = sa.table("runs", sa.column("spec", sa.JSON()), sa.column("provider", sa.String(length=40)))
    provider = runs.c.spec[("compute", "provider")].as_string()
    op.execute(runs.update().where(provider.is_not(None)).values(provider=provider))
    op.create_index(op.f("ix_runs_provider"), "runs", ["provider"], unique=False)
    op.create_index("ix_metric_points_run_id_kind_id", "metric_points", ["run_id", "kind", "id"], unique=False)
    op.create_table(
        "metric_rollups",
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("bucket", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("min_step", sa.Integer(), nullable=False),
        sa.Column("max_step", sa.Integer(), nullable=False),
        sa.Column("min_tokens", sa.BigInteger(), nullable=False),
        sa.Column("max_tokens", sa.BigInteger(), nullable=False),
        sa.Column("min_time", sa.Float(), nullable=False),
        sa.Column("max_time", sa.Float(), nullable=False),
        sa.Column("min_id", sa.BigInteger(), nullable=False),
        sa.Column("max_id", sa.BigInteger(), nullable=False),
        *(
            column
            for name in _ROLLUP_SERIES
            for column in (
                sa.Column(f"{name}_min", sa.Float(), nullable=True),
                sa.Column(f"{name}_max", sa.Float(), nullable=True),
                sa.Column(f"{name}_n", sa.Integer(), nullable=False),
            )
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_metric_rollups_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "kind", "bucket", name=op.f("pk_metric_rollups")),
    )
    op.create_index(
        "ix_metric_rollups_run_id_kind_max_id", "metric_rollups", ["run_id", "kind", "max_id"], unique=False
    )
    # Backfill every run's points in one GROUP BY: the statement orchestrator.rollups.aggregate
    # builds, frozen here in SQL (a migration must not change with the code); `/` on integers
    # truncates on both SQLite and PostgreSQL, the bucket rule. 32 = ROLLUP_STEPS at this revision.
    values = ", ".join(f"min({n}), max({n}), count({n})" for n in _ROLLUP_SERIES)
    op.execute(
        "INSERT INTO metric_rollups (run_id, kind, bucket, points, min_step, max_step, min_tokens, max_tokens, "
        "min_time, max_time, min_id, max_id, "
        + ", ".join(f"{n}_min, {n}_max, {n}_n" for n in _ROLLUP_SERIES)
        + ") SELECT run_id, kind, step / 32, count(*), min(step), max(step), min(tokens), max(tokens), "
        f"min(time), max(time), min(id), max(id), {values} FROM metric_points GROUP BY run_id, kind, step / 32"
    )


def downgrade() -> None:
    op.drop_index("ix_metric_rollups_run_id_kind_max_id", table_name="metric_rollups")
    op.drop_table("metric_rollups")
    op.drop_index("ix_metric_points_run_id_kind_id", table_name="metric_points")
    op.drop_index(op.f("ix_runs_provider"), table_name="runs")
    with op.batch_alter_table("runs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("provider")
