"""Table definitions. Times are integers of nanoseconds since the epoch (UTC): Falco times carry
nanoseconds, and integers compare the same way on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

incidents = Table(
    "incidents",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("key", String(600), nullable=False),
    Column("status", String(32), nullable=False),
    Column("alert_count", BigInteger, nullable=False),
    Column("priority_rank", SmallInteger, nullable=False),
    Column("namespace", String(256)),
    Column("pod", String(256)),
    Column("pod_uid", String(64)),
    Column("node", String(256)),
    Column("container_id", String(128)),
    Column("container_full_id", String(64)),
    Column("container_name", String(256)),
    Column("image", String(1024)),
    Column("first_alert_id", String(128), nullable=False),
    Column("first_seen_ns", BigInteger, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
    # Server clock, not alert clock: the correlation window runs on what we observed.
    Column("opened_at_ns", BigInteger, nullable=False),
    Column("last_received_ns", BigInteger, nullable=False),
    # How much of alert_count the audit trail already accounts for (alerts.received records).
    Column("audited_count", BigInteger, nullable=False),
    Column("audited_at_ns", BigInteger, nullable=False),
    # Alerts written to the "latest" sample ring so far: the ring's next slot (see recording.py).
    Column("latest_samples", BigInteger, nullable=False, server_default="0"),
    # The incident's chat message, once posted: later updates edit it in place.
    Column("chat_channel", String(64)),
    Column("chat_ts", String(32)),
    Index("ix_incidents_key_last_received", "key", "last_received_ns"),
    Index("ix_incidents_opened_at", "opened_at_ns"),
)

incident_rules = Table(
    "incident_rules",
    metadata,
    Column("incident_id", String(26), ForeignKey("incidents.id"), primary_key=True),
    Column("rule", String(1024), primary_key=True),
    Column("count", BigInteger, nullable=False),
    Column("priority_rank", SmallInteger, nullable=False),
    Column("first_seen_ns", BigInteger, nullable=False),
)

#: A bounded sample per incident: slots [0, first) keep the first alerts, the next ``last`` slots
#: are a ring of the latest samples (incidents.latest_samples says where the next one goes).
incident_alerts = Table(
    "incident_alerts",
    metadata,
    Column("incident_id", String(26), ForeignKey("incidents.id"), primary_key=True),
    Column("slot", Integer, primary_key=True, autoincrement=False),
    Column("ordinal", BigInteger, nullable=False),
    Column("alert_id", String(128), nullable=False),
    Column("received_ns", BigInteger, nullable=False),
    Column("payload", Text, nullable=False),
)

#: The embedded correlator's key -> incident map (the Redis correlator keeps it in Redis).
correlation_slots = Table(
    "correlation_slots",
    metadata,
    Column("key", String(600), primary_key=True),
    Column("incident_id", String(26), nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
)

#: Batches already recorded, so that a redelivered batch (consumer crash after commit) is a no-op.
intake_batches = Table(
    "intake_batches",
    metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("recorded_ns", BigInteger, nullable=False),
    Column("alerts", Integer, nullable=False),
)

#: Append-only. Triggers (see the migration) refuse UPDATE and DELETE.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("time", String(40), nullable=False),
    Column("incident_id", String(26), index=True),
    Column("actor", String(256), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

#: The last seq and hash, written in the same transaction as each append: without it, deleting
#: the newest records would leave a shorter chain that still verifies.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

#: One playbook run per incident and playbook. ``state`` is the conductor's RunState (JSON),
#: ``spec`` the playbook as it was when the run started (a run never changes under its feet),
#: ``version`` the compare-and-set counter, ``next_due_ns`` the earliest retry or expiry.
runs = Table(
    "runs",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("incident_id", String(26), ForeignKey("incidents.id"), nullable=False),
    Column("playbook", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("spec", Text, nullable=False),
    Column("context", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    Column("next_due_ns", BigInteger),
    Index("ix_runs_status_next_due", "status", "next_due_ns"),
    Index("uq_runs_incident_playbook", "incident_id", "playbook", unique=True),
)

#: A running step's lease: who holds it and until when. The beat re-dispatches expired leases,
#: so a worker killed mid-step does not strand its run until the broker's visibility timeout.
step_leases = Table(
    "step_leases",
    metadata,
    Column("run_id", String(26), ForeignKey("runs.id"), primary_key=True),
    Column("step_id", String(64), primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("owner", String(128)),
    Column("deadline_ns", BigInteger, nullable=False),
    Column("dispatches", Integer, nullable=False),
    Column("timeout_s", Float, nullable=False),
    Index("ix_step_leases_deadline", "deadline_ns"),
)

#: Approval requests, persisted before anyone is asked; decided with compare-and-set.
approvals = Table(
    "approvals",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("run_id", String(26), ForeignKey("runs.id"), nullable=False),
    Column("step_id", String(64), nullable=False),
    Column("incident_id", String(26), ForeignKey("incidents.id"), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("params", Text, nullable=False),
    Column("votes", Text, nullable=False),
    Column("decided_option", String(64)),
    Column("decided_by", Text),
    Column("decided_ns", BigInteger),
    Column("reason", Text),
    Column("created_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
    Index("uq_approvals_run_step", "run_id", "step_id", unique=True),
    Index("ix_approvals_status_expires", "status", "expires_ns"),
)

#: Node agents' heartbeats: the dispatcher sends evidence steps to ``evidence.<node>`` only when
#: that node's agent was seen recently, and falls back (or fails clearly) otherwise.
agents = Table(
    "agents",
    metadata,
    Column("node", String(253), primary_key=True),
    Column("hostname", String(253), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", String(32), nullable=False),
    Column("started_ns", BigInteger, nullable=False),
    Column("last_seen_ns", BigInteger, nullable=False),
)

#: Evidence artifacts by incident. The bytes live content-addressed in the artifact store; the
#: audit trail holds the same sha256 (``evidence.collected``), which is what makes them evidence.
artifacts = Table(
    "artifacts",
    metadata,
    Column("incident_id", String(26), ForeignKey("incidents.id"), primary_key=True),
    Column("sha256", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("media_type", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("collector", String(128), nullable=False),
    Column("method", String(32), nullable=False),
    Column("node", String(253)),
    Column("run_id", String(26)),
    Column("step_id", String(64)),
    Column("created_ns", BigInteger, nullable=False),
)

#: Suppressions of known-benign drift (see responder/store/suppressions.py): alerts matching an
#: active one are accepted and counted here (``hits``, flushed periodically by the intake) but
#: open no incident. A rule and a namespace are always required; the rest only narrows.
suppressions = Table(
    "suppressions",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("rule", String(1024), nullable=False),
    Column("namespace", String(253), nullable=False),
    Column("pod", String(253)),
    Column("pod_prefix", String(253)),
    Column("image", String(1024)),
    Column("image_digest", String(128)),
    Column("node", String(253)),
    # Alerts more severe than this (a lower rank) are never suppressed.
    Column("max_priority_rank", SmallInteger, nullable=False),
    Column("incident_id", String(26)),
    Column("created_by", String(256), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
    Column("lifted_by", String(256)),
    Column("lifted_ns", BigInteger),
    Column("lift_reason", Text),
    Column("hits", BigInteger, nullable=False),
    Column("last_hit_ns", BigInteger),
    Index("ix_suppressions_expires", "expires_ns"),
)
