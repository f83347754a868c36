"""Suppressions of known-benign drift, with their hit counts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suppressions",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("rule", sa.String(1024), nullable=False),
        sa.Column("namespace", sa.String(253), nullable=False),
        sa.Column("pod", sa.String(253)),
        sa.Column("pod_prefix", sa.String(253)),
        sa.Column("image", sa.String(1024)),
        sa.Column("image_digest", sa.String(128)),
        sa.Column("node", sa.String(253)),
        sa.Column("max_priority_rank", sa.SmallInteger(), nullable=False),
        sa.Column("incident_id", sa.String(26)),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("expires_ns", sa.BigInteger(), nullable=False),
        sa.Column("lifted_by", sa.String(256)),
        sa.Column("lifted_ns", sa.BigInteger()),
        sa.Column("lift_reason", sa.Text()),
        sa.Column("hits", sa.BigInteger(), nullable=False),
        sa.Column("last_hit_ns", sa.BigInteger()),
        sa.PrimaryKeyConstraint("id", name="pk_suppressions"),
    )
    op.create_index("ix_suppressions_expires", "suppressions", ["expires_ns"])


def downgrade() -> None:
    op.drop_table("suppressions")
