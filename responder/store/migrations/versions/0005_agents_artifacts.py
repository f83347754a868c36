"""Node agents' heartbeats and the evidence artifacts index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("node", sa.String(253), nullable=False),
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("started_ns", sa.BigInteger, nullable=False),
        sa.Column("last_seen_ns", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("node", name="pk_agents"),
    )
    op.create_table(
        "artifacts",
        sa.Column("incident_id", sa.String(26), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("media_type", sa.String(128), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("collector", sa.String(128), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("node", sa.String(253)),
        sa.Column("run_id", sa.String(26)),
        sa.Column("step_id", sa.String(64)),
        sa.Column("created_ns", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"],
                                name="fk_artifacts_incident_id_incidents"),
        sa.PrimaryKeyConstraint("incident_id", "sha256", name="pk_artifacts"),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_table("agents")
