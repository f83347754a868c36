"""Slack 429 and 5xx storms, Kubernetes 500/409/429/timeouts (issue 8, Faults): runs finish or
fail with a recorded reason, cluster actions still land at most once, and no worker is blocked
sleeping: on the same single worker, another run's steps go on while Slack says Retry-After.

Real processes (ingest, one solo worker, beat) on PostgreSQL and a private Redis, the Slack Web
API double (tests/fakes/slack_api.py) and the Kubernetes API double (tests/fakes/
kubernetes_api.py), both with programmed faults.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from responder.kube.pods import QUARANTINE_LABEL
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.slack_api import FakeSlack, SlackRequest
from tests.soak.scenarios import (
    DRIFT_RULE,
    alert_for,
    make_executor,
    pod_writes,
    policy_creates,
    stack_env,
    write_playbook,
)
from tests.support.processes import wait_for
from tests.support.samples import drift_alert
from tests.support.servers import PrivateRedis
from tests.support.stack import Stack

RETRY_AFTER_S = int(os.environ.get("DRIFT_SOAK_RETRY_AFTER", "30"))
EXPIRING_RULE = "Container Drift Detected (chmod)"
BUSY_RULE = "Fileless execution via memfd_create"
#: A busy run is a handful of short steps; on an idle worker it takes a second or two.
BUSY_LIMIT_S = 10.0
#: How long Slack answers only 5xx in the storm test.
SLACK_OUTAGE_S = 12.0

PROMPTED = f"""
name: prompted
match:
  rules: ["{DRIFT_RULE}"]
steps:
  - id: context
    uses: kubernetes.pod_context
    with:
      namespace: "{{{{ incident.namespace }}}}"
      pod: "{{{{ incident.pod }}}}"
      container_id: "{{{{ alert.container_id }}}}"
      node: "{{{{ incident.node }}}}"
  - id: ask
    uses: slack.prompt
    with:
      channel: "#{{{{ incident.namespace }}}}"
      options: [isolate, dismiss]
      approvers: ["cli:alice"]
      expires_after_seconds: 900
  - id: isolate
    uses: kubernetes.isolate
    if: steps.ask.result.option == 'isolate' and steps.context.result.found
    timeout: 60
    retries: {{count: 1, backoff_seconds: 0.5}}
    with:
      namespace: "{{{{ incident.namespace }}}}"
      pod: "{{{{ incident.pod }}}}"
      uid: "{{{{ steps.context.result.uid }}}}"
  - id: done
    uses: core.note
    with: {{message: "isolation {{{{ steps.isolate.result.status }}}}"}}
"""

EXPIRING = f"""
name: expiring
match:
  rules: ["{EXPIRING_RULE}"]
steps:
  - id: ask
    uses: slack.prompt
    with:
      channel: "#{{{{ incident.namespace }}}}"
      options: [isolate, dismiss]
      approvers: ["cli:alice"]
      expires_after_seconds: 6
      on_timeout: dismiss
  - id: decided
    uses: core.note
    with:
      message: "{{{{ steps.ask.result.option }}}} (expired: {{{{ steps.ask.result.expired }}}})"
"""

BUSY = f"""
name: busy
match:
  rules: ["{BUSY_RULE}"]
steps:
""" + "".join(f"""  - {{id: n{i}, uses: core.note, with: {{message: "step {i}"}}}}
  - {{id: s{i}, uses: test.sleep, with: {{seconds: 0.05, label: "s{i}"}}}}
""" for i in range(4))


@dataclass
class Responder:
    """The stack under test, its doubles, and the few things the tests do with them."""

    stack: Stack
    slack: FakeSlack
    kube: FakeKubernetes
    executor: Any
    _numbers: Iterator[int]

    def pod(self, namespace: str) -> dict[str, Any]:
        self.kube.add_namespace(namespace)
        workload = self.kube.add_workload(namespace, "web", labels={"app": "web"}, replicas=1)
        self.kube.add_service(namespace, "web", {"app": "web"})
        return workload.pods[0]

    def prompted(self, namespace: str) -> tuple[str, dict[str, Any]]:
        """A drift alert on a fresh pod: its incident and the pod."""
        pod = self.pod(namespace)
        return self.stack.post(alert_for(pod, next(self._numbers))), pod

    def expiring(self, namespace: str) -> str:
        alert = drift_alert(next(self._numbers), rule=EXPIRING_RULE)
        alert["output_fields"]["k8s.ns.name"] = namespace
        return self.stack.post(alert)

    def busy_run(self) -> tuple[str, float]:
        """Post an alert whose playbook is eight short steps: its incident, and the seconds
        until its run was done."""
        started = time.monotonic()
        incident = self.stack.post(drift_alert(next(self._numbers), rule=BUSY_RULE))
        self.stack.wait_run(incident, "succeeded", timeout=120)
        return incident, time.monotonic() - started

    def approve(self, incident: str, option: str = "isolate") -> None:
        outcome = self.executor.decide(incident_id=incident, option=option, actor="cli:alice")
        assert outcome.ok, outcome.message

    def posts_about(self, incident: str) -> list[SlackRequest]:
        """chat.postMessage requests for the incident's message (any answer)."""
        return [r for r in self.slack.calls("chat.postMessage")
                if incident in json.dumps(r.args.get("blocks") or r.args.get("text"))]

    def wait_posted(self, incident: str, timeout: float) -> SlackRequest:
        def posted() -> SlackRequest | None:
            return next((r for r in self.posts_about(incident) if r.ok), None)

        try:
            found: SlackRequest = wait_for(posted, timeout, 0.2,
                                           what=f"the prompt of {incident} posted")
        except AssertionError:
            raise AssertionError(f"{self.logs()}") from None
        return found

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.output()[-4000:]}" for s in self.stack.services)

    def audit(self, incident: str) -> Counter[str]:
        return Counter(self.stack.audit_kinds(incident))


@pytest.fixture
def responder(tmp_path: Path, postgres_url: str) -> Iterator[Responder]:
    with PrivateRedis(appendonly=False) as redis_server, FakeSlack() as slack, \
            FakeKubernetes(namespaces=["kube-system"]) as kube:
        env = stack_env(tmp_path, database_url=postgres_url, redis_url=redis_server.url,
                        SLACK_BOT_TOKEN=slack.token or "xoxb-test",
                        DRIFT_SLACK_API_URL=slack.base_url, DRIFT_SLACK_CHANNEL="#secops",
                        DRIFT_KUBE_HOST=kube.host, DRIFT_KUBE_TIMEOUT_SECONDS="1")
        write_playbook(env, "prompted", PROMPTED)
        write_playbook(env, "expiring", EXPIRING)
        write_playbook(env, "busy", BUSY)
        stack = Stack(env, tmp_path)
        executor = make_executor(env)
        try:
            stack.ingest()
            stack.start("worker", "--pool", "solo", name="worker")
            stack.start("beat", "--interval", "0.1", name="beat")
            yield Responder(stack, slack, kube, executor, iter(range(20_000, 30_000)))
        finally:
            executor.engine.dispose()
            stack.stop()


def _answers(requests: list[SlackRequest]) -> list[int | None]:
    return [r.status for r in requests]


# ------------------------------------------------------------------------------ Slack

@pytest.mark.timeout(600)
def test_a_slack_429_with_retry_after_is_waited_out_while_the_same_worker_runs_other_steps(
    responder: Responder, soak_report: dict[str, Any],
) -> None:
    _, baseline = responder.busy_run()  # warms the worker up, too
    responder.slack.rate_limit("chat.postMessage", times=1, retry_after=RETRY_AFTER_S)
    incident, pod = responder.prompted("slack-429")
    responder.stack.wait_run(incident, "waiting")
    refused = wait_for(lambda: next((r for r in responder.posts_about(incident)
                                     if r.status == 429), None), 30, 0.05,
                       what="the prompt refused with 429")

    # One worker, solo pool: had it slept on Retry-After, nothing else would run meanwhile.
    _, during = responder.busy_run()
    responder.approve(incident)
    approved = time.monotonic()
    run = responder.stack.wait_run(incident, "succeeded", timeout=60)
    decided_to_done = time.monotonic() - approved
    assert run["state"]["steps"]["isolate"]["result"]["status"] == "isolated"
    assert time.monotonic() - refused.received_at < RETRY_AFTER_S, \
        "the run should be done long before Slack's Retry-After"

    posted = responder.wait_posted(incident, RETRY_AFTER_S + 60)
    waited = posted.received_at - refused.received_at
    posts = responder.posts_about(incident)
    soak_report.update(retry_after_s=RETRY_AFTER_S, busy_run_idle_s=round(baseline, 2),
                       busy_run_during_retry_after_s=round(during, 2),
                       approval_to_isolated_s=round(decided_to_done, 2),
                       prompt_posted_after_429_s=round(waited, 2),
                       prompt_post_answers=_answers(posts))
    assert during < BUSY_LIMIT_S
    assert decided_to_done < BUSY_LIMIT_S
    assert waited >= RETRY_AFTER_S - 1, "Slack's Retry-After was not honoured"
    assert _answers(posts) == [429, 200], "one refusal, then one message: no hammering"
    labels = responder.kube.pod("slack-429", pod["metadata"]["name"])["metadata"]["labels"]  # type: ignore[index]
    assert labels[QUARANTINE_LABEL] == incident


@pytest.mark.timeout(600)
def test_a_slack_5xx_storm_is_retried_with_backoff_and_each_prompt_is_posted_once(
    responder: Responder, soak_report: dict[str, Any],
) -> None:
    slack = responder.slack
    # Every post fails for a while (gateway pages first, then Slack's own 500s), then Slack heals.
    slack.fail("chat.postMessage", 503, times=3, body="<html><h1>503 Service Unavailable</h1>")
    slack.fail("chat.postMessage", 500, times=10**6)
    started = time.monotonic()
    incident, _ = responder.prompted("slack-5xx")
    responder.stack.wait_run(incident, "waiting")
    wait_for(lambda: responder.posts_about(incident), 30, 0.05,
             what="the first attempt to post the prompt")
    busy, during = responder.busy_run()
    time.sleep(max(0.0, SLACK_OUTAGE_S - (time.monotonic() - started)))
    slack.reset_faults()
    healed = time.monotonic()
    posted = responder.wait_posted(incident, 120)
    responder.wait_posted(busy, 120)
    posts = responder.posts_about(incident)
    gaps = [round(b.received_at - a.received_at, 2) for a, b in itertools.pairwise(posts)]
    every = slack.calls("chat.postMessage")
    soak_report.update(outage_s=SLACK_OUTAGE_S, prompt_post_answers=_answers(posts),
                       gaps_between_attempts_s=gaps, all_post_answers=dict(Counter(
                           _answers(every))), busy_run_during_storm_s=round(during, 2),
                       posted_after_healing_s=round(posted.received_at - healed, 2))
    assert during < BUSY_LIMIT_S
    assert posted is posts[-1]
    assert [r.ok for r in posts] == [False] * (len(posts) - 1) + [True]
    assert len(posts) >= 4, "a few attempts during the outage"
    # Each failure pauses the channel longer (1 s, 2 s, 4 s... then a token at 1/s), and the
    # task's own countdown doubles too: the gaps grow.
    assert all(b > a for a, b in itertools.pairwise(gaps)), f"no backoff: {gaps}"
    assert gaps[-1] >= 2 * gaps[0], f"no backoff between attempts: {gaps}"
    # Every incident (the prompted one and the busy one) got exactly one message.
    for channel, shown in (("#slack-5xx", incident), ("#secops", busy)):
        assert sum(1 for m in slack.messages(channel) if shown in json.dumps(m)) == 1
    assert sum(1 for r in slack.calls("chat.postMessage") if r.ok) == 2
    responder.approve(incident)
    responder.stack.wait_run(incident, "succeeded", timeout=60)


@pytest.mark.timeout(600)
def test_when_slack_never_answers_the_approval_expires_and_the_run_finishes_with_the_reason(
    responder: Responder, soak_report: dict[str, Any],
) -> None:
    responder.slack.fail("*", 500, times=1_000_000)
    incident = responder.expiring("slack-down")
    _, during = responder.busy_run()
    run = responder.stack.wait_run(incident, "succeeded", timeout=60)
    result = run["state"]["steps"]["ask"]["result"]
    kinds = responder.audit(incident)
    posts = responder.posts_about(incident)
    soak_report.update(busy_run_during_outage_s=round(during, 2),
                       prompt_post_answers=_answers(posts), approval_result=result)
    assert result["expired"] is True
    assert result["option"] == "dismiss"
    assert run["state"]["steps"]["decided"]["result"]["message"] == "dismiss (expired: True)"
    assert kinds["approval.expired"] == 1
    assert kinds["run.finished"] == 1
    assert posts, "the prompt was never even tried"
    assert not any(r.ok for r in posts)
    assert during < BUSY_LIMIT_S


# ------------------------------------------------------------------------------ Kubernetes

@dataclass(frozen=True)
class KubeFault:
    program: Callable[[FakeKubernetes, str], None]
    outcome: str  # run status: succeeded or failed
    reason: str = ""  # in the failed step's recorded error
    max_seconds: float = 30.0  # approval -> run done


def _pods(ns: str) -> str:
    return rf"^/api/v1/namespaces/{ns}/pods/[^/]+$"


def _policies(ns: str) -> str:
    return rf"^/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies$"


KUBE_FAULTS = {
    "500-then-ok": KubeFault(lambda k, ns: k.fail_next("PATCH", _pods(ns), 500, times=2),
                             "succeeded"),
    "500-storm": KubeFault(lambda k, ns: k.fail_next("PATCH", _pods(ns), 500, times=10**6),
                           "failed", "HTTP 500"),
    "503-storm-on-policy": KubeFault(
        lambda k, ns: k.fail_next("POST", _policies(ns), 503, times=10**6), "failed",
        "HTTP 503"),
    "409-then-ok": KubeFault(lambda k, ns: k.fail_next("PATCH", _pods(ns), 409, times=3),
                             "succeeded"),
    "409-storm": KubeFault(lambda k, ns: k.fail_next("PATCH", _pods(ns), 409, times=10**6),
                           "failed", "conflict", max_seconds=20),
    "429-retry-after-30": KubeFault(
        lambda k, ns: k.fail_next("PATCH", _pods(ns), 429, times=1, retry_after=30),
        "succeeded", max_seconds=15),
    "timeouts": KubeFault(lambda k, ns: k.delay(_pods(ns), 2.5, method="PATCH"), "succeeded",
                          max_seconds=60),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", list(KUBE_FAULTS))
def test_kubernetes_faults_end_the_run_with_a_recorded_reason_and_change_the_pod_at_most_once(
    responder: Responder, fault: str, soak_report: dict[str, Any],
) -> None:
    spec = KUBE_FAULTS[fault]
    namespace = f"kube-{fault.replace('-', '')}"[:40]
    incident, pod = responder.prompted(namespace)
    name = pod["metadata"]["name"]
    responder.stack.wait_run(incident, "waiting")
    spec.program(responder.kube, namespace)
    responder.approve(incident)
    approved = time.monotonic()
    run = responder.stack.wait_run(incident, spec.outcome, timeout=spec.max_seconds + 30)
    seconds = time.monotonic() - approved
    patches = pod_writes(responder.kube, namespace, name)
    applied = [r for r in patches if r.status == 200]
    created = [r for r in policy_creates(responder.kube, namespace) if r.status == 201]
    isolate = run["state"]["steps"]["isolate"]
    kinds = responder.audit(incident)
    soak_report.update(fault=fault, outcome=run["status"], seconds=round(seconds, 2),
                       attempts=isolate["attempt"], error=(isolate.get("error") or "")[:200],
                       pod_patch_answers=[r.status for r in patches],
                       policy_creates=len(created), requests=len(responder.kube.requests))
    assert seconds < spec.max_seconds, f"{seconds:.1f} s from approval to the end"
    assert len(applied) <= 1, "the pod was changed more than once"
    assert len(created) <= 1
    labels = responder.kube.pod(namespace, name)["metadata"]["labels"]  # type: ignore[index]
    if spec.outcome == "succeeded":
        assert isolate["result"]["status"] == "isolated"
        assert len(applied) == 1
        assert labels.get(QUARANTINE_LABEL) == incident
        assert kinds["step.failed"] == isolate["attempt"] - 1
    else:
        assert spec.reason.lower() in (isolate["error"] or "").lower(), isolate
        assert kinds["step.failed"] == isolate["attempt"] == 2
        assert kinds["run.finished"] == 1
        # Bounded: the client's retries (DRIFT_KUBE_RETRIES=4) for each of the 2 attempts.
        assert len(patches) <= 10
        if not applied:
            assert QUARANTINE_LABEL not in labels
