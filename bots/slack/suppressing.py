"""Suppressions from Slack: "suppress similar alerts" in the dismiss modal, and their rendering
for ``/drift suppressions``.

The dismiss modal offers an optional duration (1 hour, 24 hours, 7 days). When the dismissal is
decided by the person who submitted it (an authorised approver: the executor checked), a
suppression is made as ``slack:<user id>`` with the dismissal's reason, scoped to what the
dismissed run was about: its alert's rule and namespace, the workload (the pod name without what
Kubernetes generated, e.g. ``web-`` for ``web-7d9f8b6c5-x2x4q``) and the image repository when
known. Alerts more severe than the incident still get through (its priority is the maximum).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from responder.models.priorities import Priority
from responder.models.times import format_ns, now_ns
from responder.plugins.notify.slack_blocks import escape, truncate, who
from responder.store import runs
from responder.store import suppressions as store
from responder.store.schema import incidents

SUPPRESS_BLOCK = "suppress"
SUPPRESS_ACTION = "suppress"
#: What the modal offers: value -> duration.
CHOICES: dict[str, tuple[str, int]] = {
    "1h": ("for 1 hour", 3600 * store.NS),
    "24h": ("for 24 hours", 24 * 3600 * store.NS),
    "7d": ("for 7 days", 7 * 24 * 3600 * store.NS),
}


def modal_block() -> dict[str, Any]:
    """The optional "suppress similar alerts" input of the dismiss modal."""
    return {
        "type": "input", "block_id": SUPPRESS_BLOCK, "optional": True,
        "label": {"type": "plain_text", "text": "Suppress similar alerts"},
        "hint": {"type": "plain_text", "text": "Same rule, namespace and workload; more "
                 "severe alerts still get through. Recorded with your Slack user id."},
        "element": {
            "type": "static_select", "action_id": SUPPRESS_ACTION,
            "placeholder": {"type": "plain_text", "text": "Do not suppress"},
            "options": [{"text": {"type": "plain_text", "text": label}, "value": value}
                        for value, (label, _) in CHOICES.items()],
        },
    }


class BadChoice(ValueError):
    pass


def submitted_choice(view: dict[str, Any]) -> str | None:
    """The duration chosen in the modal (a key of CHOICES), None for none; BadChoice when the
    submission names something the modal never offered."""
    values = (view.get("state") or {}).get("values") or {}
    state = (values.get(SUPPRESS_BLOCK) or {}).get(SUPPRESS_ACTION) or {}
    selected = state.get("selected_option") if isinstance(state, dict) else None
    if not selected:
        return None
    value = str((selected or {}).get("value") or "")
    if value not in CHOICES:
        raise BadChoice("Choose one of the durations offered.")
    return value


def suppress_dismissed(engine: Engine, approval: runs.ApprovalRecord, *, user: str,
                       choice: str, reason: str) -> store.Suppression:
    """Make the suppression a decided dismissal asked for (InvalidSuppression when the run's
    alert gives nothing safe to scope it by, e.g. no namespace)."""
    with engine.begin() as conn:
        run = runs.load_run(conn, approval.run_id)
        row = conn.execute(select(incidents.c.priority_rank, incidents.c.namespace,
                                  incidents.c.pod, incidents.c.image)
                           .where(incidents.c.id == approval.incident_id)).first()
        alert: dict[str, Any] = (run.context.get("alert") or {}) if run is not None else {}
        rule = str(alert.get("rule") or "")
        namespace = alert.get("namespace") or (row.namespace if row is not None else None)
        pod = alert.get("pod") or (row.pod if row is not None else None)
        exact, prefix = store.workload_pod(str(pod)) if pod else (None, None)
        fields = alert.get("fields") or {}
        repository = fields.get("container.image.repository") if isinstance(fields, dict) \
            else None
        image = alert.get("image") or (row.image if row is not None else None)
        if not isinstance(repository, str) or not repository:
            repository = store.image_repository(str(image)) if image else None
        match = store.Match(rule, str(namespace or ""), exact, prefix, repository)
        priority = Priority(row.priority_rank) if row is not None else \
            store.DEFAULT_MAX_PRIORITY
        return store.create(conn, match, created_by=f"slack:{user}", reason=reason,
                            duration_ns=CHOICES[choice][1], max_priority=priority,
                            incident_id=approval.incident_id, now_ns=now_ns(),
                            source="slack dismiss")


def made_text(made: store.Suppression) -> str:
    return (f"Similar alerts are suppressed until {escape(format_ns(made.expires_ns))}: "
            f"{escape(made.match.describe())}, up to {escape(made.max_priority.label)} "
            f"(suppression `{escape(made.id)}`; `/drift lift {escape(made.id)} REASON` ends it "
            "early).")


def listing(found: list[store.Suppression], *, now: int, everything: bool, limit: int,
            max_chars: int) -> str:
    if not found:
        return "No suppressions." if everything else "No active suppressions."
    title = "Suppressions" if everything else "Active suppressions"
    lines = [f"*{title}* (newest first, up to {limit}; hit counts trail by a few seconds)"]
    for s in found[:limit]:
        status = s.status(now)
        state = "" if status == "active" else f" *{escape(status)}*"
        last = f", last {escape(format_ns(s.last_hit_ns))}" if s.last_hit_ns else ""
        lines.append(
            f"• `{escape(s.id)}`{state} {escape(truncate(s.match.describe(), 400))}, up to "
            f"{escape(s.max_priority.label)}: {s.hits} hits{last}; until "
            f"{escape(format_ns(s.expires_ns))}, by {who(s.created_by)}: "
            f"{escape(truncate(s.reason, 200))}")
    return truncate("\n".join(lines), max_chars)
