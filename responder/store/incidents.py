"""Reading incidents back: lists, one incident with its rules and alert sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Row, select

from responder.models.incidents import IncidentView
from responder.models.priorities import Priority
from responder.store.schema import incident_alerts, incident_rules, incidents


@dataclass(frozen=True, slots=True)
class SampledAlert:
    ordinal: int
    alert_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IncidentDetail:
    incident: IncidentView
    rule_counts: dict[str, int]
    samples: list[SampledAlert]


def list_incidents(conn: Connection, *, status: str | None = None,
                   limit: int | None = None) -> list[IncidentView]:
    query = select(incidents).order_by(incidents.c.opened_at_ns.desc(), incidents.c.id.desc())
    if status is not None:
        query = query.where(incidents.c.status == status)
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).all()
    rules = _rules_by_incident(conn, [r.id for r in rows])
    return [_view(row, list(rules.get(row.id, {}))) for row in rows]


def get_incident(conn: Connection, incident_id: str) -> IncidentDetail | None:
    row = conn.execute(select(incidents).where(incidents.c.id == incident_id)).first()
    if row is None:
        return None
    counts = _rules_by_incident(conn, [incident_id]).get(incident_id, {})
    samples = [
        SampledAlert(s.ordinal, s.alert_id, orjson.loads(s.payload))
        for s in conn.execute(select(incident_alerts)
                              .where(incident_alerts.c.incident_id == incident_id)
                              .order_by(incident_alerts.c.ordinal))
    ]
    return IncidentDetail(_view(row, list(counts)), counts, samples)


def _rules_by_incident(conn: Connection, ids: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for chunk_start in range(0, len(ids), 500):
        chunk = ids[chunk_start:chunk_start + 500]
        rows = conn.execute(
            select(incident_rules.c.incident_id, incident_rules.c.rule,
                   incident_rules.c.count.label("n"))
            .where(incident_rules.c.incident_id.in_(chunk))
            .order_by(incident_rules.c.first_seen_ns, incident_rules.c.rule))
        for r in rows:
            out.setdefault(r.incident_id, {})[r.rule] = int(r.n)
    return out


def _view(row: Row[Any], rules: list[str]) -> IncidentView:
    return IncidentView(
        id=row.id, key=row.key, status=row.status, alert_count=int(row.alert_count),
        rules=rules, priority=Priority(row.priority_rank), namespace=row.namespace, pod=row.pod,
        node=row.node, container_id=row.container_id, container_full_id=row.container_full_id,
        image=row.image, first_seen_ns=int(row.first_seen_ns), last_seen_ns=int(row.last_seen_ns),
        opened_at_ns=int(row.opened_at_ns),
    )
