"""Where an incident's chat message lives (channel and ts), so that updates edit it in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("chat_channel", sa.String(64)))
        batch.add_column(sa.Column("chat_ts", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("chat_ts")
        batch.drop_column("chat_channel")
