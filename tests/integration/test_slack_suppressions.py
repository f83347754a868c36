"""Suppressions from Slack, end to end: real ingest, worker and bot processes, the fake Slack Web
API and the fake Kubernetes API (see test_slack_bot.py, whose stack this module reuses), with
requests signed as Slack signs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from responder.store import suppressions as store
from tests.fakes.slack_api import view_submission_payload
from tests.integration.test_slack_bot import (
    ALICE,
    BOB,
    MALLORY,
    OPS,
    Bot,
    button,
    kinds,
    launched,
)
from tests.support.processes import wait_for
from tests.support.samples import drift_alert

RULE = "Drop and execute new binary in container"


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    with launched(tmp_path_factory.mktemp("slack-suppressions"),
                  {"DRIFT_SUPPRESSION_REFRESH_SECONDS": "0.5"}) as running:
        yield running


def alert_from(pod: dict[str, Any], container: int, seq: int = 0) -> dict[str, Any]:
    """What Falco reports for a drift in this pod (as Bot.incident builds it)."""
    alert = drift_alert(container, seq=seq)
    alert["output_fields"]["k8s.ns.name"] = pod["metadata"]["namespace"]
    alert["output_fields"]["k8s.pod.name"] = pod["metadata"]["name"]
    alert["hostname"] = pod["spec"]["nodeName"]
    return alert


def post(bot: Bot, alert: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(bot.stack.url + "/v1/falco", json=alert,
                          headers={"Authorization": "Bearer stack-token"}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def until_suppressed(bot: Bot, alert: dict[str, Any], suppressed: bool) -> None:
    """Post (a fresh copy of) ``alert`` until the ingest has refreshed its suppressions."""
    seq = iter(range(1000, 2000))

    def refreshed() -> bool:
        probe = {**alert, "uuid": f"{alert['uuid'][:24]}{next(seq):012d}"}
        return bool(post(bot, probe).get("suppressed")) == suppressed

    wait_for(refreshed, 30, 0.2, what="the ingest to refresh its suppressions")


def suppressions(bot: Bot) -> list[store.Suppression]:
    engine = bot.stack.engine()
    try:
        with engine.connect() as conn:
            return store.list_suppressions(conn, now_ns=0, include_inactive=True)
    finally:
        engine.dispose()


def dismiss(bot: Bot, user: str, incident: str, values: dict[str, Any]) -> httpx.Response:
    message = bot.prompt(incident)
    approval = button(message, "dismiss")["value"]
    views = len(bot.slack.views)
    bot.click(user, "dismiss", message)
    opened = wait_for(lambda: bot.slack.views[views:], 10, what="the modal")[-1]
    reason = next(b for b in opened.view["blocks"] if b.get("block_id") == "reason")
    state = {"reason": {reason["element"]["action_id"]: values.pop("reason")}, **values}
    return bot.send(view_submission_payload(user, "drift_dismiss", approval, state,
                                            view=opened.view))


def chosen(value: str) -> dict[str, Any]:
    return {"suppress": {"suppress": {"type": "static_select", "selected_option": {
        "text": {"type": "plain_text", "text": value}, "value": value}}}}


def test_dismissing_with_suppress_stops_similar_alerts_until_it_is_lifted(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "indexer", labels={"app": "indexer"}, replicas=4)
    pods = workload.pods
    incident = bot.incident(pods[0], 41)

    message = bot.prompt(incident)
    bot.click(BOB, "dismiss", message)
    opened = wait_for(lambda: bot.slack.views, 10, what="the modal")[-1]
    offered = next(b for b in opened.view["blocks"] if b.get("block_id") == "suppress")
    assert offered["optional"] is True
    assert [o["value"] for o in offered["element"]["options"]] == ["1h", "24h", "7d"]
    reason = next(b for b in opened.view["blocks"] if b.get("block_id") == "reason")
    submitted = bot.send(view_submission_payload(
        BOB, "drift_dismiss", opened.view["private_metadata"],
        {"reason": {reason["element"]["action_id"]: "reindexing job drops its helper"},
         **chosen("24h")}, view=opened.view))
    assert submitted.status_code == 200, submitted.text
    bot.stack.wait_run(incident, "succeeded")

    try:
        created = wait_for(lambda: kinds(bot.stack.records(incident), "suppression.created"), 10,
                           what="suppression.created")
    except AssertionError:
        raise AssertionError(f"no suppression.created; logs:\n{bot.logs()}") from None
    assert [(r.actor, r.data["reason"], r.data["max_priority"], r.data["source"])
            for r in created] == [(f"slack:{BOB}", "reindexing job drops its helper",
                                   "Critical", "slack dismiss")]
    assert created[0].data["match"] == {
        "rule": RULE, "namespace": "shop", "pod_prefix": "indexer-",
        "image": "registry.example.com/shop/web"}
    assert created[0].data["duration_seconds"] == 24 * 3600
    sid = created[0].data["suppression"]
    told = wait_for(lambda: [e for e in bot.ephemerals(BOB) if sid in e["text"]], 10,
                    what="the confirmation")
    assert "Similar alerts are suppressed until" in told[0]["text"]

    # Another pod of the workload: accepted, counted, but no incident and no prompt.
    until_suppressed(bot, alert_from(pods[1], 42), suppressed=True)
    answer = post(bot, alert_from(pods[2], 43))
    assert (answer["accepted"], answer["incidents"], answer["suppressed"]) == (1, [], 1)
    other = pods[2]["metadata"]["name"]
    assert not [m for m in bot.slack.messages("#secops") if other in json.dumps(m)]

    listed = bot.command(MALLORY, "suppressions")["text"]
    assert sid in listed
    assert "indexer-*" in listed
    assert f"<@{BOB}>" in listed
    helped = bot.command(MALLORY, "help")["text"]
    assert "/drift suppressions" in helped
    assert "/drift lift" in helped

    refused = bot.command(MALLORY, f"lift {sid} not my noise")["text"]
    assert "You may not lift this suppression" in refused
    assert "Usage" in bot.command(BOB, f"lift {sid}")["text"]
    lifted = bot.command(BOB, f"lift {sid} reindexing is finished")["text"]  # who made it
    assert f"Suppression `{sid}` lifted" in lifted
    again = bot.command(OPS, f"lift {sid} reindexing is finished")["text"]
    assert "already lifted" in again

    records = bot.stack.records()
    assert [(r.actor, r.data["reason"]) for r in kinds(records, "suppression.lifted")] == [
        (f"slack:{BOB}", "reindexing is finished")]
    lifts = [(r.actor, r.data["outcome"]) for r in kinds(records, "slack.command")
             if r.data["subcommand"] == "lift"]
    assert lifts == [(f"slack:{MALLORY}", "refused: not a command user"),
                     (f"slack:{BOB}", "usage"), (f"slack:{BOB}", "lifting"),
                     (f"slack:{OPS}", "lifting")]

    # Lifted: the workload's alerts open incidents again.
    until_suppressed(bot, alert_from(pods[3], 44), suppressed=False)
    assert next(s.hits for s in suppressions(bot) if s.id == sid) >= 2


def test_a_dismissal_without_suppress_makes_no_suppression(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "mailer", labels={"app": "mailer"}, replicas=2)
    incident = bot.incident(workload.pods[0], 45)
    before = len(suppressions(bot))
    assert dismiss(bot, ALICE, incident, {"reason": "test mail relay"}).status_code == 200
    bot.stack.wait_run(incident, "succeeded")
    assert not kinds(bot.stack.records(incident), "suppression.created")
    assert len(suppressions(bot)) == before


def test_a_forged_submission_by_a_non_approver_suppresses_nothing(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "ledger", labels={"app": "ledger"}, replicas=2)
    incident = bot.incident(workload.pods[0], 46)
    message = bot.prompt(incident)
    approval = button(message, "dismiss")["value"]
    before = len(bot.ephemerals(MALLORY))

    forged = view_submission_payload(MALLORY, "drift_dismiss", approval,
                                     {"reason": {"reason": "let me in"}, **chosen("7d")})
    assert bot.send(forged).status_code == 200
    told = wait_for(lambda: bot.ephemerals(MALLORY)[before + 1:], 10, what="the refusals")
    assert "No suppression was made" in told[-1]["text"]
    assert bot.stack.run_of(incident)["status"] == "waiting"  # type: ignore[index]
    records = bot.stack.records(incident)
    assert [r.actor for r in kinds(records, "approval.refused")] == [f"slack:{MALLORY}"]
    assert not kinds(records, "suppression.created")


def test_a_duration_the_modal_never_offered_is_refused_in_the_modal(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "ticker", labels={"app": "ticker"}, replicas=2)
    incident = bot.incident(workload.pods[0], 47)
    answer = dismiss(bot, ALICE, incident, {"reason": "market data feed", **chosen("forever")})
    assert answer.status_code == 200
    assert answer.json() == {"response_action": "errors",
                             "errors": {"suppress": "Choose one of the durations offered."}}
    assert bot.stack.run_of(incident)["status"] == "waiting"  # type: ignore[index]
