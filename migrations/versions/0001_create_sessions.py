"""Create the sessions table.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    table_name = context.config.attributes["table_name"]
    op.create_table(
        table_name,
        sa.Column("session_id", sa.String(255), primary_key=True),
        sa.Column("user_agent", sa.String(512), nullable=False, server_default=""),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("view_sequence", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("event_sequence", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index(f"ix_{table_name}_expires_at", table_name, ["expires_at"])


def downgrade() -> None:
    table_name = context.config.attributes["table_name"]
    op.drop_index(f"ix_{table_name}_expires_at", table_name=table_name)
    op.drop_table(table_name)
