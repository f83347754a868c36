"""The incident message: escaping of alert-controlled text, buttons, decisions, routing."""

from __future__ import annotations

import json
from typing import Any

from responder.plugins.notify.slack_blocks import MAX_BLOCKS, escape, render, who
from responder.plugins.notify.views import ApprovalView, PromptView, StepView
from responder.settings import Settings
from responder.workers.notifying import channel_for

HOSTILE = "<!channel> <https://evil.example|click> & <@U0BOSS> `rm -rf /`"


def _view(**overrides: object) -> PromptView:
    view = PromptView(incident_id="01INC", priority="Critical",
                      rules=["Drop and execute new binary in container"], namespace="shop",
                      pod=HOSTILE, node="node-1", container_id="4b1c9e7f2a3d",
                      image=HOSTILE, alert_count=3, output=HOSTILE * 200)
    for key, value in overrides.items():
        setattr(view, key, value)
    return view


def _pending() -> ApprovalView:
    return ApprovalView(id="01APP", status="pending", options=["isolate", "evict", "dismiss"],
                        approvers=["slack-group:secops"], two_person=["evict"],
                        prompt=HOSTILE, expires="2026-11-28T12:00:00.000000000Z")


def _without_plain_text(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get("type") == "plain_text":
            return {}
        return {k: _without_plain_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_plain_text(v) for v in value]
    return value


def test_alert_controlled_text_is_escaped_everywhere_and_nothing_pings() -> None:
    text, blocks = render(_view(approval=_pending()))
    # plain_text is shown as it is (Slack parses no markup in it): only mrkdwn must be escaped.
    dumped = json.dumps(_without_plain_text(blocks))
    assert "<!channel>" not in dumped
    assert "<!channel>" not in text
    assert "<https://evil" not in dumped
    assert "<@U0BOSS>" not in dumped
    assert "&lt;!channel&gt;" in dumped
    for block in blocks:
        for field in [block.get("text"), *(block.get("fields") or [])]:
            if field and field["type"] == "mrkdwn":
                assert field["verbatim"] is True
                assert len(field["text"]) <= 3000
    assert len(blocks) <= MAX_BLOCKS


def test_a_pending_approval_has_one_button_per_option_carrying_the_approval_id() -> None:
    _, blocks = render(_view(approval=_pending()))
    [actions] = [b for b in blocks if b["type"] == "actions"]
    buttons = actions["elements"]
    assert [(b["action_id"], b["value"], b.get("style")) for b in buttons] == [
        ("drift:isolate", "01APP", "primary"), ("drift:evict", "01APP", "danger"),
        ("drift:dismiss", "01APP", None)]
    assert "confirm" in buttons[0]
    assert "confirm" in buttons[1]
    assert "confirm" not in buttons[2]  # dismiss asks for a reason in a modal instead


def test_a_decided_approval_replaces_the_buttons_with_who_decided() -> None:
    decided = _pending()
    decided.status, decided.decided_option = "decided", "isolate"
    decided.decided_by, decided.decided_at = ["slack:U0ALICE", "cli:<b>ob"], "2026-11-28T11:00Z"
    _, blocks = render(_view(approval=decided, steps=[StepView("isolate", "kubernetes.isolate",
                                                               "succeeded", "isolated")]))
    assert not [b for b in blocks if b["type"] == "actions"]
    dumped = json.dumps(blocks)
    assert "*Decision: isolate* by <@U0ALICE>, cli:&lt;b&gt;ob" in dumped
    assert "kubernetes.isolate: succeeded (isolated)" in dumped


def test_only_well_formed_slack_user_ids_become_mentions() -> None:
    assert who("slack:U024BE7LH") == "<@U024BE7LH>"
    assert who("slack:<!here>") == escape("slack:<!here>")
    assert who("cli:alice") == "cli:alice"


def test_prompts_go_to_the_steps_channel_then_the_namespace_route_then_the_default() -> None:
    settings = Settings(slack_channel="#default", slack_namespace_channels="shop=#shop-sec")
    assert channel_for(_view(channel="#step"), settings) == "#step"
    assert channel_for(_view(), settings) == "#shop-sec"
    assert channel_for(_view(namespace="other"), settings) == "#default"
