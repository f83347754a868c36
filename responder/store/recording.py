"""Recording correlated alerts: one upsert per incident per batch, counts exact under concurrency.

The incident row is upserted by id with ``alert_count = alert_count + n``; the database's row lock
makes concurrent batches add up exactly, on SQLite and PostgreSQL alike. Whoever's upsert creates
the row (the returned count equals its own n) writes ``incident.opened``; later alerts are folded
into aggregated ``alerts.received`` records, so a storm does not grow the audit chain per alert.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import BigInteger, Connection, Table, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import ReturningInsert

from responder.models.alerts import Alert
from responder.models.times import format_ns
from responder.store import audit, pg_bulk
from responder.store.schema import incident_alerts, incident_rules, incidents, intake_batches

INTAKE_ACTOR = "intake"


@dataclass(frozen=True, slots=True)
class AlertGroup:
    """Alerts (in arrival order) that the correlator put into one incident."""

    incident_id: str
    key: str
    alerts: Sequence[Alert]


@dataclass(frozen=True, slots=True)
class GroupOutcome:
    incident_id: str
    opened: bool
    alert_count: int
    #: Rules this batch brought to the incident for the first time (each may start a playbook).
    new_rules: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordingPolicy:
    sample_first: int = 20
    sample_last: int = 20
    #: Alerts a write may add to the "latest" rings of all its incidents together (each incident
    #: gets at least one). Every alert while incidents get a few alerts per write; under a storm
    #: the ring holds the latest alert of each of its last writes instead of the last few
    #: milliseconds, and PostgreSQL rewrites ~100 sample rows per write, not one per alert.
    sample_budget: int = 100
    audit_every_alerts: int = 1000
    audit_every_ns: int = 60 * 1_000_000_000


Upsert = postgresql.Insert | sqlite.Insert


def upsert(conn: Connection, table: Table) -> Upsert:
    """The dialect's INSERT that knows ON CONFLICT (both dialects spell it the same way)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def batch_already_recorded(conn: Connection, batch_id: str) -> bool:
    found = conn.execute(
        select(intake_batches.c.batch_id).where(intake_batches.c.batch_id == batch_id)
    ).first()
    return found is not None


def mark_batch(conn: Connection, batch_id: str, alerts: int, received_ns: int) -> None:
    conn.execute(intake_batches.insert().values(batch_id=batch_id, recorded_ns=received_ns,
                                                alerts=alerts))


def record_groups(
    conn: Connection, groups: Sequence[AlertGroup], *, received_ns: int,
    policy: RecordingPolicy, past_first: Container[str] = frozenset(),
) -> list[GroupOutcome]:
    """Record every group inside the caller's transaction; outcomes follow the input order.

    A handful of multi-row statements per batch, whatever the number of incidents in it: this is
    the intake's hot path. ``past_first``: incidents known (from committed writes) to hold their
    first N alerts already, whose alerts need not be offered for those slots.
    """
    if not groups:
        return []
    # Always lock incident rows in the same order, so concurrent PostgreSQL batches never deadlock.
    ordered = sorted(groups, key=lambda g: g.incident_id)
    quota = latest_quota(policy, len(ordered))
    rows = [_incident_row(group, received_ns, policy.sample_first, quota) for group in ordered]
    rules = _rule_rows(ordered)
    if conn.dialect.name == "postgresql":
        returned, totals = _write_postgresql(conn, ordered, rows, rules, received_ns, policy,
                                             quota, past_first)
    else:
        returned, totals = _write_generic(conn, ordered, rows, rules, received_ns, policy, quota)
    new_rules: dict[str, list[str]] = {}
    for sent, total in zip(rules, totals, strict=True):
        if total == sent["count"]:  # no count before this batch: a first sighting
            new_rules.setdefault(sent["incident_id"], []).append(sent["rule"])

    outcomes: dict[str, GroupOutcome] = {}
    entries: list[audit.AuditEntry | None] = []
    due: list[tuple[str, int, int]] = []  # (incident, count now, count audited)
    for group in ordered:
        row = returned[group.incident_id]
        total, n = row.alert_count, len(group.alerts)
        opened = total == n  # only the upsert that created the row saw a count of exactly n
        outcomes[group.incident_id] = GroupOutcome(group.incident_id, opened, total,
                                                   tuple(new_rules.get(group.incident_id, ())))
        if opened:
            entries.append(_opened_entry(group))
        elif (total - row.audited_count >= policy.audit_every_alerts
              or received_ns - row.audited_at_ns >= policy.audit_every_ns):
            entries.append(None)  # filled in below, in this order
            due.append((group.incident_id, total, row.audited_count))
    received = iter(_received_entries(conn, due, received_ns))
    audit.append(conn, [entry if entry is not None else next(received) for entry in entries])
    return [outcomes[g.incident_id] for g in groups]


def latest_quota(policy: RecordingPolicy, incidents_in_write: int) -> int:
    """How many of each incident's alerts in one write go to its "latest" ring."""
    if policy.sample_last <= 0:
        return 0
    return min(policy.sample_last, max(1, policy.sample_budget // max(1, incidents_in_write)))


def latest_taken(quota: int, n: int, total: int, first: int) -> int:
    """Of an incident's n alerts in this write (its count now ``total``), how many take ring
    slots: the last ``quota`` of them, but only those past the first-N sample."""
    return max(0, min(quota, n, total - first))


@dataclass(frozen=True, slots=True)
class _Counts:
    """An incident's counters after this batch's upsert."""

    alert_count: int
    audited_count: int
    audited_at_ns: int
    latest_samples: int = 0


def _write_postgresql(
    conn: Connection, groups: Sequence[AlertGroup], rows: list[dict[str, Any]],
    rules: list[dict[str, Any]], received_ns: int, policy: RecordingPolicy, quota: int,
    past_first: Container[str],
) -> tuple[dict[str, _Counts], list[int]]:
    """One fixed statement for the whole batch (see pg_bulk.RECORD)."""
    params: dict[str, Any] = {
        "received": received_ns, "first": policy.sample_first, "last": policy.sample_last,
        "quota": quota,
        # Each row's values in the order pg_bulk.RECORD reads them (r->>0, r->>1, ...).
        "incidents": orjson.dumps([[row[c] for c in _PG_INCIDENT_COLUMNS] for row in rows]
                                  ).decode(),
        "rules": orjson.dumps([[rule["incident_id"], rule["rule"], rule["count"],
                                rule["priority_rank"], rule["first_seen_ns"]] for rule in rules]
                              ).decode(),
    }
    # Only an incident's first N alerts in this batch and its last `quota` can take a slot (the
    # SQL decides which do): a storm's incidents are past their first N, so only `quota` each
    # are sent, not the whole batch's JSON text.
    sampled: list[tuple[str, int, int, Alert]] = []
    for group in groups:
        alerts, n = group.alerts, len(group.alerts)
        first = 0 if group.incident_id in past_first else policy.sample_first
        chosen = range(n) if n <= first + quota else [*range(first), *range(n - quota, n)]
        sampled.extend((group.incident_id, index, n, alerts[index]) for index in chosen)
    params["samples"] = orjson.dumps([[s[0], s[1], s[2], s[3].alert_id] for s in sampled]).decode()
    params["s_payload"] = [memoryview(s[3].raw) for s in sampled]  # bytea: no copies
    cur = pg_bulk.cursor(conn)
    cur.execute(pg_bulk.RECORD, params, prepare=True)  # prepared once per connection
    returned: dict[str, _Counts] = {}
    rule_totals: dict[tuple[str, str], int] = {}
    for kind, incident_id, rule, count, audited, audited_at in cur.fetchall():
        if kind == "i":
            returned[incident_id] = _Counts(int(count), int(audited), int(audited_at))
        else:
            rule_totals[(incident_id, rule)] = int(count)
    return returned, [rule_totals[(r["incident_id"], r["rule"])] for r in rules]


def _write_generic(
    conn: Connection, groups: Sequence[AlertGroup], rows: list[dict[str, Any]],
    rules: list[dict[str, Any]], received_ns: int, policy: RecordingPolicy, quota: int,
) -> tuple[dict[str, _Counts], list[int]]:
    """SQLAlchemy statements executed with many parameter sets (SQLite, the embedded store)."""
    returned = {row.id: _Counts(int(row.alert_count), int(row.audited_count),
                                int(row.audited_at_ns), int(row.latest_samples))
                for row in conn.execute(_statement(conn, "incidents"), rows)}
    totals = [int(row.total) for row in conn.execute(_statement(conn, "rules"), rules)]
    samples = _sample_rows(groups, returned, received_ns, policy, quota)
    if samples:
        conn.execute(_statement(conn, "samples"), samples)
    return returned, totals


_STATEMENTS: dict[tuple[str, str], Any] = {}


def _statement(conn: Connection, name: str) -> Any:
    """One statement object per dialect and table, executed with many parameter sets: SQLAlchemy
    compiles it once (a fresh multi-row VALUES per batch was the intake's main CPU cost)."""
    key = (conn.dialect.name, name)
    found = _STATEMENTS.get(key)
    if found is None:
        found = _BUILDERS[name](conn)
        _STATEMENTS[key] = found
    return found


def _incident_row(group: AlertGroup, received_ns: int, first: int,
                  quota: int) -> dict[str, Any]:
    alerts = group.alerts
    n = len(alerts)
    if n == 1:  # one alert per request: most incidents of a transaction
        priority, earliest = alerts[0].priority, alerts[0].time_ns
        latest = earliest
    else:
        priority = min(a.priority for a in alerts)
        times = [a.time_ns for a in alerts]
        earliest, latest = min(times), max(times)
    return {
        "id": group.incident_id, "key": group.key, "status": "open",
        "alert_count": n, "priority_rank": int(priority),
        "first_alert_id": alerts[0].alert_id,
        "first_seen_ns": earliest, "last_seen_ns": latest,
        "opened_at_ns": received_ns, "last_received_ns": received_ns,
        "audited_count": n, "audited_at_ns": received_ns,
        # A new incident's ring position; an existing one's is computed by the upsert.
        "latest_samples": latest_taken(quota, n, n, first),
        "latest_quota": quota, "sample_first": first,
        **_first_known(alerts),
    }


def _incident_upsert(conn: Connection) -> ReturningInsert[Any]:
    stmt = upsert(conn, incidents)
    ex = stmt.excluded
    t = incidents.c
    return stmt.on_conflict_do_update(
        index_elements=[t.id],
        set_={
            "alert_count": t.alert_count + ex.alert_count,
            "priority_rank": case((ex.priority_rank < t.priority_rank, ex.priority_rank),
                                  else_=t.priority_rank),
            "first_seen_ns": case((ex.first_seen_ns < t.first_seen_ns, ex.first_seen_ns),
                                  else_=t.first_seen_ns),
            "last_seen_ns": case((ex.last_seen_ns > t.last_seen_ns, ex.last_seen_ns),
                                 else_=t.last_seen_ns),
            "last_received_ns": case((ex.last_received_ns > t.last_received_ns,
                                      ex.last_received_ns), else_=t.last_received_ns),
            # latest_taken() in SQL (SQLite's scalar max/min), on the counts before this batch.
            "latest_samples": t.latest_samples + func.max(0, func.min(
                bindparam("latest_quota", type_=BigInteger), ex.alert_count,
                t.alert_count + ex.alert_count - bindparam("sample_first", type_=BigInteger))),
            **{name: func.coalesce(t[name], ex[name]) for name in _CONTEXT_FIELDS},
        },
    ).returning(t.id, t.alert_count, t.audited_count, t.audited_at_ns, t.latest_samples,
                sort_by_parameter_order=True)


def _opened_entry(group: AlertGroup) -> audit.AuditEntry:
    first = group.alerts[0]
    context = {k: v for k, v in _first_known(group.alerts).items() if v is not None}
    return audit.AuditEntry(
        kind="incident.opened", actor=INTAKE_ACTOR, incident_id=group.incident_id,
        data={"key": group.key, "alerts": len(group.alerts), "first_alert_id": first.alert_id,
              "rule": first.rule, "priority": first.priority.label,
              "time": format_ns(first.time_ns), **context},
    )


#: A sweep can owe records to any number of incidents: their ids go to the database in pieces.
_IDS_PER_QUERY = 1000
_MARK_AUDITED = (update(incidents).where(incidents.c.id == bindparam("b_id"))
                 .values(audited_count=bindparam("b_total"), audited_at_ns=bindparam("b_at")))


def _received_entries(conn: Connection, due: Sequence[tuple[str, int, int]],
                      received_ns: int) -> list[audit.AuditEntry]:
    """The ``alerts.received`` records of these incidents (id, count now, count audited), in
    their order, and their audited marks moved to now: two statements however many are due (a
    storm's incidents come due in the same few writes; one statement each held those up)."""
    if not due:
        return []
    conn.execute(_MARK_AUDITED, [{"b_id": incident_id, "b_total": total, "b_at": received_ns}
                                 for incident_id, total, _ in due])
    rules: dict[str, list[str]] = {}
    ids = [incident_id for incident_id, _, _ in due]
    for start in range(0, len(ids), _IDS_PER_QUERY):  # (the drivers' bound-parameter limits)
        for incident_id, rule in conn.execute(
                select(incident_rules.c.incident_id, incident_rules.c.rule)
                .where(incident_rules.c.incident_id.in_(ids[start:start + _IDS_PER_QUERY]))
                .order_by(incident_rules.c.incident_id, incident_rules.c.first_seen_ns,
                          incident_rules.c.rule)):
            rules.setdefault(incident_id, []).append(rule)
    return [audit.AuditEntry(kind="alerts.received", actor=INTAKE_ACTOR, incident_id=incident_id,
                             data={"alerts": total - audited, "total": total,
                                   "rules": rules.get(incident_id, [])})
            for incident_id, total, audited in due]


def flush_received(conn: Connection, *, now_ns: int, policy: RecordingPolicy) -> int:
    """Write the ``alerts.received`` records that quiet incidents still owe (a periodic sweep)."""
    due = conn.execute(
        select(incidents.c.id, incidents.c.alert_count, incidents.c.audited_count)
        .where(incidents.c.alert_count > incidents.c.audited_count)
        .where(incidents.c.audited_at_ns <= now_ns - policy.audit_every_ns)
        .order_by(incidents.c.id)
        .with_for_update()
    ).all()
    entries = _received_entries(
        conn, [(row.id, int(row.alert_count), int(row.audited_count)) for row in due], now_ns)
    audit.append(conn, entries)
    return len(entries)


_CONTEXT_FIELDS = ("namespace", "pod", "pod_uid", "node", "container_id", "container_full_id",
                   "container_name", "image")
_CONTEXT_AT = tuple((name, Alert._fields.index(name)) for name in _CONTEXT_FIELDS)
_PG_INCIDENT_COLUMNS = ("id", "key", "alert_count", "priority_rank", "first_alert_id",
                        "first_seen_ns", "last_seen_ns", *_CONTEXT_FIELDS)


def _first_known(alerts: Sequence[Alert]) -> dict[str, Any]:
    """Each context field from the first alert that has it (older alerts may lack some)."""
    first = alerts[0]
    found: dict[str, Any] = {}
    for name, index in _CONTEXT_AT:
        value = first[index]
        if value is None:
            # Usually a field no alert of the group has (a pod uid Falco was not asked for):
            # looked up alone, not every field of every alert.
            value = next((v for a in alerts if (v := a[index]) is not None), None)
        found[name] = value
    return found


def _rule_rows(groups: Sequence[AlertGroup]) -> list[dict[str, Any]]:
    """One row per incident and rule: its count in this batch and its first sighting."""
    values: list[dict[str, Any]] = []
    for group in groups:
        if len(group.alerts) == 1:
            alert = group.alerts[0]
            values.append({"incident_id": group.incident_id, "rule": alert.rule, "count": 1,
                           "priority_rank": int(alert.priority),
                           "first_seen_ns": alert.time_ns})
            continue
        counts = Counter(a.rule for a in group.alerts)
        firsts: dict[str, Alert] = {}
        for alert in group.alerts:
            firsts.setdefault(alert.rule, alert)
        values.extend(
            {"incident_id": group.incident_id, "rule": rule, "count": count,
             "priority_rank": int(firsts[rule].priority), "first_seen_ns": firsts[rule].time_ns}
            for rule, count in sorted(counts.items()))
    return values


def _rules_upsert(conn: Connection) -> Any:
    r = incident_rules.c
    stmt = upsert(conn, incident_rules)
    ex = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[r.incident_id, r.rule],
        set_={"count": r.count + ex.count,
              "priority_rank": case((ex.priority_rank < r.priority_rank, ex.priority_rank),
                                    else_=r.priority_rank),
              "first_seen_ns": case((ex.first_seen_ns < r.first_seen_ns, ex.first_seen_ns),
                                    else_=r.first_seen_ns)},
    ).returning(r.count.label("total"), sort_by_parameter_order=True)


def _sample_rows(groups: Sequence[AlertGroup], counts: dict[str, _Counts], received_ns: int,
                 policy: RecordingPolicy, quota: int) -> list[dict[str, Any]]:
    """The alerts of this batch that take a sample slot: an incident's first N alerts, and its
    last ``latest_taken`` ones in this batch, each in the ring's next slot (pg_bulk.RECORD does
    the same in SQL)."""
    values: list[dict[str, Any]] = []
    first, last = policy.sample_first, policy.sample_last
    for group in groups:
        count = counts[group.incident_id]
        total, ring_end = count.alert_count, count.latest_samples
        n = len(group.alerts)
        start = total - n + 1  # this batch's alerts are ordinals start..total
        taken = latest_taken(quota, n, total, first)
        rows: dict[int, dict[str, Any]] = {}
        for index, alert in enumerate(group.alerts):
            ordinal = start + index
            if ordinal <= first:
                slot = ordinal - 1
            elif index >= n - taken:
                slot = first + (ring_end - (n - index)) % last
            else:
                continue
            rows[slot] = {"incident_id": group.incident_id, "slot": slot, "ordinal": ordinal,
                          "alert_id": alert.alert_id, "received_ns": received_ns,
                          "payload": bytes(alert.raw).decode()}
        values.extend(rows.values())
    return values


def _samples_upsert(conn: Connection) -> Any:
    s = incident_alerts.c
    stmt = upsert(conn, incident_alerts)
    ex = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[s.incident_id, s.slot],
        set_={"ordinal": ex.ordinal, "alert_id": ex.alert_id, "received_ns": ex.received_ns,
              "payload": ex.payload},
        where=ex.ordinal > s.ordinal,
    )


_BUILDERS = {"incidents": _incident_upsert, "rules": _rules_upsert, "samples": _samples_upsert}
