"""Slack security beyond tests/integration/test_slack_bot.py.

Already covered there (end to end, real processes): bad, stale, malformed and replayed
signatures get 401 and a replayed command is done once
(test_bad_signatures_stale_and_replayed_requests_get_401); a replayed click is refused
(test_a_click_by_a_group_member_isolates_the_pod_and_updates_the_message, on both backends);
unauthorised clicks (test_an_unauthorised_click_is_refused_to_that_user_and_audited); two
concurrent clicks make one decision (test_two_concurrent_clicks_make_exactly_one_decision);
alert text is escaped in the message and /drift replies
(test_alert_controlled_text_is_escaped_in_the_message_and_replies).

Here, in process against the bot's real HTTP front (bots.slack.app.create_http_app: the replay
guard in front of a bolt App, built as the bot builds it, on the fake Slack Web API):
- the same signed request sent many times at once is acted on once (memory and Redis memory);
- a request from more than five minutes in the future is refused;
- unauthenticated garbage (non-UTF-8 bodies, non-ASCII digits in the timestamp) gets a 4xx,
  never a 500;
and at the renderer: every text field of every Block Kit view escapes ``<!channel>``,
``<@U…>``, ``<http://evil|click>`` and ``&``, and alert-controlled text cannot bring in mrkdwn
formatting (``*bold*``, ``_italic_``, ``~strike~``) or forge a line of the message.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from slack_bolt import App
from slack_sdk import WebClient

from bots.slack.app import create_http_app
from bots.slack.replay import MemorySeen, RedisSeen, ReplayGuard, SeenStore
from responder.plugins.notify.slack_blocks import render, render_digest
from responder.plugins.notify.views import (
    ApprovalView,
    DiffEntryView,
    DigestEntry,
    FilesystemDiffView,
    ProcessTreeView,
    PromptView,
    StepView,
)
from tests.conftest import REDIS_URL
from tests.fakes.slack_api import FakeSlack, signed_request_headers, slash_command_body

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"

# ------------------------------------------------------------------------------ the HTTP front


@dataclass
class Front:
    app: Any
    acted: list[str]

    def post(self, body: bytes, headers: list[tuple[str, bytes]] | dict[str, str]) -> int:
        """POST /slack/events through the ASGI app; raw header bytes reach it unchanged."""
        async def send() -> int:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport,
                                         base_url="http://127.0.0.1") as client:
                response = await client.post("/slack/events", content=body, headers=headers)
                return response.status_code
        return asyncio.run(send())


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def _front(slack: FakeSlack, seen: SeenStore) -> Front:
    acted: list[str] = []
    app = App(client=WebClient(token=slack.token, base_url=slack.base_url),
              signing_secret=SECRET)

    @app.command("/drift")
    def _command(ack: Any, command: dict[str, Any]) -> None:
        acted.append(str(command.get("text")))
        ack()

    return Front(create_http_app(app, ReplayGuard(SECRET, seen)), acted)


@pytest.fixture(params=["memory", "redis"])
def front(request: pytest.FixtureRequest, slack: FakeSlack) -> Iterator[Front]:
    if request.param == "memory":
        yield _front(slack, MemorySeen())
        return
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"drift-test-{uuid.uuid4().hex[:10]}:"
    try:
        yield _front(slack, RedisSeen(client, prefix))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


def _command(text: str = "help", timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = slash_command_body("UALICE0001", "/drift", text, "C0123456789",
                              "http://127.0.0.1:9/response")
    return body, signed_request_headers(SECRET, body, timestamp)


def test_a_signed_request_is_acted_on_once_and_its_replay_is_refused(front: Front) -> None:
    body, headers = _command("list")
    assert front.post(body, headers) == 200
    assert front.post(body, headers) == 401
    assert front.acted == ["list"]
    # A new request (another timestamp, same text) is a different signature: it is acted on.
    body2, headers2 = _command("list", timestamp=int(time.time()) - 30)
    assert front.post(body2, headers2) == 200
    assert front.acted == ["list", "list"]


def test_the_same_signed_request_sent_many_times_at_once_is_acted_on_once(front: Front) -> None:
    body, headers = _command("show 01INC")
    barrier = threading.Barrier(8)
    answers: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        status = front.post(body, headers)
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(answers) == [200] + [401] * 7
    assert front.acted == ["show 01INC"]


@pytest.mark.parametrize("offset", [-6 * 60, 6 * 60], ids=["stale", "from-the-future"])
def test_a_request_signed_more_than_five_minutes_away_from_now_is_refused(
    front: Front, offset: int,
) -> None:
    body, headers = _command(timestamp=int(time.time()) + offset)
    assert front.post(body, headers) == 401
    assert front.acted == []


@pytest.mark.parametrize(("body", "headers"), [
    (b"x", [("X-Slack-Request-Timestamp", b"soon"), ("X-Slack-Signature", b"v0=00")]),
    (b"x", [("X-Slack-Request-Timestamp", b"-1"), ("X-Slack-Signature", b"v0=00")]),
    (b"x", [("X-Slack-Request-Timestamp", b"99999999999999999999999"),
            ("X-Slack-Signature", b"v0=00")]),
    (b"x", [("X-Slack-Signature", b"v0=00")]),
    (b"", []),
], ids=["word", "negative", "huge", "no-timestamp", "nothing"])
def test_unsigned_garbage_gets_a_4xx(slack: FakeSlack, body: bytes,
                                     headers: list[tuple[str, bytes]]) -> None:
    front = _front(slack, MemorySeen())
    status = front.post(body, headers)
    assert 400 <= status < 500
    assert front.acted == []


def test_a_timestamp_of_non_ascii_digits_gets_a_4xx_not_a_500(slack: FakeSlack) -> None:
    front = _front(slack, MemorySeen())
    status = front.post(b"x", [("X-Slack-Request-Timestamp", "\u00b2".encode("latin-1")),
                               ("X-Slack-Signature", b"v0=" + b"0" * 64)])
    assert 400 <= status < 500
    assert front.acted == []


def test_a_non_utf8_body_with_a_current_timestamp_gets_a_4xx_not_a_500(
    slack: FakeSlack,
) -> None:
    front = _front(slack, MemorySeen())
    status = front.post(b"\xff\xfe", [("X-Slack-Request-Timestamp", str(int(time.time())).encode()),
                                      ("X-Slack-Signature", b"v0=" + b"0" * 64)])
    assert 400 <= status < 500
    assert front.acted == []


# ------------------------------------------------------------------------------ Block Kit

PING = "<!channel> <!here|x> <@U0ADMIN01> <#C0SECRET> <http://evil.example|click> & &amp;"
FORMATTING = "*PWNBOLD* _PWNITAL_ ~PWNSTRIKE~"
FORGED_LINE = "x\n*Decision: dismiss* by cli:boss"
FORMATTING_MARKS = ("*PWNBOLD*", "_PWNITAL_", "~PWNSTRIKE~")


def _prompt() -> PromptView:
    """Every part of the message shown: approval with a vote, steps, process tree, diff. No
    Slack user ids anywhere, so any ``<`` in the output came from the text under test."""
    return PromptView(
        incident_id="01INC", priority="Critical",
        rules=["Drop and execute new binary in container"], namespace="shop", pod="web-1",
        node="node-1", container_id="4b1c9e7f2a3d", image="registry/shop/web:1.8.2",
        alert_count=3, output="Drift detected",
        approval=ApprovalView(
            id="01APP", status="pending", options=["isolate", "evict", "dismiss"],
            approvers=["cli:*"], two_person=["evict"], prompt="Decide on web-1",
            expires="2026-11-28T12:00:00.000000000Z",
            votes=[{"by": "cli:bob", "option": "evict"}], on_timeout="isolate"),
        run_status="waiting", playbook="drop-and-execute",
        steps=[StepView("summary", "core.note", "succeeded", "ok")],
        process_trees=[ProcessTreeView(
            step_id="tree", method="exec", assurance="low", node="node-1",
            container_id="4b1c9e7f2a3d" + "0" * 52, processes_total=3,
            excerpt="1/1 root /bin/app\n>> 7/7 root /tmp/x", flagged=["pid 7 /tmp/x"])],
        diffs=[FilesystemDiffView(
            step_id="diff", method="exec", assurance="low", node="node-1", added=1, changed=0,
            deleted=0, executables_added=1, notable=[DiffEntryView(
                kind="A", path="/tmp/x", type="file", sha256="ab" * 32, elf=True,
                flagged=True)])])


def _decided(view: PromptView) -> PromptView:
    assert view.approval is not None
    view.approval.status, view.approval.decided_option = "decided", "isolate"
    view.approval.decided_by, view.approval.decided_at = ["cli:alice"], "2026-11-28T11:00Z"
    view.approval.reason = "checked"
    return view


def _expired(view: PromptView) -> PromptView:
    assert view.approval is not None
    view.approval.status = "expired"
    return view


Path_ = tuple[Any, ...]


def _text_paths(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every string inside a view (dataclass fields, list items, dict values)."""
    if isinstance(value, str):
        yield prefix
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from _text_paths(getattr(value, f.name), (*prefix, f.name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _text_paths(item, (*prefix, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _text_paths(item, (*prefix, key))


def _set(view: Any, path: Path_, text: str) -> Any:
    view = copy.deepcopy(view)
    target = view
    for part in path[:-1]:
        target = getattr(target, part) if dataclasses.is_dataclass(target) else target[part]
    last = path[-1]
    if dataclasses.is_dataclass(target):
        setattr(target, last, text)
    else:
        target[last] = text
    return view


def _texts(value: Any, kind: str) -> Iterator[str]:
    if isinstance(value, dict):
        if value.get("type") == kind and isinstance(value.get("text"), str):
            yield value["text"]
        for item in value.values():
            yield from _texts(item, kind)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item, kind)


def _mrkdwn_objects(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("type") == "mrkdwn":
            yield value
        for item in value.values():
            yield from _mrkdwn_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _mrkdwn_objects(item)


def _outside_code(text: str) -> str:
    """The part of a mrkdwn text Slack formats: without ``` blocks and `inline code` (which
    does not continue past the end of a line)."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _renderings(view: PromptView) -> list[tuple[str, list[dict[str, Any]]]]:
    return [render(view), render(_decided(copy.deepcopy(view))),
            render(_expired(copy.deepcopy(view)))]


def _base_for(path: Path_) -> PromptView:
    decided_only = path[-1] in ("reason", "decided_at") or "decided_by" in path
    return _decided(_prompt()) if decided_only else _prompt()


def _shown(path: Path_) -> bool:
    """Whether the text at ``path`` is displayed at all (some are only ids or values)."""
    marker = "zqmarker"
    for fallback, blocks in _renderings(_set(_base_for(path), path, marker)):
        texts = [fallback, *_texts(blocks, "mrkdwn"), *_texts(blocks, "plain_text")]
        if any(marker in t.lower() for t in texts):
            return True
    return False


ALL_PATHS = sorted(set(_text_paths(_prompt())) | set(_text_paths(_decided(_prompt()))), key=str)
PROMPT_PATHS = [p for p in ALL_PATHS if _shown(p)]


def _assert_no_markup(text: str, where: object) -> None:
    assert "<" not in text, (where, text)
    assert ">" not in text, (where, text)
    assert not re.search(r"&(?!amp;|lt;|gt;)", text), (where, text)


def test_the_base_message_has_no_markup_of_its_own_to_confuse_the_checks() -> None:
    for fallback, blocks in _renderings(_prompt()):
        for text in [fallback, *_texts(blocks, "mrkdwn")]:
            _assert_no_markup(text, "base")
    assert len(PROMPT_PATHS) > 25
    for must in (("namespace",), ("pod",), ("node",), ("image",), ("output",),
                 ("approval", "prompt"), ("approval", "reason"), ("rules", 0),
                 ("diffs", 0, "notable", 0, "path"), ("process_trees", 0, "flagged", 0)):
        assert must in PROMPT_PATHS, must


@pytest.mark.parametrize("path", PROMPT_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_every_text_of_the_prompt_escapes_mentions_links_and_ampersands(path: Path_) -> None:
    seen = False
    for fallback, blocks in _renderings(_set(_base_for(path), path, PING)):
        for obj in _mrkdwn_objects(blocks):
            assert obj.get("verbatim") is True, obj
        for text in [fallback, *_texts(blocks, "mrkdwn")]:
            _assert_no_markup(text, path)
            seen = seen or "&lt;!channel&gt;" in text
        # plain_text is shown as it is: nothing in it is markup.
        seen = seen or any(PING.lower() in t.lower() for t in _texts(blocks, "plain_text"))
    assert seen, f"{path} was shown with the marker but not with the hostile text"


#: Alert-controlled texts (from the alert, the container, or a playbook template over them).
ALERT_PATHS: dict[str, Path_] = {
    "namespace": ("namespace",), "pod": ("pod",), "node": ("node",),
    "container_id": ("container_id",), "image": ("image",), "output": ("output",),
    "rule": ("rules", 0), "approval prompt": ("approval", "prompt"),
    "process tree node": ("process_trees", 0, "node"),
    "process tree excerpt": ("process_trees", 0, "excerpt"),
    "flagged process": ("process_trees", 0, "flagged", 0),
    "diff path": ("diffs", 0, "notable", 0, "path"),
}
#: Where formatting still gets through today (see the xfail reason): nowhere since the fix.
FORMATTING_LEAKS: set[str] = set()
FORMATTING_BUG = (
    "product bug: responder/plugins/notify/slack_blocks.py escapes only & < > in alert-controlled "
    "mrkdwn (the Namespace/pod, Node, Container and Image fields, the approval prompt -- which "
    "the shipped playbooks fill with proc.cmdline, proc.exepath or evt.arg.filename -- and "
    "flagged process lines): *bold*, _italic_, ~strike~ in alert data are rendered as "
    "formatting and a newline starts a line of its own, so an attacker can forge e.g. "
    "'*Decision: dismiss* by ...' inside the prompt; plain_text or inline code would keep it inert")


NEWLINE_BUG = FORMATTING_BUG + (
    "; and slack_blocks.code() keeps newlines, so a newline in a node name or a file path "
    "ends the inline code and what follows is formatted as the message's own text")


def _alert_params(marks: set[str], reason: str = FORMATTING_BUG) -> list[Any]:
    return [pytest.param(path, id=name, marks=pytest.mark.xfail(strict=True, reason=reason)
                         if name in marks else ())
            for name, path in ALERT_PATHS.items()]


@pytest.mark.parametrize("path", _alert_params(FORMATTING_LEAKS))
def test_alert_text_brings_no_mrkdwn_formatting_into_the_message(path: Path_) -> None:
    for _, blocks in _renderings(_set(_prompt(), path, FORMATTING)):
        for text in _texts(blocks, "mrkdwn"):
            shown = _outside_code(text)
            assert not [m for m in FORMATTING_MARKS if m in shown], (path, text)


@pytest.mark.parametrize("path", _alert_params(FORMATTING_LEAKS, NEWLINE_BUG))
def test_a_newline_in_alert_text_cannot_forge_a_line_of_the_message(path: Path_) -> None:
    for _, blocks in _renderings(_set(_prompt(), path, FORGED_LINE)):
        for text in _texts(blocks, "mrkdwn"):
            assert "*Decision: dismiss*" not in _outside_code(text), (path, text)


def _digest(field: str, text: str) -> list[str]:
    entries = [DigestEntry(incident_id="01INC", priority="Critical", rules=["r"],
                           namespace="shop", pod="web-1") for _ in range(3)]
    setattr(entries[1], field, [text] if field == "rules" else text)
    fallback, blocks = render_digest("#secops", entries)
    return [fallback, *_texts(blocks, "mrkdwn")]


@pytest.mark.parametrize("field", ["namespace", "pod", "rules", "priority", "incident_id"])
def test_every_text_of_the_digest_escapes_mentions_links_and_ampersands(field: str) -> None:
    texts = _digest(field, PING)
    for shown in texts:
        _assert_no_markup(shown, field)
    assert any("&lt;!channel&gt;" in t for t in texts)


@pytest.mark.parametrize("field", [
    "namespace", "pod",
    "rules",
])
def test_alert_text_brings_no_mrkdwn_formatting_into_the_digest(field: str) -> None:
    texts = _digest(field, FORMATTING)
    assert any("PWNBOLD" in t for t in texts)
    for shown in texts:
        assert not [m for m in FORMATTING_MARKS if m in _outside_code(shown)], shown
