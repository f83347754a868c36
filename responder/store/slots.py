"""Key -> incident lookups in the SQL store: the embedded correlator's map, and the rebuild of the
Redis correlator's map after Redis lost it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import BigInteger, Connection, bindparam, case, select

from responder.store.recording import upsert
from responder.store.schema import correlation_slots, incidents


def assign(conn: Connection, candidates: Mapping[str, str], *, now_ns: int,
           window_ns: int, windows: Mapping[str, int] | None = None) -> dict[str, str]:
    """Atomically map each key to its live incident, or to its candidate id when it has none.

    One upsert per key: a live slot keeps its incident and slides its window; an expired or
    missing slot takes the candidate. Row locks (PostgreSQL) or the single writer (SQLite) make
    concurrent callers agree.
    """
    keys = sorted(candidates)  # fixed lock order across concurrent batches
    rows = [{"key": key, "incident_id": candidates[key], "now_ns": now_ns,
             "expires_ns": now_ns + (windows or {}).get(key, window_ns)} for key in keys]
    statement = _STATEMENTS.get(conn.dialect.name)
    if statement is None:  # built once per dialect, executed with many parameter sets
        statement = _STATEMENTS[conn.dialect.name] = _assign_statement(conn)
    return {row.key: row.incident_id for row in conn.execute(statement, rows)}


_STATEMENTS: dict[str, Any] = {}


def _assign_statement(conn: Connection) -> Any:
    s = correlation_slots.c
    stmt = upsert(conn, correlation_slots)
    ex = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[s.key],
        set_={"incident_id": case((s.expires_ns <= bindparam("now_ns", type_=BigInteger),
                                   ex.incident_id), else_=s.incident_id),
              "expires_ns": case((ex.expires_ns > s.expires_ns, ex.expires_ns),
                                 else_=s.expires_ns)},
    ).returning(s.key, s.incident_id, sort_by_parameter_order=True)


def live_incidents(conn: Connection, keys: list[str], *, since_ns: int,
                   windows: Mapping[str, int]) -> dict[str, str]:
    """The newest incident per key that received an alert within its window before
    ``since_ns`` (now)."""
    if not keys:
        return {}
    oldest = since_ns - max(windows.values())
    rows = conn.execute(
        select(incidents.c.key, incidents.c.id, incidents.c.last_received_ns)
        .where(incidents.c.key.in_(keys))
        .where(incidents.c.last_received_ns >= oldest)
        .order_by(incidents.c.opened_at_ns)
    )
    return {row.key: row.id for row in rows
            if row.last_received_ns >= since_ns - windows[row.key]}
