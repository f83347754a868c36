"""The Slack bot in Socket Mode, end to end: real ingest, worker and `drift-responder bot`
processes; the bot has SLACK_APP_TOKEN and no signing secret, opens its connection with
`apps.connections.open` on the fake Slack Web API (tests/fakes/slack_api.py) and receives
envelopes over the WebSocket of tests/fakes/slack_socket.py, acking each on the socket.

One embedded stack for the module; each test has its own pods and incidents. The reconnection
tests come last: they leave the bot on a newer connection.
"""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from responder.kube.pods import QUARANTINE_LABEL
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.slack_api import (
    FakeSlack,
    block_actions_payload,
    slash_command_body,
    view_submission_payload,
)
from tests.fakes.slack_socket import (
    Envelope,
    FakeSocketMode,
    interactive_payload,
    slash_command_payload,
)
from tests.integration.test_slack_bot import (
    ALICE,
    CAROL,
    CHANNEL,
    MALLORY,
    OPS,
    PLAYBOOK,
    _wait_for_embedded_queue,
    button,
    buttons,
    kinds,
)
from tests.support.processes import CLI, REPO, Service, base_env, free_port, wait_for
from tests.support.samples import drift_alert
from tests.support.stack import Stack

ACK_WITHIN_S = 3.0  # Slack's deadline for acknowledging an envelope


@dataclass
class SocketBot:
    stack: Stack
    slack: FakeSlack
    socket: FakeSocketMode
    kube: FakeKubernetes
    service: Service
    port: int  # given as --port; Socket Mode listens on nothing

    @property
    def channel_id(self) -> str:
        return self.slack.channel_id(CHANNEL)

    # -- envelopes Slack sends --------------------------------------------------------------
    def acked(self, envelope: Envelope) -> dict[str, Any] | None:
        """Wait for the ack of ``envelope``; check it came in time; return its payload."""
        try:
            ack = self.socket.wait_ack(envelope, timeout=10)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        assert envelope.seconds is not None
        assert envelope.seconds < ACK_WITHIN_S, envelope.seconds
        return ack.payload

    def click(self, user: str, option: str, message: dict[str, Any]) -> Envelope:
        envelope = self.socket.interactive(interactive_payload(block_actions_payload(
            user, f"drift:{option}", button(message, option)["value"], self.channel_id,
            message["ts"], message=message)))
        assert self.acked(envelope) is None  # block_actions accept no response payload
        return envelope

    def command(self, user: str, text: str) -> dict[str, Any]:
        """Run /drift TEXT as USER over the socket; the reply posted to its response URL."""
        url = self.slack.response_url(CHANNEL, user=user, kind="commands")
        envelope = self.socket.slash_command(slash_command_payload(
            slash_command_body(user, "/drift", text, self.channel_id, url)))
        assert not self.acked(envelope)  # acked at once, answered on the response URL
        return wait_for(lambda: next((r.payload for r in self.slack.responses if r.url == url),  # type: ignore[no-any-return]
                                     None), 15, 0.05, what=f"/drift {text}")

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

    def prompt(self, incident: str, contains: str = "") -> dict[str, Any]:
        """The incident's message once it shows ``contains`` (default: the buttons)."""
        def found() -> dict[str, Any] | None:
            for message in self.slack.messages(CHANNEL):
                blocks = json.dumps(message.get("blocks", []))
                if incident in blocks and (contains in blocks if contains else buttons(message)):
                    return message
            return None

        try:
            return wait_for(found, 20, 0.05, what=f"the message of {incident}")  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(f"no message of {incident} showing {contains!r}\n"
                                 f"{self.logs()}") from None

    def ephemerals(self, user: str) -> list[dict[str, Any]]:
        return [r.args for r in self.slack.calls("chat.postEphemeral")
                if r.ok and r.args.get("user") == user]

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.output()[-3000:]}" for s in self.stack.services)


@pytest.fixture(scope="module")
def bot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SocketBot]:
    tmp = tmp_path_factory.mktemp("slack-socket")
    with FakeSlack() as slack, FakeSocketMode(slack) as socket, \
            FakeKubernetes(namespaces=["shop", "kube-system"]) as kube:
        slack.add_channel(CHANNEL)
        slack.add_usergroup("secops", users=[CAROL])
        (tmp / "pb").mkdir()
        (tmp / "pb" / "respond.yaml").write_text(textwrap.dedent(PLAYBOOK))
        env = base_env({
            "DRIFT_DATA_DIR": str(tmp / "data"), "DRIFT_PLAYBOOKS_DIR": str(tmp / "pb"),
            "DRIFT_INGEST_TOKEN": "stack-token", "DRIFT_QUEUE": f"test-{uuid.uuid4().hex[:8]}",
            "DRIFT_LEASE_GRACE_SECONDS": "1", "DRIFT_KUBE_HOST": kube.host,
            "SLACK_BOT_TOKEN": "xoxb-test", "SLACK_APP_TOKEN": socket.app_token,
            "DRIFT_SLACK_API_URL": slack.base_url, "DRIFT_SLACK_CHANNEL": CHANNEL,
            "DRIFT_SLACK_COMMAND_USERS": OPS})
        env.pop("SLACK_SIGNING_SECRET", None)  # Socket Mode needs none
        stack = Stack(env, tmp)
        try:
            worker = stack.start("worker", "--pool", "solo", name="worker")
            _wait_for_embedded_queue(tmp / "data" / "broker.db", env["DRIFT_QUEUE"], worker)
            port = free_port()
            service = stack.start("bot", "--port", str(port), name="bot")  # while the ingest starts
            stack.ingest()
            running = SocketBot(stack, slack, socket, kube, service, port)
            try:
                socket.wait_connected(timeout=30)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}\n{running.logs()}") from None
            yield running
        finally:
            stack.stop()
        assert not slack.errors, slack.errors
        assert not socket.errors, socket.errors


def test_the_bot_opens_its_connection_with_the_app_token_and_serves_no_http(
    bot: SocketBot,
) -> None:
    first = bot.socket.opens[0]
    assert first.ok
    assert first.headers["authorization"] == f"Bearer {bot.socket.app_token}"
    assert first.http_method == "POST"
    connection = bot.socket.connections[0]
    assert connection.query["ticket"]
    assert not bot.socket.refused
    assert "socket mode" in bot.service.output()
    assert bot.service.alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{bot.port}/healthz", timeout=2)


def test_a_click_over_the_socket_is_acked_in_time_and_isolates_the_pod(
    bot: SocketBot,
) -> None:
    workload = bot.kube.add_workload("shop", "web", labels={"app": "web"}, replicas=2)
    suspect = workload.pods[0]
    incident = bot.incident(suspect, 1)
    message = bot.prompt(incident)

    bot.click(CAROL, "isolate", message)  # a member of the secops group
    bot.stack.wait_run(incident, "succeeded")
    assert bot.kube.pod("shop", suspect["metadata"]["name"])["metadata"]["labels"] == {  # type: ignore[index]
        QUARANTINE_LABEL: incident}
    decided = kinds(bot.stack.records(incident), "approval.decided")
    assert [(r.actor, r.data["option"]) for r in decided] == [(f"slack:{CAROL}", "isolate")]
    updated = bot.prompt(incident, contains="Decision: isolate")
    assert f"<@{CAROL}>" in json.dumps(updated["blocks"])
    assert not buttons(updated)
    assert [u for u in bot.slack.calls("chat.update")
            if u.ok and u.args.get("ts") == message["ts"]]


def test_an_unauthorised_click_over_the_socket_is_refused_to_that_user_and_audited(
    bot: SocketBot,
) -> None:
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
    assert not kinds(bot.stack.records(incident), "approval.decided")
    assert bot.stack.run_of(incident)["status"] == "waiting"  # type: ignore[index]
    assert QUARANTINE_LABEL not in bot.kube.pod(  # type: ignore[index]
        "shop", workload.pods[0]["metadata"]["name"])["metadata"]["labels"]


def test_a_slash_command_over_the_socket_is_acked_and_answered(bot: SocketBot) -> None:
    workload = bot.kube.add_workload("shop", "queue", labels={"app": "queue"}, replicas=2)
    incident = bot.incident(workload.pods[0], 3)
    bot.prompt(incident)

    listed = bot.command(MALLORY, "list")
    assert incident in listed["text"]
    assert "Open incidents" in listed["text"]
    assert listed["response_type"] == "ephemeral"
    used = [r for r in kinds(bot.stack.records(), "slack.command") if r.actor == f"slack:{MALLORY}"]
    assert [(r.data["subcommand"], r.data["channel"]) for r in used] == [
        ("list", bot.channel_id)]


def test_a_dismissal_without_a_reason_is_answered_in_the_ack_with_the_error(
    bot: SocketBot,
) -> None:
    submission = view_submission_payload(ALICE, "drift_dismiss", "no-such-approval",
                                         {"reason": {"reason": "  "}})
    envelope = bot.socket.interactive(interactive_payload(submission))
    assert envelope.accepts_response_payload
    assert bot.acked(envelope) == {"response_action": "errors",
                                   "errors": {"reason": "Say why this drift is expected."}}


def test_a_disconnect_request_makes_the_bot_reconnect_and_it_keeps_working(
    bot: SocketBot,
) -> None:
    opens = len(bot.socket.opens)
    connections = len(bot.socket.connections)
    old = bot.socket.disconnect()

    new = bot.socket.wait_connected(connections + 1, timeout=15)
    assert len(bot.socket.opens) == opens + 1
    assert bot.socket.opens[-1].headers["authorization"] == f"Bearer {bot.socket.app_token}"
    assert new.ticket != old.ticket
    bot.socket.wait_closed(old, timeout=10)  # the bot let the old connection go
    assert [c.index for c in bot.socket.open_connections()] == [new.index]

    assert "*/drift list*" in bot.command(OPS, "help")["text"]
    assert bot.socket.envelopes[-1].connection == new.index
    assert bot.socket.envelopes[-1].ack.connection == new.index  # type: ignore[union-attr]


def test_a_connection_closed_by_slack_is_replaced_and_the_bot_keeps_working(
    bot: SocketBot,
) -> None:
    connections = len(bot.socket.connections)
    current = bot.socket.open_connections()[-1]
    bot.socket.close(current)  # "going away", without asking first
    bot.socket.wait_closed(current)

    new = bot.socket.wait_connected(connections + 1, timeout=25)
    assert new.open
    workload = bot.kube.add_workload("shop", "mail", labels={"app": "mail"}, replicas=2)
    incident = bot.incident(workload.pods[0], 4)
    message = bot.prompt(incident)
    bot.click(ALICE, "isolate", message)
    bot.stack.wait_run(incident, "succeeded")
    decided = kinds(bot.stack.records(incident), "approval.decided")
    assert [(r.actor, r.data["option"]) for r in decided] == [(f"slack:{ALICE}", "isolate")]
    bot.prompt(incident, contains="Decision: isolate")


def test_the_bot_exits_when_slack_refuses_its_app_token(tmp_path: Path) -> None:
    with FakeSlack() as slack, FakeSocketMode(slack) as socket:
        # The bot token where the app token belongs: Slack answers not_allowed_token_type
        # (a revoked xapp- token: invalid_auth).
        env = base_env({"DRIFT_DATA_DIR": str(tmp_path), "SLACK_BOT_TOKEN": "xoxb-test",
                        "SLACK_APP_TOKEN": "xoxb-test", "DRIFT_SLACK_API_URL": slack.base_url})
        env.pop("SLACK_SIGNING_SECRET", None)
        started = time.monotonic()
        done = subprocess.run([*CLI, "bot", "--port", str(free_port())], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60, check=False)
        assert [(r.token, r.error) for r in socket.opens] == [
            ("xoxb-test", "not_allowed_token_type")]
        assert not socket.connections
    assert done.returncode == 1, done.stderr[-3000:]
    assert "not_allowed_token_type" in done.stderr
    assert time.monotonic() - started < 30  # at once, not after retries


@dataclass
class Stopped:
    code: int
    output: str
    seconds: float  # from the (first) signal to the exit
    ended: float  # time.monotonic() at the exit
    slack: FakeSlack


def _stop_during_a_slow_click(tmp_path: Path, signals: int) -> Stopped:
    """A Socket Mode bot acks a click whose work after the ack takes 3 s (telling the user
    that no approval waits under that id, on a delayed Slack call); then ``signals`` SIGTERMs."""
    with FakeSlack() as slack, FakeSocketMode(slack) as socket:
        slack.add_channel(CHANNEL)
        env = base_env({"DRIFT_DATA_DIR": str(tmp_path), "SLACK_BOT_TOKEN": "xoxb-test",
                        "SLACK_APP_TOKEN": socket.app_token,
                        "DRIFT_SLACK_API_URL": slack.base_url})
        env.pop("SLACK_SIGNING_SECRET", None)
        proc = subprocess.Popen([*CLI, "bot", "--port", str(free_port())], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            connection = socket.wait_connected(timeout=60)
            slack.delay("chat.postEphemeral", 3.0)
            envelope = socket.interactive(interactive_payload(block_actions_payload(
                ALICE, "drift:isolate", "no-such-approval", slack.channel_id(CHANNEL), "1.0")))
            socket.wait_ack(envelope, timeout=10)
            started = time.monotonic()
            for _ in range(signals):
                proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
            code = proc.wait(timeout=60)
            ended = time.monotonic()
            output = proc.stdout.read() if proc.stdout else ""
            socket.wait_closed(connection, timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return Stopped(code, output, ended - started, ended, slack)


def test_a_stopped_bot_finishes_an_acked_click_before_it_closes_the_socket_and_exits(
        tmp_path: Path) -> None:
    stopped = _stop_during_a_slow_click(tmp_path, signals=1)
    assert stopped.code == 0, stopped.output[-3000:]
    [told] = stopped.slack.calls("chat.postEphemeral")
    assert told.args["user"] == ALICE
    assert "No approval is waiting" in told.args["text"]
    assert told.answered_at is not None
    assert told.answered_at < stopped.ended  # the bot was still there for the answer
    assert "slack.stopped" in stopped.output


def test_a_second_stop_signal_makes_the_bot_exit_at_once(tmp_path: Path) -> None:
    stopped = _stop_during_a_slow_click(tmp_path, signals=2)
    assert stopped.code == 128 + signal.SIGTERM, stopped.output[-3000:]
    assert stopped.seconds < 2.5  # not after the click's 3 s
    assert "slack.stopped" not in stopped.output
