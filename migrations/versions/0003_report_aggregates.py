"""Aggregates of browser families and counter values.

Adds ``<table>_agg_browsers`` (sessions per 15-minute UTC bucket and browser family)
and ``<table>_agg_values`` (sessions per bucket, counter and value of views or
events), which history retention fills beside ``<table>_aggregates`` so that the
report's browser families, medians and maxima of past days survive the removal of
their rows. A populated database is upgraded in place: no row is touched. Sessions
retired before this revision left only their counts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    table_name = context.config.attributes["table_name"]
    op.create_table(
        f"{table_name}_agg_browsers",
        sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("family", sa.String(32), primary_key=True),
        sa.Column("sessions", sa.BigInteger(), nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        f"{table_name}_agg_values",
        sa.Column("bucket_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("counter", sa.String(8), primary_key=True),
        sa.Column("value", sa.BigInteger(), primary_key=True),
        sa.Column("sessions", sa.BigInteger(), nullable=False, server_default="0"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    table_name = context.config.attributes["table_name"]
    op.drop_table(f"{table_name}_agg_values")
    op.drop_table(f"{table_name}_agg_browsers")
