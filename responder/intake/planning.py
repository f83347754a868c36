"""When an incident opens, the playbook that matches its first alert gets a pending run, created
in the same transaction as the incident: an incident is never left without its run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection

from responder.conducting.context import alert_context
from responder.conducting.state import RunState
from responder.models.alerts import Alert
from responder.models.incidents import KeySpec, new_incident_id
from responder.models.times import format_ns
from responder.playbooks.matching import select
from responder.playbooks.schema import Playbook
from responder.store import runs
from responder.store.recording import AlertGroup


class RunPlanner:
    def __init__(self, playbooks: Sequence[Playbook]) -> None:
        self.playbooks = list(playbooks)
        self._specs = {p.name: p.model_dump(mode="json", by_alias=True) for p in self.playbooks}
        self._correlation: dict[str, tuple[KeySpec | None, int | None]] = {
            p.name: (KeySpec.parse(p.correlation.key) if p.correlation.key else None,
                     int(p.correlation.window_seconds * 1e9)
                     if p.correlation.window_seconds else None)
            for p in self.playbooks if p.correlation is not None}
        #: Matching every alert costs time: only done when some playbook overrides correlation.
        self.has_correlation = bool(self._correlation)

    def correlation_for(self, alert: Alert) -> tuple[KeySpec | None, int | None] | None:
        """The key spec and window (ns) of the playbook this alert would run, if it sets them."""
        playbook = select(self.playbooks, alert)
        return self._correlation.get(playbook.name) if playbook is not None else None

    def plan(self, conn: Connection, groups: Sequence[AlertGroup], *,
             now_ns: int) -> list[str]:
        """Create the runs that these alerts call for: one per incident and matched playbook
        (an incident that already has that playbook's run gets nothing new). Returns new ids."""
        created: list[str] = []
        for group in groups:
            wanted: dict[str, tuple[Playbook, Alert]] = {}
            for alert in {a.rule: a for a in reversed(group.alerts)}.values():
                playbook = select(self.playbooks, alert)
                if playbook is not None and playbook.name not in wanted:
                    wanted[playbook.name] = (playbook, alert)
            for playbook, alert in wanted.values():
                run_id = new_incident_id()
                context = {"alert": alert_context(alert), "incident": _incident(group)}
                state = RunState.new(run_id, playbook.name, [s.id for s in playbook.steps])
                if runs.create_run(conn, run_id=run_id, incident_id=group.incident_id,
                                   playbook=playbook.name, spec=self._specs[playbook.name],
                                   context=context, state=state.to_json(), now_ns=now_ns):
                    created.append(run_id)
        return created


def _incident(group: AlertGroup) -> dict[str, Any]:
    first = group.alerts[0]
    return {
        "id": group.incident_id, "key": group.key, "namespace": first.namespace,
        "pod": first.pod, "pod_uid": first.pod_uid, "node": first.node,
        "container_id": first.container_id, "container_full_id": first.container_full_id,
        "container_name": first.container_name, "image": first.image,
        "alert_count": len(group.alerts),
        "rules": list(dict.fromkeys(a.rule for a in group.alerts)),
        "priority": min(a.priority for a in group.alerts).label,
        "first_seen": format_ns(min(a.time_ns for a in group.alerts)),
    }
