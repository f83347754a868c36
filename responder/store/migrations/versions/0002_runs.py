"""Playbook runs, step leases and approvals.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("incident_id", sa.String(26), nullable=False),
        sa.Column("playbook", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("updated_ns", sa.BigInteger(), nullable=False),
        sa.Column("next_due_ns", sa.BigInteger()),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"],
                                name="fk_runs_incident_id_incidents"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_index("ix_runs_status_next_due", "runs", ["status", "next_due_ns"])
    op.create_index("uq_runs_incident_playbook", "runs", ["incident_id", "playbook"], unique=True)
    op.create_table(
        "step_leases",
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(128)),
        sa.Column("deadline_ns", sa.BigInteger(), nullable=False),
        sa.Column("dispatches", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_step_leases_run_id_runs"),
        sa.PrimaryKeyConstraint("run_id", "step_id", name="pk_step_leases"),
    )
    op.create_index("ix_step_leases_deadline", "step_leases", ["deadline_ns"])
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("run_id", sa.String(26), nullable=False),
        sa.Column("step_id", sa.String(64), nullable=False),
        sa.Column("incident_id", sa.String(26), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("votes", sa.Text(), nullable=False),
        sa.Column("decided_option", sa.String(64)),
        sa.Column("decided_by", sa.Text()),
        sa.Column("decided_ns", sa.BigInteger()),
        sa.Column("reason", sa.Text()),
        sa.Column("created_ns", sa.BigInteger(), nullable=False),
        sa.Column("expires_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_approvals_run_id_runs"),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"],
                                name="fk_approvals_incident_id_incidents"),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
    )
    op.create_index("ix_approvals_incident_id", "approvals", ["incident_id"])
    op.create_index("uq_approvals_run_step", "approvals", ["run_id", "step_id"], unique=True)
    op.create_index("ix_approvals_status_expires", "approvals", ["status", "expires_ns"])


def downgrade() -> None:
    for table in ("approvals", "step_leases", "runs"):
        op.drop_table(table)
