"""The ``/drift`` slash command.

``list`` (open incidents), ``show ID``, ``suppressions [all]`` and ``help`` are for anyone in the
workspace who can run the command; ``lift SUPPRESSION REASON`` for command users and for whoever
made that suppression; ``isolate|release|evict NAMESPACE/POD`` only for
``DRIFT_SLACK_COMMAND_USERS`` (user ids or ``slack-group:<handle>``). They run the same plug-ins
as ``drift-responder pods``, audited as ``slack:<user id>``; ``evict`` first asks the user to
confirm with a button. Every use (and every confirmation or cancellation) is recorded as a
``slack.command`` audit record before anything is shown or done. Replies go to the user alone
(the command's response URL), and everything that may come from an alert is escaped.
"""

from __future__ import annotations

from typing import Any

import structlog
from slack_bolt import Ack, App, Respond
from sqlalchemy import Engine

from bots.slack import suppressing
from bots.slack.authorising import USER_PREFIX, CommandUsers
from responder.models.times import format_ns, now_ns
from responder.plugins.notify.slack_blocks import escape, truncate, who
from responder.settings import Settings
from responder.store import audit, incidents, runs
from responder.store import suppressions as suppressions_store
from responder.workers.manual import (
    ACTIONS,
    BadTarget,
    PodActionResult,
    parse_target,
    run_pod_action,
)

log = structlog.get_logger("drift.slack")

COMMAND = "/drift"
CONFIRM_EVICT = "drift-cmd:evict"
CANCEL = "drift-cmd:cancel"
LIST_LIMIT = 20
MAX_REPLY = 3000
HELP = (
    "*/drift list* open incidents, newest first\n"
    "*/drift show ID* one incident: context, rules, run and approval\n"
    "*/drift isolate NAMESPACE/POD* quarantine a pod (reversible)\n"
    "*/drift release NAMESPACE/POD* undo isolate\n"
    "*/drift evict NAMESPACE/POD* evict a pod (asks you to confirm)\n"
    "*/drift suppressions [all]* active suppressions (all: lifted and expired too)\n"
    "*/drift lift SUPPRESSION_ID REASON* end a suppression now\n"
    "isolate, release and evict are for the users in DRIFT_SLACK_COMMAND_USERS, and so is lift "
    "(besides whoever made the suppression). To suppress similar alerts, dismiss an incident "
    "and choose a duration. Every use is recorded in the audit trail."
)


class SlashCommands:
    def __init__(self, settings: Settings, engine: Engine, users: CommandUsers) -> None:
        self.settings = settings
        self.engine = engine
        self.users = users

    def register(self, app: App) -> None:
        app.command(COMMAND)(self.on_command)
        app.action(CONFIRM_EVICT)(self.on_confirm_evict)
        app.action(CANCEL)(self.on_cancel)

    # -- listeners ------------------------------------------------------------------------
    def on_command(self, ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        ack()
        user = str(command.get("user_id") or "")
        channel = str(command.get("channel_id") or "")
        text = str(command.get("text") or "").strip()
        words = text.split()
        sub = words[0].lower() if words else "help"
        args = words[1:]
        try:
            reply = self._run(user, channel, text, sub, args)
        except Exception as exc:
            log.exception("slack.command_failed", user=user, text=text[:200])
            reply = {"text": f"/drift {escape(sub)} failed ({escape(type(exc).__name__)}); "
                             "nothing was shown or done."}
        respond(response_type="ephemeral", **reply)

    def on_confirm_evict(self, ack: Ack, body: dict[str, Any], action: dict[str, Any],
                         respond: Respond) -> None:
        ack()
        user = str((body.get("user") or {}).get("id") or "")
        channel = str(((body.get("container") or {}).get("channel_id"))
                      or (body.get("channel") or {}).get("id") or "")
        target = str(action.get("value") or "")
        try:
            if not self.users.allowed(user):
                self._audit(user, channel, "evict", target, "refused: not a command user",
                            stage="confirm")
                respond(text="You may not evict pods from Slack (you are not in "
                             "DRIFT_SLACK_COMMAND_USERS).", replace_original=False)
                return
            parse_target(target)
            self._audit(user, channel, "evict", target, "confirmed", stage="confirm")
            result = run_pod_action(self.settings, self.engine, "evict", target,
                                    {"dry_run": None, "allow_protected": False},
                                    actor=f"{USER_PREFIX}{user}")
            respond(text=_result_text("evict", result), replace_original=True)
        except BadTarget as exc:
            respond(text=escape(str(exc)), replace_original=False)
        except Exception as exc:
            log.exception("slack.evict_failed", user=user, target=target[:200])
            respond(text=f"evict {escape(target)} failed ({escape(type(exc).__name__)}).",
                    replace_original=False)

    def on_cancel(self, ack: Ack, body: dict[str, Any], action: dict[str, Any],
                  respond: Respond) -> None:
        ack()
        user = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("container") or {}).get("channel_id") or "")
        target = str(action.get("value") or "")
        try:
            self._audit(user, channel, "evict", target, "cancelled", stage="confirm")
        except Exception:
            log.exception("slack.cancel_audit_failed", user=user)
        respond(text=f"Eviction of {escape(target)} cancelled: nothing was done.",
                replace_original=True)

    # -- commands -------------------------------------------------------------------------
    def _run(self, user: str, channel: str, text: str, sub: str,
             args: list[str]) -> dict[str, Any]:
        if sub == "list":
            self._audit(user, channel, sub, text, "shown")
            return {"text": self._list()}
        if sub == "show":
            if len(args) != 1:
                self._audit(user, channel, sub, text, "usage")
                return {"text": "Usage: /drift show INCIDENT_ID"}
            self._audit(user, channel, sub, text, "shown", incident_id=self._known(args[0]))
            return {"text": self._show(args[0])}
        if sub == "suppressions":
            everything = bool(args) and args[0].lower() == "all"
            self._audit(user, channel, sub, text, "shown")
            return {"text": self._suppressions(everything)}
        if sub == "lift":
            return self._lift(user, channel, text)
        if sub in ACTIONS:
            return self._pod_command(user, channel, text, sub, args)
        self._audit(user, channel, sub, text, "help")
        prefix = "" if sub == "help" else f"Unknown command {escape(sub)}.\n"
        return {"text": prefix + HELP}

    def _pod_command(self, user: str, channel: str, text: str, action: str,
                     args: list[str]) -> dict[str, Any]:
        if not self.users.allowed(user):
            self._audit(user, channel, action, text, "refused: not a command user")
            return {"text": f"You may not {action} pods from Slack: you are not in "
                            "DRIFT_SLACK_COMMAND_USERS. This attempt was recorded."}
        if len(args) != 1:
            self._audit(user, channel, action, text, "usage")
            return {"text": f"Usage: /drift {action} NAMESPACE/POD"}
        target = args[0]
        try:
            parse_target(target)
        except BadTarget as exc:
            self._audit(user, channel, action, text, "bad target")
            return {"text": escape(str(exc))}
        if action == "evict":
            self._audit(user, channel, action, text, "confirmation requested")
            return _confirm_evict(target)
        self._audit(user, channel, action, text, "running")
        result = run_pod_action(self.settings, self.engine, action, target,
                                {"dry_run": None, "allow_protected": False},
                                actor=f"{USER_PREFIX}{user}")
        return {"text": _result_text(action, result)}

    def _suppressions(self, everything: bool) -> str:
        now = now_ns()
        with self.engine.connect() as conn:
            found = suppressions_store.list_suppressions(
                conn, now_ns=now, include_inactive=everything, limit=LIST_LIMIT)
        return suppressing.listing(found, now=now, everything=everything, limit=LIST_LIMIT,
                                   max_chars=MAX_REPLY)

    def _lift(self, user: str, channel: str, text: str) -> dict[str, Any]:
        parts = text.split(None, 2)
        if len(parts) < 3 or len(parts[2].strip()) < 3:
            self._audit(user, channel, "lift", text, "usage")
            return {"text": "Usage: /drift lift SUPPRESSION_ID REASON (the reason is "
                            "recorded in the audit trail)"}
        suppression_id, reason = parts[1], parts[2].strip()
        with self.engine.connect() as conn:
            found = suppressions_store.get(conn, suppression_id)
        if found is None:
            self._audit(user, channel, "lift", text, "unknown suppression")
            return {"text": f"No suppression {escape(truncate(suppression_id, 64))}."}
        actor = f"{USER_PREFIX}{user}"
        if found.created_by != actor and not self.users.allowed(user):
            self._audit(user, channel, "lift", text, "refused: not a command user",
                        incident_id=found.incident_id)
            return {"text": "You may not lift this suppression: you did not make it and you "
                            "are not in DRIFT_SLACK_COMMAND_USERS. This attempt was recorded."}
        self._audit(user, channel, "lift", text, "lifting", incident_id=found.incident_id)
        try:
            with self.engine.begin() as conn:
                lifted = suppressions_store.lift(conn, found.id, by=actor, reason=reason,
                                                 now_ns=now_ns())
        except suppressions_store.NotActive as exc:
            return {"text": escape(str(exc))}
        return {"text": f"Suppression `{escape(lifted.id)}` lifted: "
                        f"{escape(lifted.match.describe())} ({lifted.hits} alerts suppressed). "
                        "Matching alerts open incidents again within seconds."}

    def _list(self) -> str:
        with self.engine.connect() as conn:
            found = incidents.list_incidents(conn, status="open", limit=LIST_LIMIT)
        if not found:
            return "No open incidents."
        lines = [f"*Open incidents* (newest first, up to {LIST_LIMIT})"]
        for i in found:
            lines.append(
                f"• `{escape(i.id)}` {escape(i.priority.label)} "
                f"{escape(i.namespace or '-')}/{escape(i.pod or '-')}: "
                f"{escape(truncate(', '.join(i.rules) or '(no rule)', 200))} "
                f"({i.alert_count} alerts, last {escape(format_ns(i.last_seen_ns))})")
        return truncate("\n".join(lines), MAX_REPLY)

    def _known(self, incident_id: str) -> str | None:
        with self.engine.connect() as conn:
            found = incidents.get_incident(conn, incident_id[:64])
        return found.incident.id if found else None

    def _show(self, incident_id: str) -> str:
        with self.engine.connect() as conn:
            detail = incidents.get_incident(conn, incident_id[:64])
            if detail is None:
                return f"No incident {escape(truncate(incident_id, 64))}."
            found_runs = runs.runs_for_incident(conn, detail.incident.id)
            approvals = runs.approvals_for_incident(conn, detail.incident.id)
        i = detail.incident
        lines = [
            f"*Incident* `{escape(i.id)}`: {escape(i.priority.label)}, {escape(i.status)}",
            f"*Namespace/pod* {escape(i.namespace or '-')}/{escape(i.pod or '-')} · "
            f"*Node* {escape(i.node or '-')}",
            f"*Image* {escape(i.image or '-')} · *Container* {escape(i.container_id or '-')}",
            f"*Alerts* {i.alert_count}, first {escape(format_ns(i.first_seen_ns))}, "
            f"last {escape(format_ns(i.last_seen_ns))}",
        ]
        lines += [f"*Rule* {count} x {escape(truncate(rule, 200))}"
                  for rule, count in detail.rule_counts.items()]
        for run in found_runs:
            states = run.state.get("steps", {})
            steps = ", ".join(f"{escape(s['id'])} {escape(states.get(s['id'], {}).get('status'))}"
                              for s in run.spec.get("steps", []))
            lines.append(f"*Run* {escape(run.playbook)}: {escape(run.status)} ({steps})")
        if approvals:
            a = approvals[-1]
            if a.status == "pending":
                votes = "".join(f"; {who(v['by'])} voted {escape(v['option'])}"
                                for v in a.votes)
                lines.append(f"*Approval* pending: {escape(', '.join(a.params.get('options', [])))}"
                             f" (until {escape(format_ns(a.expires_ns))}){votes}")
            else:
                by = ", ".join(who(d) for d in a.decided_by)
                lines.append(f"*Approval* {escape(a.status)}: {escape(a.decided_option or '-')}"
                             f" by {by}" + (f", reason: {escape(a.reason)}" if a.reason else ""))
        return truncate("\n".join(lines), MAX_REPLY)

    def _audit(self, user: str, channel: str, sub: str, text: str, outcome: str, *,
               incident_id: str | None = None, stage: str = "command") -> None:
        with self.engine.begin() as conn:
            audit.append(conn, [audit.AuditEntry(
                kind="slack.command", actor=f"{USER_PREFIX}{user}", incident_id=incident_id,
                data={"command": COMMAND, "subcommand": sub[:64], "text": text[:500],
                      "channel": channel, "stage": stage, "outcome": outcome})])


def _confirm_evict(target: str) -> dict[str, Any]:
    question = (f"Evict `{escape(target)}` through the Eviction API? Its controller replaces "
                "it; the suspect pod and its memory are gone. This is recorded with your "
                "Slack user id.")
    return {"text": f"Evict {escape(target)}?", "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": question, "verbatim": True}},
        {"type": "actions", "block_id": "drift-cmd-evict", "elements": [
            {"type": "button", "action_id": CONFIRM_EVICT, "value": target, "style": "danger",
             "text": {"type": "plain_text", "text": "Evict", "emoji": False}},
            {"type": "button", "action_id": CANCEL, "value": target,
             "text": {"type": "plain_text", "text": "Cancel", "emoji": False}},
        ]},
    ]}


def _result_text(action: str, result: PodActionResult) -> str:
    payload = result.payload
    status = str(payload.get("status"))
    text = f"{action} `{escape(result.target)}`: *{escape(status)}*"
    if payload.get("dry_run"):
        text += " (dry run: nothing was sent)"
    if payload.get("error"):
        text += f"\n{escape(truncate(str(payload['error']), 1000))}"
    detail = payload.get("detail") or {}
    if isinstance(detail, dict) and detail.get("budget"):
        text += f"\nblocked by the PodDisruptionBudget {escape(detail['budget'])}"
    return truncate(text, MAX_REPLY)
