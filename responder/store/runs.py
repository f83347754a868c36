"""Runs, step leases and approvals in the store. Every state change is a compare-and-set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Row, and_, delete, insert, or_, select, update

from responder.models.incidents import new_incident_id
from responder.store.recording import upsert
from responder.store.schema import approvals, runs, step_leases


class StaleRun(Exception):
    """The run changed since it was read (another worker got there first)."""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass
class RunRecord:
    id: str
    incident_id: str
    playbook: str
    status: str
    spec: dict[str, Any]
    context: dict[str, Any]
    state: dict[str, Any]
    version: int


def create_run(conn: Connection, *, run_id: str, incident_id: str, playbook: str,
               spec: dict[str, Any], context: dict[str, Any], state: dict[str, Any],
               now_ns: int) -> bool:
    """A pending run for the incident; False when that playbook already has one for it."""
    stmt = upsert(conn, runs).values(
        id=run_id, incident_id=incident_id, playbook=playbook, status="pending",
        spec=_json(spec), context=_json(context), state=_json(state), version=0,
        created_ns=now_ns, updated_ns=now_ns, next_due_ns=None,
    ).on_conflict_do_nothing(index_elements=[runs.c.incident_id, runs.c.playbook])
    # RETURNING, not rowcount: psycopg reports no rowcount for INSERT .. ON CONFLICT here.
    return conn.execute(stmt.returning(runs.c.id)).first() is not None


def load_run(conn: Connection, run_id: str, *, for_update: bool = False) -> RunRecord | None:
    query = select(runs).where(runs.c.id == run_id)
    if for_update:
        query = query.with_for_update()
    row = conn.execute(query).first()
    return _record(row) if row is not None else None


def _record(row: Row[Any]) -> RunRecord:
    return RunRecord(id=row.id, incident_id=row.incident_id, playbook=row.playbook,
                     status=row.status, spec=orjson.loads(row.spec),
                     context=orjson.loads(row.context),
                     state=orjson.loads(row.state), version=row.version)


def save_run(conn: Connection, record: RunRecord, state: dict[str, Any], *, status: str,
             next_due_ns: int | None, now_ns: int) -> None:
    """Compare-and-set on ``version``; raises :class:`StaleRun` when someone else saved first."""
    done = conn.execute(
        update(runs).where(runs.c.id == record.id, runs.c.version == record.version)
        .values(state=_json(state), status=status, version=record.version + 1,
                updated_ns=now_ns, next_due_ns=next_due_ns)
    ).rowcount
    if done != 1:
        raise StaleRun(record.id)
    record.version += 1
    record.state = state
    record.status = status


def runs_for_incident(conn: Connection, incident_id: str) -> list[RunRecord]:
    rows = conn.execute(select(runs).where(runs.c.incident_id == incident_id)
                        .order_by(runs.c.created_ns))
    return [_record(r) for r in rows]


def pending_runs(conn: Connection, *, untouched_since_ns: int, now_ns: int,
                 limit: int = 100) -> list[str]:
    """Runs still pending whose start was last sent (or created) before the given time, and
    at least half their age ago: a start waiting behind a backlog is sent again after 2, 4,
    8... quiet periods, not once every period (which multiplied the backlog)."""
    rows = conn.execute(select(runs.c.id).where(
        runs.c.status == "pending", runs.c.updated_ns <= untouched_since_ns,
        # now - updated >= (now - created) / 2, in integers
        runs.c.updated_ns * 2 <= runs.c.created_ns + now_ns,
    ).order_by(runs.c.updated_ns).limit(limit))
    return [r.id for r in rows]


def touch_pending(conn: Connection, run_id: str, *, now_ns: int) -> bool:
    """Note that the start of a pending run was sent again now (compare-and-set on status)."""
    return conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status == "pending")
                        .values(updated_ns=now_ns)).rowcount == 1


def due_runs(conn: Connection, *, now_ns: int, limit: int = 100) -> list[str]:
    rows = conn.execute(select(runs.c.id).where(runs.c.status.in_(("running", "waiting")),
                                                runs.c.next_due_ns <= now_ns)
                        .order_by(runs.c.next_due_ns).limit(limit))
    return [r.id for r in rows]


# -- leases --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lease:
    run_id: str
    step_id: str
    attempt: int
    owner: str | None
    deadline_ns: int
    dispatches: int
    timeout_s: float


def put_lease(conn: Connection, *, run_id: str, step_id: str, attempt: int, timeout_s: float,
              deadline_ns: int) -> None:
    """A dispatched, not yet claimed attempt (a new attempt replaces the old lease)."""
    conn.execute(delete(step_leases).where(step_leases.c.run_id == run_id,
                                           step_leases.c.step_id == step_id))
    conn.execute(insert(step_leases).values(run_id=run_id, step_id=step_id, attempt=attempt,
                                            owner=None, deadline_ns=deadline_ns, dispatches=1,
                                            timeout_s=timeout_s))


def claim_lease(conn: Connection, *, run_id: str, step_id: str, attempt: int, owner: str,
                now_ns: int, deadline_ns: int) -> bool:
    """Take the attempt unless a live owner holds it. False means: not yours, do nothing."""
    return conn.execute(
        update(step_leases)
        .where(step_leases.c.run_id == run_id, step_leases.c.step_id == step_id,
               step_leases.c.attempt == attempt,
               or_(step_leases.c.owner.is_(None), step_leases.c.deadline_ns <= now_ns))
        .values(owner=owner, deadline_ns=deadline_ns)
    ).rowcount == 1


def drop_lease(conn: Connection, *, run_id: str, step_id: str) -> None:
    conn.execute(delete(step_leases).where(step_leases.c.run_id == run_id,
                                           step_leases.c.step_id == step_id))


def expired_leases(conn: Connection, *, now_ns: int, limit: int = 100) -> list[Lease]:
    rows = conn.execute(select(step_leases).where(step_leases.c.deadline_ns <= now_ns)
                        .order_by(step_leases.c.deadline_ns).limit(limit))
    return [Lease(r.run_id, r.step_id, r.attempt, r.owner, r.deadline_ns, r.dispatches,
                  r.timeout_s) for r in rows]


def renew_dispatch(conn: Connection, lease: Lease, *, deadline_ns: int) -> bool:
    """Compare-and-set an expired lease back to 'dispatched' (for one more delivery)."""
    return conn.execute(
        update(step_leases)
        .where(step_leases.c.run_id == lease.run_id, step_leases.c.step_id == lease.step_id,
               step_leases.c.attempt == lease.attempt,
               step_leases.c.dispatches == lease.dispatches,
               step_leases.c.deadline_ns == lease.deadline_ns)
        .values(owner=None, deadline_ns=deadline_ns, dispatches=lease.dispatches + 1)
    ).rowcount == 1


# -- approvals ------------------------------------------------------------------------------

@dataclass
class ApprovalRecord:
    id: str
    run_id: str
    step_id: str
    incident_id: str
    status: str
    params: dict[str, Any]
    votes: list[dict[str, Any]]
    decided_option: str | None
    decided_by: list[str]
    decided_ns: int | None
    reason: str | None
    created_ns: int
    expires_ns: int


def _approval(row: Row[Any]) -> ApprovalRecord:
    return ApprovalRecord(
        id=row.id, run_id=row.run_id, step_id=row.step_id, incident_id=row.incident_id,
        status=row.status, params=orjson.loads(row.params), votes=orjson.loads(row.votes),
        decided_option=row.decided_option,
        decided_by=orjson.loads(row.decided_by) if row.decided_by else [],
        decided_ns=row.decided_ns, reason=row.reason, created_ns=row.created_ns,
        expires_ns=row.expires_ns)


def create_approval(conn: Connection, *, run_id: str, step_id: str, incident_id: str,
                    params: dict[str, Any], expires_ns: int, now_ns: int) -> str:
    stmt = upsert(conn, approvals).values(
        id=new_incident_id(), run_id=run_id, step_id=step_id, incident_id=incident_id,
        status="pending", params=_json(params), votes="[]", created_ns=now_ns,
        expires_ns=expires_ns,
    ).on_conflict_do_nothing(index_elements=[approvals.c.run_id, approvals.c.step_id])
    conn.execute(stmt)
    found = conn.execute(select(approvals.c.id).where(approvals.c.run_id == run_id,
                                                      approvals.c.step_id == step_id)).scalar_one()
    return str(found)


def get_approval(conn: Connection, approval_id: str) -> ApprovalRecord | None:
    row = conn.execute(select(approvals).where(approvals.c.id == approval_id)).first()
    return _approval(row) if row is not None else None


def approvals_for_incident(conn: Connection, incident_id: str,
                           status: str | None = None) -> list[ApprovalRecord]:
    query = select(approvals).where(approvals.c.incident_id == incident_id)
    if status is not None:
        query = query.where(approvals.c.status == status)
    return [_approval(r) for r in conn.execute(query.order_by(approvals.c.created_ns))]


def cas_vote(conn: Connection, approval: ApprovalRecord, votes: Sequence[dict[str, Any]]) -> bool:
    """Record a vote, unless the approval moved on (status or votes changed) meanwhile."""
    return conn.execute(
        update(approvals).where(approvals.c.id == approval.id, approvals.c.status == "pending",
                                approvals.c.votes == _json(approval.votes))
        .values(votes=_json(list(votes)))
    ).rowcount == 1


def cas_decide(conn: Connection, approval: ApprovalRecord, *, option: str, decided_by: list[str],
               reason: str | None, now_ns: int, status: str = "decided") -> bool:
    """pending -> decided/expired, exactly once: the first writer wins."""
    return conn.execute(
        update(approvals).where(approvals.c.id == approval.id, approvals.c.status == "pending")
        .values(status=status, decided_option=option, decided_by=_json(decided_by),
                decided_ns=now_ns, reason=reason)
    ).rowcount == 1


def expired_approvals(conn: Connection, *, now_ns: int, limit: int = 100) -> list[ApprovalRecord]:
    rows = conn.execute(select(approvals).where(and_(approvals.c.status == "pending",
                                                     approvals.c.expires_ns <= now_ns))
                        .order_by(approvals.c.expires_ns).limit(limit))
    return [_approval(r) for r in rows]
