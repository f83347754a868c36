"""The incident prompt under Slack's limits, with its evidence: the real store (SQLite or
PostgreSQL), the real limits state (the embedded SQLite file, or Redis), the executor, the real
slack_sdk client and the fake Slack Web API (tests/fakes/slack_api.py).

The broker's part is played here: ``Worker`` keeps the notifications that are due (each
``drift.notify`` the executor dispatched), runs ``sync_incident`` for the earliest and, on
``RateLimited``, re-queues it for its countdown, as the Celery task does. Time for the limits is
an injected clock, so that a storm of a minute runs in a moment; nothing is patched.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from slack_sdk import WebClient
from sqlalchemy import event, select

from responder.agent.models import (
    ArtifactRef,
    DiffEntry,
    DiffSummary,
    FilesystemDiffResult,
    ProcessInfo,
    ProcessTreeResult,
)
from responder.conducting import events as ev
from responder.intake.backends import Backends, open_backends
from responder.intake.planning import RunPlanner
from responder.models.alerts import parse_alert
from responder.models.times import now_ns
from responder.playbooks.schema import Playbook
from responder.plugins.notify.ratelimit import (
    FAILURE_PAUSE_S,
    ChannelBucket,
    RateLimited,
    SlackLimits,
)
from responder.plugins.notify.slack import SlackNotifier, Transient
from responder.plugins.notify.slack_blocks import DIGEST_BLOCK_ID
from responder.plugins.registry import load_all
from responder.settings import Settings
from responder.store import audit
from responder.store.artifacts import ArtifactStore
from responder.store.schema import incidents as incidents_table
from responder.workers.executing import Executor
from responder.workers.notifying import EVIDENCE_SHARED, build_view, sync_incident
from tests.conftest import REDIS_URL, make_settings
from tests.fakes.slack_api import FakeSlack
from tests.support.dispatching import RecordingDispatcher
from tests.support.samples import drift_alert

CHANNEL = "#secops"
RULE = "Drop and execute new binary in container"
LIMITS = SlackLimits(rate_per_second=1.0, burst=3, digest_after=4, digest_interval_s=2.0,
                     update_per_minute=60.0, update_burst=5, update_interval_s=1.0,
                     grace_s=10.0)


def playbook(*, expires: float = 900, evidence: bool = False) -> Playbook:
    steps: list[dict[str, Any]] = []
    if evidence:
        common = {"container_id": "{{ alert.container_full_id or alert.container_id }}",
                  "node": "{{ incident.node }}", "namespace": "{{ incident.namespace }}",
                  "pod": "{{ incident.pod }}"}
        steps += [{"id": "tree", "uses": "evidence.process_tree", "with": common},
                  {"id": "diff", "uses": "evidence.filesystem_diff", "with": common}]
    steps += [{"id": "ask", "uses": "core.approval",
               "with": {"options": ["isolate", "evict", "dismiss"], "channel": CHANNEL,
                        "approvers": ["slack:*"], "two_person": ["evict"],
                        "expires_after_seconds": expires}},
              {"id": "noted", "uses": "core.note", "with": {"message": "decided"}}]
    return Playbook.model_validate({"name": "prompt", "match": {"rules": [RULE]},
                                    "steps": steps})


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Worker:
    """drift.notify without Celery: due notifications, re-queued on RateLimited."""

    backends: Backends
    notifier: SlackNotifier
    settings: Settings
    clock: Clock
    slack: FakeSlack
    queue: list[tuple[float, int, str]] = field(default_factory=list)
    posted_at: list[float] = field(default_factory=list)  # clock times of chat.postMessage
    attempts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    #: the countdown after the n-th Slack failure (the Celery task's: 1 s, 2 s, 4 s...)
    retry_after_failure: Callable[[int], float] = lambda n: 2.0 ** (n - 1)
    log: list[tuple[float, str, str]] = field(default_factory=list)
    _order: Iterator[int] = field(default_factory=itertools.count)

    def add(self, incident: str, at: float | None = None) -> None:
        heapq.heappush(self.queue, (self.clock.now if at is None else at, next(self._order),
                                    incident))

    def run(self, max_steps: int = 2000, until: float | None = None) -> None:
        """Run what is due (up to ``until`` on the clock, or until nothing is left)."""
        for _ in range(max_steps):
            if not self.queue or (until is not None and self.queue[0][0] > until):
                if until is not None:
                    self.clock.now = max(self.clock.now, until)
                return
            due, _, incident = heapq.heappop(self.queue)
            self.clock.now = max(self.clock.now, due)
            self.attempts[incident] = self.attempts.get(incident, 0) + 1
            before = len(self.slack.calls("chat.postMessage"))
            try:
                sync_incident(self.backends.engine, self.notifier, incident, self.settings)
                self.log.append((self.clock.now, incident, "done"))
            except RateLimited as exc:
                self.log.append((self.clock.now, incident, f"wait {exc.retry_after:.3f}"))
                self.add(incident, self.clock.now + exc.retry_after)
            except Transient:  # again later, as the Celery task does (1 s, 2 s, 4 s...)
                self.failures[incident] = self.failures.get(incident, 0) + 1
                self.log.append((self.clock.now, incident, "transient"))
                self.add(incident,
                         self.clock.now + self.retry_after_failure(self.failures[incident]))
            posts = [r for r in self.slack.calls("chat.postMessage")[before:] if r.ok]
            self.posted_at += [self.clock.now] * len(posts)
        raise AssertionError(f"still {len(self.queue)} notifications after {max_steps} steps")


@dataclass
class Setup:
    backends: Backends
    executor: Executor
    sent: RecordingDispatcher
    slack: FakeSlack
    bucket: ChannelBucket
    worker: Worker
    settings: Settings

    def incident(self, n: int, **fields: Any) -> tuple[str, str]:
        alert = drift_alert(n)
        alert["output_fields"].update(fields)
        recorded = self.backends.recorder.record([parse_alert(alert)])
        [run_id] = recorded.runs
        self.executor.start(run_id)
        return recorded.incidents[0], run_id

    def messages(self) -> list[dict[str, Any]]:
        return [m for m in self.slack.messages(CHANNEL) if "thread_ts" not in m
                or m["thread_ts"] == m["ts"]]

    def prompt_of(self, incident: str) -> dict[str, Any]:
        [message] = [m for m in self.messages() if is_prompt(m)
                     and f"*Incident*\\n{incident}" in json.dumps(m["blocks"])]
        return message

    def flush(self) -> None:
        for incident in self.sent.notified():
            self.worker.add(incident)
        self.worker.run()


def is_prompt(message: dict[str, Any]) -> bool:
    return any(b.get("type") == "header" for b in message.get("blocks", []))


def is_digest(message: dict[str, Any]) -> bool:
    return any(b.get("block_id") == DIGEST_BLOCK_ID for b in message.get("blocks", []))


def buttons(message: dict[str, Any]) -> list[str]:
    return [e["action_id"] for b in message.get("blocks", []) if b["type"] == "actions"
            for e in b["elements"]]


def make_setup(kind: str, request: pytest.FixtureRequest, pb: Playbook,
               limits: SlackLimits = LIMITS) -> Iterator[Setup]:
    sent = RecordingDispatcher()
    settings = make_settings(kind, request, slack_channel="#elsewhere")
    backends = open_backends(settings, planner=RunPlanner([pb]), dispatcher=sent)
    executor = Executor(backends.engine, load_all(), sent, grace_s=5)
    clock = Clock()
    client = redis.Redis.from_url(REDIS_URL) if kind == "production" else None
    tmp: Path = request.getfixturevalue("tmp_path")
    bucket = ChannelBucket(client, None, settings.redis_prefix, limits,
                           path=None if client else tmp / "slack-limits.db", clock=clock)
    with FakeSlack() as slack:
        slack.add_channel(CHANNEL)
        notifier = SlackNotifier(WebClient(token=str(slack.token), base_url=slack.base_url),
                                 bucket)
        worker = Worker(backends, notifier, settings, clock, slack)
        try:
            yield Setup(backends, executor, sent, slack, bucket, worker, settings)
        finally:
            backends.close()
            if client is not None:
                client.close()
        assert not slack.errors, slack.errors


@pytest.fixture
def setup(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield from make_setup(backend_kind, request, playbook())


@pytest.fixture
def evidence_setup(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield from make_setup(backend_kind, request, playbook(evidence=True))


# ------------------------------------------------------------------------------ the storm

def test_a_storm_in_one_channel_is_posted_in_order_at_the_allowed_rate_with_a_digest(
        setup: Setup) -> None:
    started = setup.worker.clock.now
    incidents = []
    for n in range(16):  # one new incident every 250 ms
        setup.worker.run(until=started + n * 0.25)
        incident, _ = setup.incident(n + 1, **{"k8s.pod.name": f"web-{n}<!channel>"})
        incidents.append(incident)
        for notified in setup.sent.notified():
            setup.worker.add(notified)
    setup.worker.run()

    messages = setup.messages()
    prompts = [m for m in messages if is_prompt(m)]
    order = [next(i for i in incidents if f"*Incident*\\n{i}" in json.dumps(m["blocks"]))
             for m in prompts]
    assert order == incidents  # every incident has its own message, oldest first
    assert all(buttons(m) == ["drift:isolate", "drift:evict", "drift:dismiss"] for m in prompts)

    digests = [m for m in messages if is_digest(m)]
    assert len(digests) == 2
    # Once more than four waited, the next token named them all, oldest first; two seconds
    # later, those that came since: nobody twice, nobody left out.
    named = [[i for i in incidents if i in json.dumps(d["blocks"])] for d in digests]
    start = incidents.index(named[0][0])
    assert named[0] + named[1] == incidents[start:]
    assert len(named[0]) > 4
    assert start >= 3
    assert digests[0]["text"] == f"{len(named[0])} new drift incidents in #secops"
    first = json.dumps(digests[0]["blocks"])
    assert "<!channel>" not in first
    assert f"web-{start}&lt;!channel&gt;" in first

    # Never faster than the bucket allows: burst 3, then one a second (digests included).
    posted_at = setup.worker.posted_at
    assert len(posted_at) == 18
    stats = setup.bucket.stats(CHANNEL)
    assert stats["posts"] == 16
    assert stats["digests"] == 2
    for k, at in enumerate(posted_at):
        assert k + 1 <= 3 + (at - started) * 1.0 + 1e-6
    # Each notification came back about once, when its turn was due.
    assert max(setup.worker.attempts.values()) <= 4
    assert sum(setup.worker.attempts.values()) <= 3 * len(incidents)
    assert setup.bucket.waiting(CHANNEL) == []


def test_a_refused_notification_does_no_database_work(setup: Setup) -> None:
    for n in range(3):
        setup.incident(n + 1)
    waiting, _ = setup.incident(4)
    for notified in setup.sent.notified():
        setup.worker.add(notified)
    setup.worker.run(until=setup.worker.clock.now)  # three posts; the fourth is told to wait
    assert setup.bucket.waiting(CHANNEL) == [waiting]
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(setup.backends.engine, "before_cursor_execute", count)
    try:
        with pytest.raises(RateLimited) as refused:
            sync_incident(setup.backends.engine, setup.worker.notifier, waiting, setup.settings)
    finally:
        event.remove(setup.backends.engine, "before_cursor_execute", count)
    assert statements == []
    assert 0 < refused.value.retry_after <= 1.0
    setup.worker.run()
    assert len([m for m in setup.messages() if is_prompt(m)]) == 4


def test_a_429_keeps_the_prompts_place_and_pauses_the_channel(setup: Setup) -> None:
    first, _ = setup.incident(1)
    second, _ = setup.incident(2)
    setup.slack.rate_limit("chat.postMessage", times=1, retry_after=3)
    setup.worker.add(first)
    setup.worker.add(second, setup.worker.clock.now + 0.01)
    setup.worker.run()
    outcomes = [(i, o) for _, i, o in setup.worker.log]
    assert outcomes[0] == (first, "wait 3.000")
    # Behind it: the pause, then a token for the first and one for itself.
    assert outcomes[1] == (second, "wait 4.990")
    prompts = [m for m in setup.messages() if is_prompt(m)]
    assert [first in json.dumps(m["blocks"]) for m in prompts] == [True, False]
    assert len(prompts) == 2
    with setup.backends.engine.connect() as conn:
        rows = conn.execute(select(incidents_table.c.chat_ts)).all()
    assert all(r.chat_ts and r.chat_ts != "posting" for r in rows)


def test_5xx_keep_the_prompts_place_and_pause_the_channel_longer_each_time(
        setup: Setup) -> None:
    first, _ = setup.incident(1)
    second, _ = setup.incident(2)
    setup.slack.fail("chat.postMessage", 503, times=1)
    setup.worker.add(first)
    setup.worker.add(second, setup.worker.clock.now + 0.01)
    setup.worker.run()
    outcomes = [(i, o) for _, i, o in setup.worker.log]
    assert outcomes[0] == (first, "transient")
    # Behind it: the pause, then a token for the first and one for itself (not straight to a
    # Slack that is failing).
    assert outcomes[1] == (second, f"wait {FAILURE_PAUSE_S + 2 - 0.01:.3f}")
    assert (first, "done") in outcomes
    assert [r.status for r in setup.slack.calls("chat.postMessage")] == [503, 200, 200]
    prompts = [m for m in setup.messages() if is_prompt(m)]
    assert [first in json.dumps(m["blocks"]) for m in prompts] == [True, False]

    # Failures in a row pause the channel 1 s, 2 s, 4 s (then a token at 1/s); the first post
    # that goes through ends the row. The task retries at once here, so that only the
    # channel's pauses space the attempts.
    setup.worker.retry_after_failure = lambda n: 0.001
    for n in (3, 4):
        incident, _ = setup.incident(n)
        setup.slack.fail("chat.postMessage", 500, times=3)
        setup.worker.log.clear()
        setup.worker.add(incident)
        setup.worker.run()
        attempts = [t for t, i, o in setup.worker.log if o in ("transient", "done")]
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(attempts)]
        pauses = [FAILURE_PAUSE_S * 2 ** k for k in range(3)]
        assert gaps == [round(p + 1.0, 2) for p in pauses], gaps


def test_several_changes_within_a_second_make_one_update_with_the_latest_state(
        setup: Setup) -> None:
    incident, _ = setup.incident(1)
    setup.flush()
    before = len(setup.slack.calls("chat.update"))
    vote = setup.executor.decide(incident_id=incident, option="evict", actor="slack:UALICE0001")
    assert vote.ok
    setup.worker.clock.now += 0.2
    decided = setup.executor.decide(incident_id=incident, option="isolate",
                                    actor="slack:UBOB000001")
    assert decided.decided
    setup.flush()
    updates = setup.slack.calls("chat.update")[before:]
    assert len(updates) == 1
    # Both notifications were told to wait out the second after the post; then one update.
    assert [o[:5] for _, _, o in setup.worker.log[-4:]] == ["wait ", "wait ", "done", "done"]
    message = setup.prompt_of(incident)
    assert "Decision: isolate" in json.dumps(message["blocks"])
    assert not buttons(message)
    setup.worker.add(incident)  # a redelivered notification: the message shows that already
    setup.worker.run()
    assert len(setup.slack.calls("chat.update")) == before + 1


def test_an_expiry_notifies_and_the_message_loses_its_buttons(
        backend_kind: str, request: pytest.FixtureRequest) -> None:
    for s in make_setup(backend_kind, request, playbook(expires=0.3)):
        incident, _ = s.incident(1)
        s.flush()
        assert buttons(s.prompt_of(incident))
        time.sleep(0.35)
        with s.backends.engine.connect() as conn:  # not swept yet: shown expired already
            view = build_view(conn, incident)
        assert view is not None
        assert view.approval is not None
        assert view.approval.status == "expired"
        assert s.executor.sweep()["expired"] == 1
        assert s.sent.notified() == [incident]  # the beat's expiry dispatches drift.notify
        s.worker.add(incident)
        s.worker.run()
        message = s.prompt_of(incident)
        assert not buttons(message)
        assert "*Expired* at " in json.dumps(message["blocks"])


# ------------------------------------------------------------------------------ evidence

def _tree_result(store: ArtifactStore, container: str) -> tuple[dict[str, Any], dict[str, Any]]:
    data = orjson.dumps({"container_id": container, "processes": ["..."]})
    stored = store.put_bytes(data)
    flagged = ProcessInfo(pid=4242, ns_pid=7, ppid=4000, uid=0, user="root",
                          exe="/tmp/.x/<!channel>", exe_deleted=True, in_upper_layer=True,
                          sha256="ab12cd34ef56" + "0" * 52, flagged=True)
    result = ProcessTreeResult(
        method="node-agent", assurance="high", node="node-1", container_id=container,
        processes_total=3, flagged=[flagged],
        excerpt="1/1 root /pause\n  4000/5 root /bin/sh -c <!channel>\n"
                ">>   4242/7 root /tmp/.x/<!channel> (deleted) [upper]",
        artifact=ArtifactRef(sha256=stored.sha256, size=stored.size,
                             name=f"process-tree-{container[:12]}.json"))
    collected = {"sha256": stored.sha256, "size": stored.size,
                 "name": f"process-tree-{container[:12]}.json",
                 "media_type": "application/json", "collector": "evidence.process_tree",
                 "method": "node-agent", "node": "node-1", "step": "tree"}
    return result.model_dump(mode="json"), collected


def _diff_result(store: ArtifactStore, container: str) -> tuple[dict[str, Any],
                                                                  list[dict[str, Any]]]:
    diff = store.put_bytes(orjson.dumps({"container_id": container, "changes": []}))
    binary = store.put_bytes(b"\x7fELF dropped payload")
    result = FilesystemDiffResult(
        method="node-agent", assurance="high", node="node-1", container_id=container,
        summary=DiffSummary(added=4, changed=1, deleted=0, executables_added=2),
        notable=[DiffEntry(path="/tmp/.x/dropper", kind="A", type="file", sha256=binary.sha256,
                           executable=True, elf=True, flagged=True,
                           quarantined=binary.sha256),
                 DiffEntry(path="/usr/local/bin/run.sh", kind="C", type="file",
                           sha256="cd" * 32, executable=True, script=True)],
        artifact=ArtifactRef(sha256=diff.sha256, size=diff.size,
                             name=f"filesystem-diff-{container[:12]}.json"),
        quarantined=[ArtifactRef(sha256=binary.sha256, size=binary.size,
                                 name="quarantine/tmp/.x/dropper",
                                 media_type="application/octet-stream")])
    collected = [
        {"sha256": diff.sha256, "size": diff.size, "name": f"filesystem-diff-{container[:12]}.json",
         "media_type": "application/json", "collector": "evidence.filesystem_diff",
         "method": "node-agent", "node": "node-1", "step": "diff"},
        {"sha256": binary.sha256, "size": binary.size, "name": "quarantine/tmp/.x/dropper",
         "media_type": "application/octet-stream", "collector": "evidence.filesystem_diff",
         "method": "node-agent", "node": "node-1", "step": "diff"}]
    return result.model_dump(mode="json"), collected


def test_evidence_shows_in_the_prompt_and_each_file_goes_into_its_thread_once(
        evidence_setup: Setup) -> None:
    s = evidence_setup
    incident, run_id = s.incident(1)
    store = ArtifactStore(s.settings.effective_artifacts_dir)
    container = drift_alert(1)["output_fields"]["container.full_id"]
    tree, collected = _tree_result(store, container)
    assert s.executor.apply(run_id, ev.StepSucceeded("tree", 1, tree, now_ns()),
                            effects=[("evidence.collected", collected)])
    diff, kept = _diff_result(store, container)
    assert s.executor.apply(run_id, ev.StepSucceeded("diff", 1, diff, now_ns()),
                            effects=[("evidence.collected", k) for k in kept])
    s.flush()

    message = s.prompt_of(incident)
    blocks = json.dumps(message["blocks"], ensure_ascii=False)
    assert "*Process tree* (node agent, high assurance): 3 processes" in blocks
    assert "&gt;&gt;   4242/7 root /tmp/.x/&lt;!channel&gt; (deleted) [upper]" in blocks
    assert "<!channel>" not in blocks
    assert "*Filesystem diff* (node agent, high assurance): 4 added, 1 changed, 0 deleted; " \
           "2 executables added; 1 quarantined" in blocks
    assert "⚑ flagged added `/tmp/.x/dropper` ELF sha256 `" in blocks
    assert buttons(message)

    thread = [m for m in s.slack.messages(CHANNEL) if m.get("thread_ts") == message["ts"]
              and m["ts"] != message["ts"]]
    shared = {f["name"] for m in thread for f in m.get("files", [])}
    assert shared == {f"process-tree-{container[:12]}.json",
                      f"filesystem-diff-{container[:12]}.json"}  # never the executable
    uploads = s.slack.uploads
    assert all(u.thread_ts == message["ts"] and u.channel == s.slack.channel_id(CHANNEL)
               for u in uploads.values())
    assert {hashlib.sha256(u.data or b"").hexdigest() for u in uploads.values()} == {
        collected["sha256"], kept[0]["sha256"]}
    with s.backends.engine.connect() as conn:
        records = [r for r in audit.iter_records(conn, incident) if r.kind == EVIDENCE_SHARED]
    assert sorted(r.data["sha256"] for r in records) == sorted(
        [collected["sha256"], kept[0]["sha256"]])
    assert all(r.data["file_id"] in uploads for r in records)

    # Later changes re-render the message, and upload nothing again.
    s.worker.clock.now += 2
    assert s.executor.decide(incident_id=incident, option="dismiss", actor="slack:UALICE0001",
                             reason="test").decided
    s.flush()
    assert "Decision: dismiss" in json.dumps(s.prompt_of(incident)["blocks"])
    assert len(s.slack.uploads) == 2
    assert len(s.slack.calls("files.completeUploadExternal")) == 2
