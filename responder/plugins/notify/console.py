"""Without Slack: the prompt goes to the log, and decisions come from `drift-responder approve`."""

from __future__ import annotations

from typing import Any

import structlog

from responder.plugins.notify.ratelimit import ChannelBucket
from responder.plugins.notify.slack import Posted
from responder.plugins.notify.views import DiffEntryView, PromptView

log = structlog.get_logger("drift.prompt")


class ConsoleNotifier:
    #: A log has no rate limit: every change is logged at once.
    bucket: ChannelBucket | None = None

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
        for tree in view.process_trees:
            log.info("incident.evidence.process_tree", incident=view.incident_id,
                     step=tree.step_id, method=tree.method, assurance=tree.assurance,
                     node=tree.node, container=tree.container_id,
                     processes=tree.processes_total, flagged=tree.flagged,
                     truncated=tree.truncated, excerpt=tree.excerpt)
        for diff in view.diffs:
            log.info("incident.evidence.filesystem_diff", incident=view.incident_id,
                     step=diff.step_id, method=diff.method, assurance=diff.assurance,
                     node=diff.node, added=diff.added, changed=diff.changed,
                     deleted=diff.deleted, executables_added=diff.executables_added,
                     quarantined=diff.quarantined, truncated=diff.truncated,
                     notable=[_entry(e) for e in diff.notable])
        return existing or Posted("console", view.incident_id)


def _entry(entry: DiffEntryView) -> dict[str, Any]:
    return {"kind": entry.kind, "path": entry.path, "flagged": entry.flagged,
            "sha256": entry.sha256[:12] if entry.sha256 else None,
            "what": "ELF" if entry.elf else "script" if entry.script else
            "executable" if entry.executable else entry.type}
