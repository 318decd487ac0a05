"""honest test losses and kept IFT weights: evaluations.window and evaluations.precision (what a
test loss was measured with), checkpoints.kind ("train", or "ift" for the instruction-fine-tuned
weights), one checkpoint row per (run, kind, step)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier test losses keep null: the window and precision they were measured with were not
    # recorded (the model's context, and bf16 on a GPU), so null says "unknown", not a guess.
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("window", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("precision", sa.String(length=10), nullable=True))
    # every checkpoint so far was committed by a training
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=20), nullable=False, server_default="train"))
        batch_op.drop_index("ix_checkpoints_run_id_step")
        batch_op.create_index("ix_checkpoints_run_id_kind_step", ["run_id", "kind", "step"], unique=True)


def downgrade() -> None:
    # the IFT checkpoints' rows go (their weights stay in the store): 0010 has one row per step
    op.execute("DELETE FROM checkpoints WHERE kind <> 'train'")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index("ix_checkpoints_run_id_kind_step")
        batch_op.create_index("ix_checkpoints_run_id_step", ["run_id", "step"], unique=True)
        batch_op.drop_column("kind")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_column("precision")
        batch_op.drop_column("window")
