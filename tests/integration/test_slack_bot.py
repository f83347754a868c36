"""The Slack bot end to end: real ingest, worker and `drift-responder bot` processes, the fake
Slack Web API (tests/fakes/slack_api.py) and the fake Kubernetes API. Requests to the bot are
signed exactly as Slack signs them and posted over HTTP to the real bolt app.

Most tests share one embedded stack (module scope, each test with its own pods and incidents);
the end-to-end click also runs on the production backends (PostgreSQL, Redis broker, Redis
replay memory) under `make soak` (the Redis replay memory is also in test_slack_security.py).
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from responder.kube.pods import QUARANTINE_LABEL
from responder.models.audit import AuditRecord
from tests.conftest import REDIS_URL
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.slack_api import (
    FakeSlack,
    block_actions_payload,
    signed_request_headers,
    slash_command_body,
    view_submission_payload,
)
from tests.support.processes import CLI, REPO, base_env, free_port, wait_for, wait_http
from tests.support.samples import drift_alert
from tests.support.stack import Stack
from tests.support.variants import production_in_soak

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "#secops"
ALICE, BOB = "UALICE0001", "UBOB000001"  # approvers by user id
CAROL = "UCAROL0001"  # approver through the secops user group
MALLORY = "UMALLORY01"  # nobody
OPS = "UOPS000001"  # a command user by id
DAVE = "UDAVE00001"  # a command user through the oncall user group

PLAYBOOK = """
name: slack-respond
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - id: context
    uses: kubernetes.pod_context
    with:
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      container_id: "{{ alert.container_id }}"
      node: "{{ incident.node }}"
    on_failure: continue
  - id: ask
    uses: core.approval
    with:
      options: [isolate, evict, dismiss]
      approvers: ["slack:UALICE0001", "slack:UBOB000001", "slack-group:secops"]
      two_person: [evict]
      expires_after_seconds: 900
  - id: isolate
    uses: kubernetes.isolate
    if: steps.ask.result.option == 'isolate' and steps.context.result.found
    with:
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      uid: "{{ steps.context.result.uid }}"
  - id: evict
    uses: kubernetes.evict
    if: steps.ask.result.option == 'evict' and steps.context.result.found
    with:
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      uid: "{{ steps.context.result.uid }}"
      grace_period_seconds: 0
"""


@dataclass
class Bot:
    stack: Stack
    slack: FakeSlack
    kube: FakeKubernetes
    url: str

    @property
    def channel_id(self) -> str:
        return self.slack.channel_id(CHANNEL)

    # -- requests Slack sends ---------------------------------------------------------------
    def send(self, body: bytes, *, timestamp: int | None = None, secret: str = SECRET,
             headers: dict[str, str] | None = None) -> httpx.Response:
        headers = headers or signed_request_headers(secret, body, timestamp)
        return httpx.post(self.url + "/slack/events", content=body, headers=headers, timeout=10)

    def click(self, user: str, option: str, message: dict[str, Any]) -> httpx.Response:
        body = block_actions_payload(user, f"drift:{option}", button(message, option)["value"],
                                     self.channel_id, message["ts"], message=message)
        response = self.send(body)
        assert response.status_code == 200, response.text
        return response

    def command(self, user: str, text: str) -> dict[str, Any]:
        """Run /drift TEXT as USER; the reply posted to the command's response URL."""
        url = self.slack.response_url(CHANNEL, user=user, kind="commands")
        response = self.send(slash_command_body(user, "/drift", text, self.channel_id, url))
        assert response.status_code == 200, response.text
        return wait_for(lambda: next((r.payload for r in self.slack.responses if r.url == url),
                                     None), 15, 0.05, what=f"/drift {text}")  # type: ignore[no-any-return]

    # -- state ------------------------------------------------------------------------------
    def incident(self, pod: dict[str, Any], container: int) -> str:
        alert = drift_alert(container)
        alert["output_fields"]["k8s.ns.name"] = pod["metadata"]["namespace"]
        alert["output_fields"]["k8s.pod.name"] = pod["metadata"]["name"]
        alert["hostname"] = pod["spec"]["nodeName"]
        full = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
        alert["output_fields"]["container.full_id"] = full
        alert["output_fields"]["container.id"] = full[:12]
        incident = self.stack.post(alert)
        self.stack.wait_run(incident, "waiting")
        return incident

    def prompt(self, incident: str, contains: str = "", timeout: float = 20) -> dict[str, Any]:
        """The incident's message once it shows ``contains`` (default: the buttons)."""
        def found() -> dict[str, Any] | None:
            for message in self.slack.messages(CHANNEL):
                blocks = json.dumps(message.get("blocks", []))
                if incident in blocks and (contains in blocks if contains else buttons(message)):
                    return message
            return None

        try:
            return wait_for(found, timeout, 0.05, what=f"the message of {incident}")  # type: ignore[no-any-return]
        except AssertionError:
            shown = [m for m in self.slack.messages(CHANNEL) if incident in json.dumps(m)]
            raise AssertionError(f"message now: {shown}\n{self.logs()}") from None

    def ephemerals(self, user: str) -> list[dict[str, Any]]:
        """What chat.postEphemeral showed USER (replies to commands are not included)."""
        return [r.args for r in self.slack.calls("chat.postEphemeral")
                if r.ok and r.args.get("user") == user]

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.output()[-3000:]}" for s in self.stack.services)


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for b in message.get("blocks", []) if b["type"] == "actions"
            for e in b["elements"] if e["type"] == "button"]


def button(message: dict[str, Any], option: str) -> dict[str, Any]:
    return next(b for b in buttons(message) if b["action_id"] == f"drift:{option}")


def kinds(records: list[AuditRecord], kind: str) -> list[AuditRecord]:
    return [r for r in records if r.kind == kind]


@contextmanager
def launched(tmp: Path, extra: dict[str, str]) -> Iterator[Bot]:
    with FakeSlack() as slack, FakeKubernetes(namespaces=["shop", "kube-system"]) as kube:
        slack.add_channel(CHANNEL)
        slack.add_usergroup("secops", users=[CAROL])
        slack.add_usergroup("oncall", users=[DAVE])
        (tmp / "pb").mkdir()
        (tmp / "pb" / "respond.yaml").write_text(textwrap.dedent(PLAYBOOK))
        env = base_env({
            "DRIFT_DATA_DIR": str(tmp / "data"), "DRIFT_PLAYBOOKS_DIR": str(tmp / "pb"),
            "DRIFT_INGEST_TOKEN": "stack-token", "DRIFT_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "DRIFT_LEASE_GRACE_SECONDS": "1", "DRIFT_KUBE_HOST": kube.host,
            "SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": SECRET,
            "DRIFT_SLACK_API_URL": slack.base_url, "DRIFT_SLACK_CHANNEL": CHANNEL,
            "DRIFT_SLACK_COMMAND_USERS": f"{OPS},slack-group:oncall", **extra})
        env.pop("SLACK_APP_TOKEN", None)
        stack = Stack(env, tmp)
        try:
            worker = stack.start("worker", "--pool", "solo", name="worker")
            if "DRIFT_REDIS_URL" not in extra:
                _wait_for_embedded_queue(tmp / "data" / "broker.db", env["DRIFT_QUEUE"], worker)
            port = free_port()
            service = stack.start("bot", "--port", str(port), name="bot")  # while the ingest starts
            stack.ingest()
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/healthz", service)
            yield Bot(stack, slack, kube, url)
        finally:
            stack.stop()
        assert not slack.errors, slack.errors


def _wait_for_embedded_queue(broker: Path, queue: str, worker: Any) -> None:
    """Let the worker create the queue in the embedded broker before anyone sends to it: kombu's
    SQLAlchemy transport creates a queue row on first use, and two processes doing that at the
    same moment collide on its unique name."""
    def declared() -> bool:
        if not worker.alive():
            raise AssertionError(f"worker exited:\n{worker.output()}")
        if not broker.exists():
            return False
        try:
            with sqlite3.connect(broker, timeout=1) as conn:
                return conn.execute("SELECT 1 FROM kombu_queue WHERE name = ?",
                                    (queue,)).fetchone() is not None
        except sqlite3.OperationalError:  # tables not created yet
            return False

    wait_for(declared, 30, 0.05, what="the worker's queue")


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bot]:
    with launched(tmp_path_factory.mktemp("slack-bot"), {}) as running:
        yield running


@pytest.fixture
def production_bot(tmp_path: Path, postgres_url: str, redis_prefix: str) -> Iterator[Bot]:
    with launched(tmp_path, {"DRIFT_DATABASE_URL": postgres_url, "DRIFT_REDIS_URL": REDIS_URL,
                             "DRIFT_REDIS_PREFIX": redis_prefix}) as running:
        yield running


@pytest.fixture(params=["embedded", "production"])
def any_bot(request: pytest.FixtureRequest) -> Bot:
    name = "bot" if request.param == "embedded" else "production_bot"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@production_in_soak("any_bot")
def test_a_click_by_a_group_member_isolates_the_pod_and_updates_the_message(
    any_bot: Bot,
) -> None:
    bot = any_bot
    workload = bot.kube.add_workload("shop", "web", labels={"app": "web"}, replicas=3)
    suspect = workload.pods[1]
    name = suspect["metadata"]["name"]
    incident = bot.incident(suspect, 1)

    message = bot.prompt(incident)

    def posted() -> list[Any]:
        # The fake stores the message before it finishes logging the call: wait for the log.
        return [r for r in bot.slack.calls("chat.postMessage")
                if r.response is not None and r.ok and r.response.get("ts") == message["ts"]]

    wait_for(posted, 5, 0.05, what="the chat.postMessage call record")
    assert len(posted()) == 1
    assert {b["action_id"] for b in buttons(message)} == {
        "drift:isolate", "drift:evict", "drift:dismiss"}
    approval = button(message, "isolate")["value"]
    assert {b["value"] for b in buttons(message)} == {approval}

    bot.click(CAROL, "isolate", message)
    bot.stack.wait_run(incident, "succeeded")
    assert bot.kube.pod("shop", name)["metadata"]["labels"] == {  # type: ignore[index]
        QUARANTINE_LABEL: incident}
    others = [p for p in bot.kube.objects("Pod", "shop")
              if QUARANTINE_LABEL in p["metadata"].get("labels", {})]
    assert [p["metadata"]["name"] for p in others] == [name]

    updated = bot.prompt(incident, contains="Decision: isolate")
    assert f"<@{CAROL}>" in json.dumps(updated["blocks"])
    assert not buttons(updated)
    assert bot.slack.calls("usergroups.users.list")

    decided = kinds(bot.stack.records(incident), "approval.decided")
    assert [(r.actor, r.data["option"], r.data["decided_by"]) for r in decided] == [
        (f"slack:{CAROL}", "isolate", [f"slack:{CAROL}"])]
    assert kinds(bot.stack.records(incident), "kubernetes.after")

    # The same signed click again (a replay) is refused before it reaches bolt.
    replay = block_actions_payload(CAROL, "drift:isolate", approval, bot.channel_id,
                                   message["ts"], message=message)
    headers = signed_request_headers(SECRET, replay)
    assert bot.send(replay, headers=headers).status_code == 200  # already decided: ephemeral
    assert bot.send(replay, headers=headers).status_code == 401
    wait_for(lambda: any("already decided" in e["text"] for e in bot.ephemerals(CAROL)), 10,
             what="the 'already decided' ephemeral")


def test_bad_signatures_stale_and_replayed_requests_get_401(bot: Bot) -> None:
    url = bot.slack.response_url(CHANNEL, user=ALICE, kind="commands")
    body = slash_command_body(ALICE, "/drift", "help", bot.channel_id, url)
    assert bot.send(body, secret="not-the-secret").status_code == 401
    assert bot.send(body, timestamp=int(time.time()) - 6 * 60).status_code == 401
    malformed = {**signed_request_headers(SECRET, body), "X-Slack-Request-Timestamp": "soon"}
    assert bot.send(body, headers=malformed).status_code == 401
    unsigned = {"Content-Type": "application/x-www-form-urlencoded"}
    assert bot.send(body, headers=unsigned).status_code == 401
    tampered = signed_request_headers(SECRET, body)
    assert bot.send(body.replace(b"help", b"list"), headers=tampered).status_code == 401
    headers = signed_request_headers(SECRET, body)
    assert bot.send(body, headers=headers).status_code == 200
    assert bot.send(body, headers=headers).status_code == 401  # the same request again
    wait_for(lambda: [r for r in bot.slack.responses if r.url == url], 10, what="the help")
    time.sleep(0.3)
    assert len([r for r in bot.slack.responses if r.url == url]) == 1
    helps = [r for r in kinds(bot.stack.records(), "slack.command")
             if r.actor == f"slack:{ALICE}" and r.data["subcommand"] == "help"]
    assert len(helps) == 1


def test_an_unauthorised_click_is_refused_to_that_user_and_audited(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "cart", labels={"app": "cart"}, replicas=2)
    incident = bot.incident(workload.pods[0], 2)
    message = bot.prompt(incident)
    before = len(bot.ephemerals(MALLORY))

    bot.click(MALLORY, "isolate", message)
    refusal = wait_for(lambda: bot.ephemerals(MALLORY)[before:], 10, what="the refusal")[0]
    assert refusal["channel"] == bot.channel_id
    assert f"slack:{MALLORY} is not an approver" in refusal["text"]
    refused = wait_for(lambda: kinds(bot.stack.records(incident), "approval.refused"), 10,
                       what="approval.refused")
    assert [(r.actor, r.data["option"]) for r in refused] == [(f"slack:{MALLORY}", "isolate")]
    assert bot.stack.run_of(incident)["status"] == "waiting"  # type: ignore[index]
    assert not kinds(bot.stack.records(incident), "approval.decided")
    assert QUARANTINE_LABEL not in bot.kube.pod(  # type: ignore[index]
        "shop", workload.pods[0]["metadata"]["name"])["metadata"]["labels"]

    # Dismissing is a decision too: no modal for someone who may not decide.
    views = len(bot.slack.views)
    bot.click(MALLORY, "dismiss", message)
    wait_for(lambda: len(bot.ephemerals(MALLORY)) == before + 2, 10,
             what="the second refusal")
    assert len(bot.slack.views) == views


def test_two_concurrent_clicks_make_exactly_one_decision(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "pay", labels={"app": "pay"}, replicas=2)
    incident = bot.incident(workload.pods[0], 3)
    message = bot.prompt(incident)
    before = {user: len(bot.ephemerals(user)) for user in (ALICE, BOB)}
    barrier = threading.Barrier(2)
    answers: dict[str, int] = {}

    def click(user: str) -> None:
        body = block_actions_payload(user, "drift:isolate", button(message, "isolate")["value"],
                                     bot.channel_id, message["ts"], message=message)
        headers = signed_request_headers(SECRET, body)
        barrier.wait()
        answers[user] = bot.send(body, headers=headers).status_code

    threads = [threading.Thread(target=click, args=(user,)) for user in (ALICE, BOB)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert answers == {ALICE: 200, BOB: 200}
    bot.stack.wait_run(incident, "succeeded")
    def notes() -> list[dict[str, Any]]:
        return [e for user in (ALICE, BOB) for e in bot.ephemerals(user)[before[user]:]]

    loser_notes = wait_for(notes, 10, what="the loser's ephemeral")
    decided = kinds(bot.stack.records(incident), "approval.decided")
    assert len(decided) == 1
    winner = decided[0].actor.removeprefix("slack:")
    assert len(loser_notes) == 1
    assert loser_notes[0]["user"] == ({ALICE, BOB} - {winner}).pop()
    assert re.search(r"already decided|someone else decided first", loser_notes[0]["text"])
    bot.prompt(incident, contains=f"<@{winner}>")


def test_the_two_person_rule_needs_two_different_approvers(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "api", labels={"app": "api"}, replicas=2)
    suspect = workload.pods[0]
    incident = bot.incident(suspect, 4)
    message = bot.prompt(incident)
    before = len(bot.ephemerals(ALICE))

    bot.click(ALICE, "evict", message)
    first = wait_for(lambda: bot.ephemerals(ALICE)[before:], 10, what="the vote receipt")
    assert "first of two approvals recorded" in first[-1]["text"]
    voted = bot.prompt(incident, contains="a second approver is needed")
    assert f"<@{ALICE}> asked for evict" in json.dumps(voted["blocks"])
    assert buttons(voted)

    bot.click(ALICE, "evict", voted)
    again = wait_for(lambda: bot.ephemerals(ALICE)[before + 1:], 10,
                     what="the refusal of a second vote")
    assert "already voted for evict" in again[-1]["text"]
    assert bot.stack.run_of(incident)["status"] == "waiting"  # type: ignore[index]

    bot.click(BOB, "evict", voted)
    run = bot.stack.wait_run(incident, "succeeded")
    assert run["state"]["steps"]["evict"]["result"]["status"] == "evicted"
    assert bot.kube.pod("shop", suspect["metadata"]["name"]) is None
    records = bot.stack.records(incident)
    assert [r.actor for r in kinds(records, "approval.vote")] == [f"slack:{ALICE}"]
    decided = kinds(records, "approval.decided")
    assert [r.data["decided_by"] for r in decided] == [[f"slack:{ALICE}", f"slack:{BOB}"]]
    bot.prompt(incident, contains="Decision: evict")


def test_dismiss_asks_for_a_reason_in_a_modal_and_records_it(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "search", labels={"app": "search"}, replicas=2)
    incident = bot.incident(workload.pods[0], 5)
    message = bot.prompt(incident)
    approval = button(message, "dismiss")["value"]

    bot.click(BOB, "dismiss", message)
    opened = wait_for(lambda: bot.slack.views, 10, what="the modal")[-1]
    assert opened.view["callback_id"] == "drift_dismiss"
    assert opened.view["private_metadata"] == approval
    assert bot.stack.run_of(incident)["status"] == "waiting"  # type: ignore[index]
    field = next(b for b in opened.view["blocks"] if b["type"] == "input")

    reason = "planned <debug> build & test"
    submitted = bot.send(view_submission_payload(
        BOB, "drift_dismiss", approval,
        {field["block_id"]: {field["element"]["action_id"]: reason}}, view=opened.view))
    assert submitted.status_code == 200, submitted.text
    bot.stack.wait_run(incident, "succeeded")
    decided = kinds(bot.stack.records(incident), "approval.decided")
    assert [(r.actor, r.data["option"], r.data["reason"]) for r in decided] == [
        (f"slack:{BOB}", "dismiss", reason)]
    updated = bot.prompt(incident, contains="Decision: dismiss")
    assert "Reason: planned &lt;debug&gt; build &amp; test" in json.dumps(updated["blocks"])


def test_alert_controlled_text_is_escaped_in_the_message_and_replies(bot: Bot) -> None:
    evil = "<!channel> <https://evil.example|click> & <@U0ADMIN01>"
    bot.kube.add_pod("shop", "lonely-1", labels={"app": "lonely"})
    alert = drift_alert(6)
    alert["output_fields"].update({"k8s.ns.name": "shop", "k8s.pod.name": "lonely-1",
                                   "container.image.repository": "evil<!everyone>/img"})
    alert.update({"output": f"Drift! {evil}", "hostname": "node<!here>&"})
    incident = bot.stack.post(alert)
    message = bot.prompt(incident)
    posted = json.dumps(message["blocks"]) + message["text"]
    for raw in ("<!channel>", "<!here>", "<!everyone>", "<https://evil", "<@U0ADMIN01>"):
        assert raw not in posted
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp;" in posted
    assert "node&lt;!here&gt;&amp;" in posted

    shown = bot.command(ALICE, f"show {incident}")["text"]
    listed = bot.command(ALICE, "list")["text"]
    for text in (shown, listed):
        assert "<!" not in text
    assert "node&lt;!here&gt;&amp;" in shown
    assert "evil&lt;!everyone&gt;/img" in shown


def test_a_rate_limited_post_is_sent_after_retry_after(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "mail", labels={"app": "mail"}, replicas=2)
    bot.slack.rate_limit("chat.postMessage", times=1, retry_after=1)
    incident = bot.incident(workload.pods[0], 7)
    message = bot.prompt(incident)
    limited = [r for r in bot.slack.calls("chat.postMessage") if r.status == 429]
    assert len(limited) == 1
    assert limited[0].response["error"] == "ratelimited"
    ours = [m for m in bot.slack.messages(CHANNEL) if incident in json.dumps(m.get("blocks"))]
    assert len(ours) == 1  # re-queued, never posted twice
    # The re-queued task ran after Retry-After (a post, or an update of what another posted).
    later = lambda: [r for r in bot.slack.requests  # noqa: E731
                     if r.method in ("chat.postMessage", "chat.update") and r.ok
                     and r.response["ts"] == message["ts"]
                     and r.received_at >= limited[0].received_at + 0.9]
    wait_for(later, 10, what="the retried notification")


def test_slash_commands_list_show_and_only_command_users_change_pods(bot: Bot) -> None:
    workload = bot.kube.add_workload("shop", "queue", labels={"app": "queue"}, replicas=3)
    incident = bot.incident(workload.pods[0], 8)
    bot.prompt(incident)

    listed = bot.command(MALLORY, "list")["text"]
    assert incident in listed
    assert "Open incidents" in listed
    shown = bot.command(MALLORY, f"show {incident}")["text"]
    assert f"shop/{workload.pods[0]['metadata']['name']}" in shown
    assert "*Approval* pending" in shown
    assert "Usage" in bot.command(MALLORY, "show")["text"]
    assert "/drift isolate" in bot.command(MALLORY, "help")["text"]

    target = f"shop/{workload.pods[1]['metadata']['name']}"
    refused = bot.command(MALLORY, f"isolate {target}")["text"]
    assert "You may not isolate" in refused
    labels = bot.kube.pod("shop", workload.pods[1]["metadata"]["name"])["metadata"]["labels"]  # type: ignore[index]
    assert QUARANTINE_LABEL not in labels
    mine = [r for r in kinds(bot.stack.records(), "slack.command") if r.actor == f"slack:{MALLORY}"]
    assert [(r.data["subcommand"], r.data["outcome"]) for r in mine][-1] == (
        "isolate", "refused: not a command user")
    assert {r.data["subcommand"] for r in mine} >= {"list", "show", "help", "isolate"}

    isolated = bot.command(OPS, f"isolate {target}")["text"]
    assert "*isolated*" in isolated
    labels = bot.kube.pod("shop", workload.pods[1]["metadata"]["name"])["metadata"]["labels"]  # type: ignore[index]
    assert labels == {QUARANTINE_LABEL: "manual"}
    released = bot.command(OPS, f"release {target}")["text"]
    assert "*released*" in released
    manual = [(r.kind, r.actor) for r in bot.stack.records() if r.kind.startswith("manual.")]
    assert ("manual.isolate", f"slack:{OPS}") in manual
    assert ("manual.release", f"slack:{OPS}") in manual

    assert "NAMESPACE/POD" in bot.command(OPS, "isolate kube-system")["text"]
    protected = bot.command(OPS, "release kube-system/coredns-0")["text"]
    assert "*error*" in protected

    # evict asks first; the confirmation by a group member evicts.
    victim = workload.pods[2]["metadata"]["name"]
    question = bot.command(DAVE, f"evict shop/{victim}")
    assert bot.kube.pod("shop", victim) is not None
    confirm = next(e for b in question["blocks"] if b["type"] == "actions"
                   for e in b["elements"] if e["action_id"] == "drift-cmd:evict")
    answer_url = bot.slack.response_url(CHANNEL, user=DAVE)
    body = block_actions_payload(MALLORY, confirm["action_id"], confirm["value"],
                                 bot.channel_id, "1.000001", response_url=answer_url)
    assert bot.send(body).status_code == 200
    wait_for(lambda: [r for r in bot.slack.responses if r.url == answer_url], 10,
             what="the refused confirmation")
    assert bot.kube.pod("shop", victim) is not None
    body = block_actions_payload(DAVE, confirm["action_id"], confirm["value"],
                                 bot.channel_id, "1.000002", response_url=answer_url)
    assert bot.send(body).status_code == 200
    wait_for(lambda: bot.kube.pod("shop", victim) is None, 10, what="the eviction")
    done = wait_for(lambda: [r.payload for r in bot.slack.responses
                             if r.url == answer_url and r.payload.get("replace_original")],
                    10, what="the eviction reply")
    assert "*evicted*" in done[0]["text"]
    evicts = [(r.data["stage"], r.data["outcome"])
              for r in kinds(bot.stack.records(), "slack.command")
              if r.data["subcommand"] == "evict"]
    assert evicts == [("command", "confirmation requested"),
                      ("confirm", "refused: not a command user"), ("confirm", "confirmed")]
    assert ("manual.evict", f"slack:{DAVE}") in [
        (r.kind, r.actor) for r in bot.stack.records() if r.kind.startswith("manual.")]


@pytest.mark.parametrize(("missing", "says"), [
    ("SLACK_BOT_TOKEN", "SLACK_BOT_TOKEN is not set"),
    ("SLACK_SIGNING_SECRET", "SLACK_SIGNING_SECRET is not set"),
])
def test_the_bot_refuses_to_start_without_its_secrets(tmp_path: Path, missing: str,
                                                      says: str) -> None:
    env = base_env({"DRIFT_DATA_DIR": str(tmp_path), "SLACK_BOT_TOKEN": "xoxb-test",
                    "SLACK_SIGNING_SECRET": SECRET})
    env.pop("SLACK_APP_TOKEN", None)
    del env[missing]
    done = subprocess.run([*CLI, "bot", "--port", str(free_port())], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert says in done.stderr
