"""Block Kit rendering of an incident prompt.

Everything that comes from an alert (rule names, command lines, pod and image names) is
attacker-controlled: it is escaped (``&``, ``<``, ``>``, which also defuses ``<!channel>``,
links and mentions), sent with ``verbatim: true`` or as ``plain_text``, and truncated to Slack's
limits (3,000 characters a section, 150 a header, 50 blocks).
"""

from __future__ import annotations

import re
from typing import Any

from responder.plugins.notify.views import ApprovalView, PromptView

MAX_SECTION = 3000
MAX_HEADER = 150
MAX_BLOCKS = 50
_SLACK_USER = re.compile(r"^slack:([UW][A-Z0-9]{2,20})$")
_STYLE = {"isolate": "primary", "evict": "danger", "delete": "danger"}


def escape(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": truncate(text, MAX_SECTION), "verbatim": True}


def _plain(text: str, limit: int = MAX_SECTION) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text, limit), "emoji": False}


def who(actor: str) -> str:
    """A Slack user we know by id becomes a mention; anything else is escaped text."""
    found = _SLACK_USER.match(actor)
    return f"<@{found.group(1)}>" if found else escape(actor)


def render(view: PromptView) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks)."""
    rule = ", ".join(view.rules) or "(no rule)"
    title = f"{view.priority}: {rule}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(title, MAX_HEADER)},
        {"type": "section", "fields": [
            _mrkdwn(f"*Namespace/pod*\n{escape(view.namespace or '-')}/"
                    f"{escape(view.pod or '-')}"),
            _mrkdwn(f"*Node*\n{escape(view.node or '-')}"),
            _mrkdwn(f"*Container*\n{escape(view.container_id or '-')}"),
            _mrkdwn(f"*Image*\n{escape(view.image or '-')}"),
            _mrkdwn(f"*Alerts*\n{view.alert_count}"),
            _mrkdwn(f"*Incident*\n{escape(view.incident_id)}"),
        ]},
    ]
    if view.output:
        # A code block keeps the output's shape; escaping keeps it inert.
        blocks.append({"type": "section",
                       "text": _mrkdwn("```" + escape(truncate(view.output, 2800)) + "```")})
    if view.approval is not None:
        blocks.extend(_approval_blocks(view.approval))
    if view.steps:
        lines = [f"`{escape(s.id)}` {escape(s.uses)}: {escape(s.status)}"
                 + (f" ({escape(s.outcome)})" if s.outcome else "") for s in view.steps]
        run = f"*Run* {escape(view.playbook or '')}: {escape(view.run_status or '')}\n"
        blocks.append({"type": "section", "text": _mrkdwn(run + "\n".join(lines))})
    text = truncate(f"{title} in {view.namespace or '-'}/{view.pod or '-'}", 300)
    return escape(text), blocks[:MAX_BLOCKS]


def _approval_blocks(approval: ApprovalView) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if approval.prompt:
        blocks.append({"type": "section", "text": _mrkdwn(escape(approval.prompt))})
    if approval.status == "pending":
        votes = "".join(f"\n{who(v['by'])} asked for {escape(v['option'])}; a second approver "
                        "is needed" for v in approval.votes)
        blocks.append({"type": "context", "elements": [_mrkdwn(
            f"Decide before {escape(approval.expires)}"
            + (f" · two people for: {escape(', '.join(approval.two_person))}"
               if approval.two_person else "") + votes)]})
        blocks.append({"type": "actions", "block_id": f"approval:{approval.id}",
                       "elements": [_button(approval, option) for option in approval.options]})
        return blocks
    if approval.status == "expired":
        text = f"*Expired* at {escape(approval.decided_at or approval.expires)}: no decision"
    else:
        deciders = ", ".join(who(d) for d in approval.decided_by)
        text = (f"*Decision: {escape(approval.decided_option or '')}* by {deciders} at "
                f"{escape(approval.decided_at or '')}")
    if approval.reason:
        text += f"\nReason: {escape(approval.reason)}"
    blocks.append({"type": "section", "text": _mrkdwn(text)})
    return blocks


def _button(approval: ApprovalView, option: str) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button", "action_id": f"drift:{option}", "value": approval.id,
        "text": _plain(option.capitalize(), 75),
    }
    if option != "dismiss":  # dismiss opens a modal that asks for a reason instead
        button["confirm"] = {
            "title": _plain(f"{option.capitalize()}?", 100),
            "text": _plain(f"{option.capitalize()} this pod? The decision is recorded with "
                           "your Slack user id.", 300),
            "confirm": _plain(option.capitalize(), 30), "deny": _plain("Cancel", 30)}
    if option in _STYLE:
        button["style"] = _STYLE[option]
    return button
