"""History, aggregates and the user_id index.

Adds ``<table>_history`` (sessions moved out of the live table by cleanup, same
columns), ``<table>_aggregates`` (what history retention keeps of the rows it
removes: additive counts per 15-minute UTC bucket) and an index on the live table's
``user_id`` (erasure). A populated table is upgraded in place: no row is touched.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

COUNTERS = ("sessions", "views", "events", "bounces", "identified", "revived")


def upgrade() -> None:
    table_name = context.config.attributes["table_name"]
    history = f"{table_name}_history"
    op.create_index(f"ix_{table_name}_user_id", table_name, ["user_id"])
    op.create_table(
        history,
        sa.Column("session_id", sa.String(255), nullable=False),
        sa.Column("user_agent", sa.String(512), nullable=False, server_default=""),
        sa.Column("client_ip", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(255), nullable=True),
        sa.Column("view_sequence", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("event_sequence", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("expires_at", "session_id", name=f"pk_{history}"),
        sqlite_with_rowid=False,
    )
    op.create_index(f"ix_{history}_session_id", history, ["session_id"])
    op.create_index(f"ix_{history}_user_id", history, ["user_id"])
    op.create_table(
        f"{table_name}_aggregates",
        sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
        *(
            sa.Column(counter, sa.BigInteger(), nullable=False, server_default="0")
            for counter in COUNTERS
        ),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    table_name = context.config.attributes["table_name"]
    history = f"{table_name}_history"
    op.drop_table(f"{table_name}_aggregates")
    op.drop_index(f"ix_{history}_user_id", table_name=history)
    op.drop_index(f"ix_{history}_session_id", table_name=history)
    op.drop_table(history)
    op.drop_index(f"ix_{table_name}_user_id", table_name=table_name)
