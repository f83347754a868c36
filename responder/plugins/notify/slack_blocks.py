"""Block Kit rendering of an incident prompt.

Everything that comes from an alert (rule names, command lines, pod and image names) is
attacker-controlled: it is escaped (``&``, ``<``, ``>``, which also defuses ``<!channel>``,
links and mentions), sent with ``verbatim: true`` or as ``plain_text``, and truncated to Slack's
limits (3,000 characters a section, 150 a header, 50 blocks).
"""

from __future__ import annotations

import re
from typing import Any

from responder.plugins.notify.views import (
    ApprovalView,
    DiffEntryView,
    DigestEntry,
    FilesystemDiffView,
    ProcessTreeView,
    PromptView,
)

MAX_SECTION = 3000
MAX_HEADER = 150
MAX_BLOCKS = 50
_SLACK_USER = re.compile(r"^slack:([UW][A-Z0-9]{2,20})$")
_STYLE = {"isolate": "primary", "evict": "danger", "delete": "danger"}
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
FENCE = "```"
#: Between the backticks of a ``` inside a code block: it no longer closes the block.
_ZWSP = "\u200b"
MAX_CODE_LINE = 400
DIGEST_BLOCK_ID = "drift-digest"
_METHOD = {"node-agent": "node agent", "exec": "exec"}
_KIND = {"A": "added", "C": "changed", "D": "deleted"}


def escape(text: object) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_fit(text: str, limit: int) -> str:
    """``escape(text)``, cut (with "…") so that the *escaped* text fits ``limit``, never in the
    middle of an entity."""
    out: list[str] = []
    size = 0
    for index, char in enumerate(text):
        piece = _ENTITIES.get(char, char)
        if size + len(piece) > limit - (1 if index < len(text) - 1 else 0):
            out.append("…")
            return "".join(out)
        out.append(piece)
        size += len(piece)
    return "".join(out)


def code(text: str, limit: int = 200) -> str:
    """Inline code for alert-controlled text: Slack formats nothing inside it. Escaped; a
    backtick cannot end it, and neither can a line break (inline code stops at the end of a
    line, and the next line would be formatted as the message's own text)."""
    flat = str(text).replace("`", "\u02cb").replace("\r\n", "\u23ce").replace("\n", "\u23ce") \
        .replace("\r", "\u23ce")
    return "`" + escape_fit(flat, limit) + "`"


def code_block(text: str, limit: int = MAX_SECTION) -> str:
    """A fenced block of (escaped) lines that fits ``limit`` characters with its fences; a ```
    in the text cannot close it; long lines are cut, and so is the tail."""
    budget = limit - 2 * len(FENCE) - 2
    lines: list[str] = []
    used = 0
    for raw in text.split("\n"):
        line = escape_fit(raw.replace(FENCE, f"`{_ZWSP}`{_ZWSP}`"), MAX_CODE_LINE)
        if used + len(line) + 1 > budget:
            lines.append("…")
            break
        lines.append(line)
        used += len(line) + 1
    return FENCE + "\n".join(lines) + FENCE


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
    where = f"{view.namespace or '-'}/{view.pod or '-'}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(title, MAX_HEADER)},
        {"type": "section", "fields": [
            # Alert-controlled values as inline code: no mrkdwn formatting reaches the reader.
            _mrkdwn(f"*Namespace/pod*\n{code(where, 600)}"),
            _mrkdwn(f"*Node*\n{code(view.node or '-', 300)}"),
            _mrkdwn(f"*Container*\n{code(view.container_id or '-', 140)}"),
            _mrkdwn(f"*Image*\n{code(view.image or '-', 1000)}"),
            _mrkdwn(f"*Alerts*\n{view.alert_count}"),
            _mrkdwn(f"*Incident*\n{escape(view.incident_id)}"),
        ]},
    ]
    if view.output:
        # A code block keeps the output's shape; escaping keeps it inert.
        blocks.append({"type": "section", "text": _mrkdwn(code_block(view.output))})
    for tree in view.process_trees:
        blocks.append(process_tree_block(tree))
    for diff in view.diffs:
        blocks.append(diff_block(diff))
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
        # Playbooks fill prompts with alert fields (command lines, paths): shown as plain text,
        # so nothing in them can format or forge a line of the message.
        blocks.append({"type": "section", "text": _plain(approval.prompt)})
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
        text = f"*Expired* at {escape(approval.expires)} with no decision"
        text += (f": *{escape(approval.on_timeout)}* (on timeout) applies"
                 if approval.on_timeout else "")
    else:
        deciders = ", ".join(who(d) for d in approval.decided_by)
        text = (f"*Decision: {escape(approval.decided_option or '')}* by {deciders} at "
                f"{escape(approval.decided_at or '')}")
    if approval.reason and approval.status != "expired":
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


# ------------------------------------------------------------------------------ evidence

def assurance(method: str, level: str) -> str:
    """"node agent, high assurance" / "exec, low assurance"."""
    return f"{_METHOD.get(method, method)}, {level} assurance"


def process_tree_block(tree: ProcessTreeView) -> dict[str, Any]:
    head = (f"*Process tree* ({escape(assurance(tree.method, tree.assurance))}): "
            f"{tree.processes_total} processes in {code(tree.container_id[:12], 20)}"
            + (f" on {code(tree.node, 80)}" if tree.node else "")
            + (" (the collector's listing was truncated)" if tree.truncated else ""))
    if tree.flagged:
        head += "\n" + "\n".join(f"Flagged: {code(line, 300)}" for line in tree.flagged[:3])
    budget = MAX_SECTION - len(head) - 1
    text = head + ("\n" + code_block(tree.excerpt, budget) if tree.excerpt and budget > 40
                   else "")
    return {"type": "section", "block_id": f"evidence:{tree.step_id}"[:255],
            "text": _mrkdwn(text)}


def diff_line(entry: DiffEntryView) -> str:
    what = ("ELF" if entry.elf else "script" if entry.script else
            "executable" if entry.executable else entry.type or "")
    parts = [("⚑ flagged " if entry.flagged else "") + _KIND.get(entry.kind, escape(entry.kind)),
             code(entry.path, 300)]
    if what:
        parts.append(escape(what))
    if entry.sha256:
        parts.append(f"sha256 {code(entry.sha256[:12], 20)}")
    if entry.quarantined:
        parts.append("quarantined")
    return "• " + " ".join(parts)


def diff_block(diff: FilesystemDiffView) -> dict[str, Any]:
    head = (f"*Filesystem diff* ({escape(assurance(diff.method, diff.assurance))}): "
            f"{diff.added} added, {diff.changed} changed, {diff.deleted} deleted; "
            f"{diff.executables_added} executables added"
            + (f"; {diff.quarantined} quarantined" if diff.quarantined else "")
            + (" (listing truncated; the counts are exact)" if diff.truncated else ""))
    lines = [head]
    used = len(head)
    for index, entry in enumerate(diff.notable):
        line = diff_line(entry)
        if used + len(line) + 1 > MAX_SECTION - 40:
            lines.append(f"…and {len(diff.notable) - index} more in the thread's artifact")
            break
        lines.append(line)
        used += len(line) + 1
    return {"type": "section", "block_id": f"evidence:{diff.step_id}"[:255],
            "text": _mrkdwn("\n".join(lines))}


# ------------------------------------------------------------------------------ the digest

def render_digest(channel: str, entries: list[DigestEntry],
                  rate_per_second: float = 1.0) -> tuple[str, list[dict[str, Any]]]:
    """One message naming many waiting incidents; every value is escaped (or inline code)."""
    count = len(entries)
    title = f"{count} new drift incident{'s' if count != 1 else ''} in {channel}"
    blocks: list[dict[str, Any]] = [{
        "type": "section", "block_id": DIGEST_BLOCK_ID,
        "text": _mrkdwn(f"*{escape_fit(title, 200)}* are waiting for their own messages "
                        f"(Slack takes about {rate_per_second:g} message a second here). "
                        "See one now with `/drift show ID`; each still gets its own message, "
                        "with its approval buttons, in its turn.")}]
    lines = [digest_line(e) for e in entries]
    chunk: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        if used + len(line) + 1 > MAX_SECTION - 10:
            blocks.append({"type": "section", "text": _mrkdwn("\n".join(chunk))})
            chunk, used = [], 0
            if len(blocks) >= MAX_BLOCKS - 1:
                blocks.append({"type": "context", "elements": [_mrkdwn(
                    f"…and {count - index} more: `/drift list`")]})
                chunk = []
                break
        chunk.append(line)
        used += len(line) + 1
    if chunk:
        blocks.append({"type": "section", "text": _mrkdwn("\n".join(chunk))})
    return escape(title), blocks[:MAX_BLOCKS]


def digest_line(entry: DigestEntry) -> str:
    where = f"{entry.namespace or '-'}/{entry.pod or '-'}"
    rules = ", ".join(entry.rules) or "(no rule)"
    return (f"• *{escape_fit(entry.priority, 20)}* {code(where, 300)} "
            f"{code(rules, 300)} · {code(entry.incident_id, 40)}")
