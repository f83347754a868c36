"""Approval buttons and the dismiss modal.

A click on ``drift:<option>`` (value: the approval id) is acknowledged at once (Slack wants an
answer within 3 s), then decided by the executor as ``slack:<user id>``: authorisation,
two-person rule and first-decision-wins all live there, and so does the audit record of a
refusal. The executor also dispatches the message update after a decision, so a successful
click needs nothing more from here; refusals, "already decided" and a recorded first vote are
told to the clicking user alone (an ephemeral message).

``drift:dismiss`` opens a modal asking for a reason (required) and, optionally, for how long to
suppress similar alerts; its submission decides ``dismiss`` with that reason, and once the
dismissal is decided makes the suppression (see :mod:`bots.slack.suppressing`).
"""

from __future__ import annotations

import re
from typing import Any

import structlog
from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from sqlalchemy import select

from bots.slack import suppressing
from bots.slack.authorising import USER_PREFIX, GroupResolver, group_handles
from responder.conducting.dispatching import Dispatcher
from responder.plugins.notify.slack_blocks import escape, truncate
from responder.store import runs
from responder.store.schema import incidents
from responder.store.suppressions import InvalidSuppression
from responder.workers.executing import DecisionOutcome, Executor, authorised

log = structlog.get_logger("drift.slack")

ACTION = re.compile(r"^drift:(?P<option>[a-z0-9_.-]{1,64})$")
DISMISS_CALLBACK = "drift_dismiss"
REASON_BLOCK = "reason"
REASON_ACTION = "reason"
MAX_REASON = 2000


def dismiss_modal(approval_id: str, incident_id: str) -> dict[str, Any]:
    return {
        "type": "modal", "callback_id": DISMISS_CALLBACK, "private_metadata": approval_id,
        "title": {"type": "plain_text", "text": "Dismiss incident"},
        "submit": {"type": "plain_text", "text": "Dismiss"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {
                "type": "plain_text", "emoji": False,
                "text": f"Incident {incident_id}: why is this drift expected? The reason is "
                        "recorded in the audit trail with your Slack user id."}},
            {"type": "input", "block_id": REASON_BLOCK,
             "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": REASON_ACTION,
                         "multiline": True, "min_length": 3, "max_length": MAX_REASON}},
            suppressing.modal_block(),
        ],
    }


def submitted_reason(view: dict[str, Any]) -> str:
    """The reason typed in the modal (our block and action, else the first text input)."""
    values = (view.get("state") or {}).get("values") or {}
    ours = (values.get(REASON_BLOCK) or {}).get(REASON_ACTION) or {}
    if ours.get("value"):
        return str(ours["value"]).strip()
    for actions in values.values():
        for state in (actions or {}).values():
            if isinstance(state, dict) and state.get("value"):
                return str(state["value"]).strip()
    return ""


def channel_of(body: dict[str, Any]) -> str | None:
    container = body.get("container") or {}
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    return str(channel) if channel else None


class Approvals:
    def __init__(self, executor: Executor, dispatcher: Dispatcher, client: WebClient,
                 groups: GroupResolver) -> None:
        self.executor = executor
        self.dispatcher = dispatcher
        self.client = client
        self.groups = groups

    def register(self, app: App) -> None:
        app.action(ACTION)(self.on_click)
        app.view(DISMISS_CALLBACK)(self.on_dismiss)

    # -- listeners ------------------------------------------------------------------------
    def on_click(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()  # first: the 3-second rule
        found = ACTION.match(str(action.get("action_id", "")))
        user = str((body.get("user") or {}).get("id") or "")
        approval_id = str(action.get("value") or "")
        channel = channel_of(body)
        if found is None or not user or not approval_id:
            return
        option = found.group("option")
        try:
            if option == "dismiss" and self._open_dismiss(body, approval_id, user):
                return
            self._decide(approval_id, option, user, channel, reason=None)
        except Exception as exc:  # answered already; tell the user rather than fail silently
            log.exception("slack.click_failed", approval=approval_id, option=option, user=user)
            self._ephemeral(channel, user, f"Your {option} could not be recorded "
                            f"({type(exc).__name__}); please try again.")

    def on_dismiss(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        reason = submitted_reason(view)
        if len(reason) < 3:
            ack(response_action="errors",
                errors={REASON_BLOCK: "Say why this drift is expected."})
            return
        try:
            choice = suppressing.submitted_choice(view)
        except suppressing.BadChoice as exc:
            ack(response_action="errors", errors={suppressing.SUPPRESS_BLOCK: str(exc)})
            return
        ack()
        user = str((body.get("user") or {}).get("id") or "")
        approval_id = str(view.get("private_metadata") or "")
        if not user or not approval_id:
            return
        channel = self._incident_channel(approval_id)
        reason = truncate(reason, MAX_REASON)
        try:
            outcome = self._decide(approval_id, "dismiss", user, channel, reason=reason)
        except Exception as exc:
            log.exception("slack.dismiss_failed", approval=approval_id, user=user)
            self._ephemeral(channel, user, "Your dismissal could not be recorded "
                            f"({type(exc).__name__}); please try again.")
            return
        if choice is not None:
            self._suppress(approval_id, user, channel, choice, reason, outcome)

    def _suppress(self, approval_id: str, user: str, channel: str | None, choice: str,
                  reason: str, outcome: DecisionOutcome | None) -> None:
        """Only a dismissal this user decided makes a suppression: the executor has checked
        that they may decide it."""
        if outcome is None or not outcome.decided:
            why = outcome.message if outcome is not None and outcome.ok else \
                "the dismissal was not decided by you"
            self._ephemeral(channel, user, f"No suppression was made: {why}.")
            return
        approval = self._approval(approval_id)
        if approval is None:
            return
        try:
            made = suppressing.suppress_dismissed(self.executor.engine, approval, user=user,
                                                  choice=choice, reason=reason)
        except InvalidSuppression as exc:
            self._ephemeral(channel, user, f"The incident is dismissed, but no suppression "
                            f"was made: {exc}.")
            return
        except Exception as exc:
            log.exception("slack.suppress_failed", approval=approval_id, user=user)
            self._ephemeral(channel, user, "The incident is dismissed, but the suppression "
                            f"could not be made ({type(exc).__name__}); use /drift or the "
                            "CLI to add one.")
            return
        log.info("slack.suppressed", suppression=made.id, approval=approval_id, user=user)
        self._ephemeral_mrkdwn(channel, user, suppressing.made_text(made))

    # -- work -----------------------------------------------------------------------------
    def _approval(self, approval_id: str) -> runs.ApprovalRecord | None:
        with self.executor.engine.connect() as conn:
            return runs.get_approval(conn, approval_id)

    def _groups(self, user: str, approval: runs.ApprovalRecord) -> list[str]:
        return self.groups.groups_of(user, group_handles(approval.params.get("approvers", [])))

    def _open_dismiss(self, body: dict[str, Any], approval_id: str, user: str) -> bool:
        """Open the reason modal when a decision can come of it. False: decide at once
        instead (so that a refusal or "already decided" is answered and audited)."""
        approval = self._approval(approval_id)
        trigger = body.get("trigger_id")
        if approval is None or approval.status != "pending" or not trigger:
            return False
        if "dismiss" not in approval.params.get("options", []):
            return False
        if not authorised(f"{USER_PREFIX}{user}", approval.params.get("approvers", []),
                          self._groups(user, approval)):
            return False
        self.client.views_open(trigger_id=str(trigger),
                               view=dismiss_modal(approval.id, approval.incident_id))
        return True

    def _decide(self, approval_id: str, option: str, user: str, channel: str | None, *,
                reason: str | None) -> DecisionOutcome | None:
        approval = self._approval(approval_id)
        if approval is None:
            self._ephemeral(channel, user, "No approval is waiting for a decision here.")
            return None
        outcome = self.executor.decide(approval_id=approval_id, option=option,
                                       actor=f"{USER_PREFIX}{user}", reason=reason,
                                       groups=self._groups(user, approval))
        log.info("slack.decision", approval=approval_id, option=option, user=user,
                 ok=outcome.ok, decided=outcome.decided)
        if outcome.decided:
            return outcome  # the executor dispatched the message update
        self._ephemeral(channel, user, outcome.message)
        if approval.status != "pending":
            # The user clicked on a message that no longer shows the truth: bring it up to date.
            self.dispatcher.notify(approval.incident_id)
        return outcome

    def _incident_channel(self, approval_id: str) -> str | None:
        approval = self._approval(approval_id)
        if approval is None:
            return None
        with self.executor.engine.connect() as conn:
            row = conn.execute(select(incidents.c.chat_channel, incidents.c.chat_ts)
                               .where(incidents.c.id == approval.incident_id)).first()
        if row is None or not row.chat_channel or str(row.chat_channel).startswith("posting:"):
            return None
        return str(row.chat_channel)

    def _ephemeral(self, channel: str | None, user: str, text: str) -> None:
        self._ephemeral_mrkdwn(channel, user, escape(text))

    def _ephemeral_mrkdwn(self, channel: str | None, user: str, text: str) -> None:
        """``text`` is already escaped where it carries data."""
        if channel is None:
            log.warning("slack.ephemeral_without_channel", user=user, text=text[:300])
            return
        try:
            self.client.chat_postEphemeral(channel=channel, user=user, text=text)
        except (SlackApiError, SlackClientError) as exc:
            log.warning("slack.ephemeral_failed", channel=channel, user=user,
                        error=str(exc)[:300])
