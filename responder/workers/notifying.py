"""Keep an incident's message in step with the store: one message per incident, re-rendered from
the current state on every change (so repeated or reordered notifications converge)."""

from __future__ import annotations

from typing import Protocol

import orjson
from sqlalchemy import Connection, Engine, or_, select, update

from responder.models.times import format_ns, now_ns
from responder.plugins.notify.slack import Posted, RateLimited
from responder.plugins.notify.views import ApprovalView, PromptView, StepView
from responder.settings import Settings
from responder.store import incidents as incidents_store
from responder.store import runs
from responder.store.schema import incident_alerts
from responder.store.schema import incidents as incidents_table

POSTING = "posting"
POSTING_TIMEOUT_NS = 60 * 1_000_000_000


class Notifier(Protocol):
    def sync(self, view: PromptView, existing: Posted | None, channel: str) -> Posted: ...


def build_view(conn: Connection, incident_id: str) -> PromptView | None:
    detail = incidents_store.get_incident(conn, incident_id)
    if detail is None:
        return None
    i = detail.incident
    first = conn.execute(select(incident_alerts.c.payload)
                         .where(incident_alerts.c.incident_id == incident_id)
                         .order_by(incident_alerts.c.ordinal).limit(1)).scalar()
    output = str(orjson.loads(first).get("output", "")) if first else ""
    view = PromptView(incident_id=i.id, priority=i.priority.label, rules=i.rules,
                      namespace=i.namespace, pod=i.pod, node=i.node,
                      container_id=i.container_id, image=i.image, alert_count=i.alert_count,
                      output=output)
    approvals = runs.approvals_for_incident(conn, incident_id)
    if approvals:
        a = approvals[-1]
        view.approval = ApprovalView(
            id=a.id, status=a.status, options=list(a.params.get("options", [])),
            approvers=list(a.params.get("approvers", [])),
            two_person=list(a.params.get("two_person", [])),
            prompt=str(a.params.get("prompt", "")), expires=format_ns(a.expires_ns),
            decided_option=a.decided_option, decided_by=a.decided_by,
            decided_at=format_ns(a.decided_ns) if a.decided_ns else None, reason=a.reason,
            votes=a.votes)
        view.channel = a.params.get("channel")
    found = runs.runs_for_incident(conn, incident_id)
    if found:
        run = found[-1]
        view.playbook, view.run_status = run.playbook, run.status
        states = run.state.get("steps", {})
        for spec in run.spec["steps"]:
            state = states.get(spec["id"], {})
            result = state.get("result") or {}
            outcome = result.get("status") if isinstance(result, dict) else None
            view.steps.append(StepView(spec["id"], spec["uses"], str(state.get("status")),
                                       str(outcome) if outcome else None))
    return view


def channel_for(view: PromptView, settings: Settings) -> str:
    """The step's channel, else a per-namespace route, else the default channel."""
    if view.channel:
        return view.channel
    routes = dict(part.split("=", 1) for part in settings.slack_namespace_channels.split(",")
                  if "=" in part)
    return routes.get(view.namespace or "", settings.slack_channel)


def sync_incident(engine: Engine, notifier: Notifier, incident_id: str,
                  settings: Settings) -> Posted | None:
    with engine.connect() as conn:
        view = build_view(conn, incident_id)
        row = conn.execute(select(incidents_table.c.chat_channel, incidents_table.c.chat_ts)
                           .where(incidents_table.c.id == incident_id)).first()
    if view is None or row is None:
        return None
    if row.chat_ts == POSTING:
        started = int(str(row.chat_channel).removeprefix("posting:") or 0)
        if now_ns() - started < POSTING_TIMEOUT_NS:
            raise RateLimited(0.5)  # another worker is posting the first message right now
    elif row.chat_ts:
        return notifier.sync(view, Posted(row.chat_channel, row.chat_ts),
                             channel_for(view, settings))
    # Claim the first post (compare-and-set), so that two workers never post two messages.
    with engine.begin() as conn:
        claimed = conn.execute(
            update(incidents_table)
            .where(incidents_table.c.id == incident_id,
                   or_(incidents_table.c.chat_ts.is_(None),
                       incidents_table.c.chat_channel == row.chat_channel))
            .values(chat_channel=f"posting:{now_ns()}", chat_ts=POSTING)).rowcount
    if claimed != 1:
        raise RateLimited(0.5)
    try:
        posted = notifier.sync(view, None, channel_for(view, settings))
    except BaseException:
        with engine.begin() as conn:  # let the next attempt post
            conn.execute(update(incidents_table).where(incidents_table.c.id == incident_id)
                         .values(chat_channel=None, chat_ts=None))
        raise
    with engine.begin() as conn:
        conn.execute(update(incidents_table).where(incidents_table.c.id == incident_id)
                     .values(chat_channel=posted.channel, chat_ts=posted.ts))
    return posted
