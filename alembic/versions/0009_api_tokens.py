"""API tokens: api_tokens (a name, a scope, the SHA-256 of the secret), api_sessions (the
dashboard's sign-ins), and runs.submitted_by (the token's name, or "local")

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # earlier runs keep null: nobody recorded who submitted them
    op.add_column("runs", sa.Column("submitted_by", sa.String(length=100), nullable=True))
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_api_tokens_name")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_api_tokens_secret_sha256")),
    )
    op.create_table(
        "api_sessions",
        sa.Column("id_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["api_tokens.id"], name=op.f("fk_api_sessions_token_id_api_tokens"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id_sha256", name=op.f("pk_api_sessions")),
    )
    op.create_index(op.f("ix_api_sessions_token_id"), "api_sessions", ["token_id"], unique=False)
    op.create_index(op.f("ix_api_sessions_expires_at"), "api_sessions", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_api_sessions_expires_at"), table_name="api_sessions")
    op.drop_index(op.f("ix_api_sessions_token_id"), table_name="api_sessions")
    op.drop_table("api_sessions")
    op.drop_table("api_tokens")
    with op.batch_alter_table("runs") as batch:  # SQLite drops a column by copying the table
        batch.drop_column("submitted_by")
