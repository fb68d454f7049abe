"""The user_id indexes hold identified sessions only.

Erasure (``forget_user``) is the only reader of the user_id indexes of
``<table>`` and ``<table>_history``, and it looks up ``user_id = :uid``, which no NULL
matches. Anonymous sessions, most of them, then need no entry: every insert, move to
history and delete of one skips a B-tree. Each index is rebuilt in place with
``WHERE user_id IS NOT NULL``; no row is touched (the rebuild reads the table once and
blocks its writers meanwhile, as any CREATE INDEX does).

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

WHERE = "user_id IS NOT NULL"


def _tables() -> tuple[str, str]:
    table_name = context.config.attributes["table_name"]
    return table_name, f"{table_name}_history"


def _rebuild(partial: bool) -> None:
    for table in _tables():
        name = f"ix_{table}_user_id"
        op.drop_index(name, table_name=table)
        where = {"sqlite_where": sa.text(WHERE), "postgresql_where": sa.text(WHERE)}
        op.create_index(name, table, ["user_id"], **(where if partial else {}))


def upgrade() -> None:
    _rebuild(partial=True)


def downgrade() -> None:
    _rebuild(partial=False)
