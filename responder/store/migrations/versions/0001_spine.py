"""Incidents, correlation slots, intake batches and the append-only audit chain.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("key", sa.String(600), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("alert_count", sa.BigInteger(), nullable=False),
        sa.Column("priority_rank", sa.SmallInteger(), nullable=False),
        sa.Column("namespace", sa.String(256)),
        sa.Column("pod", sa.String(256)),
        sa.Column("pod_uid", sa.String(64)),
        sa.Column("node", sa.String(256)),
        sa.Column("container_id", sa.String(128)),
        sa.Column("container_full_id", sa.String(64)),
        sa.Column("container_name", sa.String(256)),
        sa.Column("image", sa.String(1024)),
        sa.Column("first_alert_id", sa.String(128), nullable=False),
        sa.Column("first_seen_ns", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ns", sa.BigInteger(), nullable=False),
        sa.Column("opened_at_ns", sa.BigInteger(), nullable=False),
        sa.Column("last_received_ns", sa.BigInteger(), nullable=False),
        sa.Column("audited_count", sa.BigInteger(), nullable=False),
        sa.Column("audited_at_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
    )
    op.create_index("ix_incidents_key_last_received", "incidents", ["key", "last_received_ns"])
    op.create_index("ix_incidents_opened_at", "incidents", ["opened_at_ns"])
    op.create_table(
        "incident_rules",
        sa.Column("incident_id", sa.String(26), nullable=False),
        sa.Column("rule", sa.String(1024), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("priority_rank", sa.SmallInteger(), nullable=False),
        sa.Column("first_seen_ns", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"],
                                name="fk_incident_rules_incident_id_incidents"),
        sa.PrimaryKeyConstraint("incident_id", "rule", name="pk_incident_rules"),
    )
    op.create_table(
        "incident_alerts",
        sa.Column("incident_id", sa.String(26), nullable=False),
        sa.Column("slot", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("ordinal", sa.BigInteger(), nullable=False),
        sa.Column("alert_id", sa.String(128), nullable=False),
        sa.Column("received_ns", sa.BigInteger(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["incident_id"], ["incidents.id"],
                                name="fk_incident_alerts_incident_id_incidents"),
        sa.PrimaryKeyConstraint("incident_id", "slot", name="pk_incident_alerts"),
    )
    op.create_table(
        "correlation_slots",
        sa.Column("key", sa.String(600), nullable=False),
        sa.Column("incident_id", sa.String(26), nullable=False),
        sa.Column("expires_ns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_correlation_slots"),
    )
    op.create_table(
        "intake_batches",
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("recorded_ns", sa.BigInteger(), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("batch_id", name="pk_intake_batches"),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("time", sa.String(40), nullable=False),
        sa.Column("incident_id", sa.String(26)),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_incident_id", "audit_log", ["incident_id"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_head"),
    )
    _append_only_triggers()


def _append_only_triggers() -> None:
    """Defence in depth: the database itself refuses UPDATE and DELETE on audit rows."""
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
        return
    op.execute(
        "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    for table in ("audit_head", "audit_log", "intake_batches", "correlation_slots",
                  "incident_alerts", "incident_rules", "incidents"):
        op.drop_table(table)
