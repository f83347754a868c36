"""The latest-sample ring's position per incident, so that a write can sample fewer alerts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("latest_samples", sa.BigInteger(), nullable=False,
                                   server_default="0"))
    # Until now every alert past the first 20 (the default) took the ring's next slot: carry on
    # from there. Another setting only means the ring's first new samples replace other entries
    # than its oldest, once.
    op.execute("UPDATE incidents SET latest_samples = alert_count - 20 WHERE alert_count > 20")


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("latest_samples")
