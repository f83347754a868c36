"""Without Slack: the prompt goes to the log, and decisions come from `drift-responder approve`."""

from __future__ import annotations

import structlog

from responder.plugins.notify.slack import Posted
from responder.plugins.notify.views import PromptView

log = structlog.get_logger("drift.prompt")


class ConsoleNotifier:
    def sync(self, view: PromptView, existing: Posted | None, channel: str) -> Posted:
        approval = view.approval
        log.info("incident.prompt", incident=view.incident_id, priority=view.priority,
                 rules=view.rules, namespace=view.namespace, pod=view.pod,
                 approval=approval.id if approval else None,
                 status=approval.status if approval else None,
                 options=approval.options if approval else None,
                 decided=approval.decided_option if approval else None,
                 run=view.run_status,
                 hint=(f"drift-responder approve {view.incident_id} --option <option> --as "
                       "<you>") if approval and approval.status == "pending" else None)
        return existing or Posted("console", view.incident_id)
