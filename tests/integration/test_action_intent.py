"""Write-ahead intents of cluster actions: every cluster-changing request is committed to the
audit trail as ``kubernetes.intent`` before it is sent, and a step that finds its change already
made by an earlier delivery that never recorded it records that change (``recovered``).

Steps run through the executor over a real store (SQLite and PostgreSQL), the plug-ins through
the official client against the fake Kubernetes API; the worker that dies is a real process
killed with SIGKILL. Nothing of ours is patched.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client as k8s
from sqlalchemy import Engine

from responder.intake.backends import Backends, open_backends
from responder.intake.planning import RunPlanner
from responder.kube.pods import QUARANTINE_LABEL
from responder.models.alerts import parse_alert
from responder.models.audit import AuditRecord
from responder.playbooks.schema import Playbook
from responder.plugins import runtime
from responder.plugins.registry import RecordingContext, load_all
from responder.settings import Settings
from responder.store import audit, migrating, runs
from responder.store.engine import make_engine
from responder.workers.executing import Executor
from responder.workers.manual import run_pod_action
from tests.conftest import make_settings
from tests.fakes.kubernetes_api import FakeKubernetes, RecordedRequest
from tests.support.dispatching import RecordingDispatcher
from tests.support.processes import REPO, base_env, wait_for
from tests.support.samples import drift_alert

PLUGINS = {p.name: p for p in load_all()}
DRIFT_RULE = "Drop and execute new binary in container"
TARGET = {"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}"}


def playbook(uses: str, **extra: Any) -> Playbook:
    """One cluster-changing step (timeout 1 s, one retry at once) on the alert's pod."""
    return Playbook.model_validate({
        "name": "act-now", "match": {"rules": [DRIFT_RULE]},
        "steps": [{"id": "act", "uses": uses, "auto": True, "timeout": 1,
                   "retries": {"count": 1, "backoff_seconds": 0},
                   "with": {**TARGET, **extra}}],
    })


@dataclass
class Harness:
    fake: FakeKubernetes
    backends: Backends
    executor: Executor
    settings: Settings
    pod: str = ""
    uid: str = ""
    incident: str = ""

    @property
    def engine(self) -> Engine:
        return self.backends.engine

    def run_for_pod(self, number: int) -> str:
        """A web pod behind a Service, a drift alert about it, and its run, started."""
        workload = self.fake.add_workload("shop", "web", labels={"app": "web"}, replicas=1)
        self.fake.add_service("shop", "web", {"app": "web"})
        pod = workload.pods[0]
        self.pod, self.uid = pod["metadata"]["name"], pod["metadata"]["uid"]
        alert = drift_alert(number)
        alert["output_fields"]["k8s.ns.name"] = "shop"
        alert["output_fields"]["k8s.pod.name"] = self.pod
        [run_id] = self.backends.recorder.record([parse_alert(alert)]).runs
        assert self.executor.start(run_id) is True
        with self.engine.connect() as conn:
            record = runs.load_run(conn, run_id)
        assert record is not None
        self.incident = record.incident_id
        return run_id

    def records(self, kind: str | None = None) -> list[AuditRecord]:
        with self.engine.connect() as conn:
            assert audit.verify(conn).ok
            found = list(audit.iter_records(conn))
        return [r for r in found if kind is None or r.kind == kind]

    def step(self, run_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            record = runs.load_run(conn, run_id)
        assert record is not None
        return dict(record.state["steps"]["act"])

    def writes(self, method: str, suffix: str = "") -> list[RecordedRequest]:
        path = rf"/namespaces/shop/pods/{re.escape(self.pod)}{suffix}$"
        return [r for r in self.fake.writes(path) if r.method == method]


@pytest.fixture
def harness_for(backend_kind: str, request: pytest.FixtureRequest,
                ) -> Iterator[Callable[[Playbook], Harness]]:
    opened: list[tuple[FakeKubernetes, Backends]] = []

    def build(spec: Playbook) -> Harness:
        fake = FakeKubernetes(namespaces=["shop"]).start()
        settings = make_settings(backend_kind, request, kube_host=fake.host, kube_retries=0)
        runtime.install(settings)
        sent = RecordingDispatcher()
        backends = open_backends(settings, planner=RunPlanner([spec]), dispatcher=sent)
        opened.append((fake, backends))
        return Harness(fake, backends, Executor(backends.engine, load_all(), sent, grace_s=0.2),
                       settings)

    yield build
    for fake, backends in opened:
        backends.close()
        fake.stop()


def test_the_pod_patch_is_committed_as_an_intent_before_it_is_sent(
    harness_for: Callable[[Playbook], Harness],
) -> None:
    h = harness_for(playbook("kubernetes.isolate"))
    run_id = h.run_for_pod(1)
    h.fake.delay(r"/pods/[^/]+$", 1.0, method="PATCH")  # the patch stays in flight a while
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(h.executor.run_step(run_id, "act", 1)))
    worker.start()
    try:
        [in_flight] = wait_for(lambda: h.writes("PATCH"), 10, 0.01, what="the pod PATCH sent")
        # While the PATCH is in flight, its intent is already committed (read on another
        # connection), with the very body the API server received.
        [intent] = [r for r in h.records("kubernetes.intent")
                    if r.data["request"]["method"] == "PATCH"]
        assert in_flight.status is None
        assert QUARANTINE_LABEL not in (h.fake.pod("shop", h.pod) or {})["metadata"]["labels"]
    finally:
        worker.join(30)
    assert outcome == ["recorded"]
    assert intent.data["request"]["body"] == in_flight.body
    assert intent.data["request"]["path"] == f"/api/v1/namespaces/shop/pods/{h.pod}"
    assert intent.data["request"]["content_type"] == "application/merge-patch+json"
    assert (intent.data["run"], intent.data["step"], intent.data["attempt"]) == (run_id, "act", 1)
    assert intent.data["action"] == "isolate"
    assert intent.data["target"] == {"namespace": "shop", "pod": h.pod, "uid": h.uid}
    assert intent.data["before"]["labels"]["app"] == "web"
    assert intent.actor == "worker"
    assert intent.data["worker"]
    # The NetworkPolicy create was written ahead too; the result's records answer both.
    [policy] = [r for r in h.records("kubernetes.intent")
                if r.data["request"]["method"] == "POST"]
    assert policy.data["request"]["path"] == \
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies"
    assert policy.seq < intent.seq
    [before] = h.records("kubernetes.before")
    [after] = h.records("kubernetes.after")
    for record in (before, after):
        assert record.data["intents"] == [policy.seq, intent.seq]
        assert "recovered" not in record.data
        assert record.seq > intent.seq
    assert before.data["state"] == intent.data["before"]
    assert h.step(run_id)["result"]["status"] == "isolated"


def test_an_attempt_that_failed_after_its_patch_applied_is_recorded_by_the_retry_as_recovered(
    harness_for: Callable[[Playbook], Harness],
) -> None:
    h = harness_for(playbook("kubernetes.isolate"))
    run_id = h.run_for_pod(2)
    # The read-back after the patch fails: attempt 1 changed the pod, then failed unrecorded.
    h.fake.fail_next("GET", r"/poddisruptionbudgets$", 403)
    assert h.executor.run_step(run_id, "act", 1) == "recorded"
    assert h.step(run_id)["status"] == "retry_wait"
    assert h.records("kubernetes.before") == []  # the gap this closes
    [patch] = [r for r in h.records("kubernetes.intent")
               if r.data["request"]["method"] == "PATCH"]

    assert h.executor.sweep()["retried"] == 1
    assert h.executor.run_step(run_id, "act", 2) == "recorded"
    step = h.step(run_id)
    assert (step["status"], step["result"]["status"]) == ("succeeded", "isolated")
    assert step["result"]["detail"]["recovered"]["intent"] == patch.seq
    assert step["result"]["detail"]["recovered"]["attempt"] == 1
    [applied] = h.writes("PATCH")  # the action itself landed once
    assert applied.status == 200
    [before] = h.records("kubernetes.before")
    [after] = h.records("kubernetes.after")
    for record in (before, after):
        assert (record.data["recovered"], record.data["intent"]) == (True, patch.seq)
        assert (record.data["attempt"], record.data["intent_attempt"]) == (2, 1)
        assert "earlier request of this step" in record.data["note"]
    assert before.data["state"] == patch.data["before"]
    assert after.data["state"]["labels"] == {QUARANTINE_LABEL: h.incident}
    assert after.data["state"]["uid"] == h.uid


_CHILD = textwrap.dedent("""
    import sys
    from responder.plugins import runtime
    from responder.plugins.registry import load_all
    from responder.settings import Settings
    from responder.store.engine import make_engine
    from responder.workers.executing import Executor
    from tests.support.dispatching import RecordingDispatcher

    settings = runtime.install(Settings()).settings
    executor = Executor(make_engine(settings.effective_database_url), load_all(),
                        RecordingDispatcher(), grace_s=0.2)
    print(executor.run_step(sys.argv[1], sys.argv[2], int(sys.argv[3])), flush=True)
""")


def _run_step_in_a_worker_process(h: Harness, run_id: str) -> subprocess.Popen[bytes]:
    env = base_env({"DRIFT_DATABASE_URL": h.settings.effective_database_url,
                    "DRIFT_KUBE_HOST": h.settings.kube_host or "", "DRIFT_KUBE_RETRIES": "0",
                    "DRIFT_DATA_DIR": str(h.settings.data_dir)})
    return subprocess.Popen([sys.executable, "-c", _CHILD, run_id, "act", "1"], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.parametrize(("uses", "method", "suffix", "status"), [
    ("kubernetes.isolate", "PATCH", "", "isolated"),
    ("kubernetes.evict", "POST", "/eviction", "evicted"),
])
def test_a_worker_killed_while_its_request_is_applied_leaves_the_change_in_the_audit_trail(
    harness_for: Callable[[Playbook], Harness], uses: str, method: str, suffix: str,
    status: str,
) -> None:
    h = harness_for(playbook(uses))
    run_id = h.run_for_pod(3)
    # The request is held in flight; the fake applies it even when its client is gone.
    h.fake.delay(rf"/pods/[^/]+{suffix}$", 1.0, method=method)
    child = _run_step_in_a_worker_process(h, run_id)
    try:
        wait_for(lambda: h.writes(method, suffix) or child.poll() is not None, 30, 0.01,
                 what=f"the worker's {method}")
        assert child.poll() is None, child.communicate()[0].decode()
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    [sent] = wait_for(lambda: [r for r in h.writes(method, suffix) if r.status is not None],
                      10, 0.01, what="the request applied")
    assert sent.status in (200, 201)
    h.fake.reset()
    [intent] = [r for r in h.records("kubernetes.intent")
                if r.data["request"]["method"] == method]
    assert h.records("kubernetes.before") == []

    # The beat finds the dead worker's lease expired and sends the attempt again.
    wait_for(lambda: h.executor.sweep()["redispatched"], 10, 0.1, what="the lease expired")
    assert h.executor.run_step(run_id, "act", 1) == "recorded"
    step = h.step(run_id)
    assert (step["status"], step["result"]["status"]) == ("succeeded", status)
    assert step["result"]["detail"]["recovered"]["intent"] == intent.seq
    assert len(h.writes(method, suffix)) == 1  # sent once: the retry only records it
    [before] = h.records("kubernetes.before")
    [after] = h.records("kubernetes.after")
    for record in (before, after):
        assert (record.data["recovered"], record.data["intent"]) == (True, intent.seq)
        assert record.data["intent_worker"] == intent.data["worker"]
    assert before.data["state"] == intent.data["before"]
    assert after.data["state"]["uid"] == h.uid


def test_a_request_the_api_refused_is_answered_and_never_taken_for_a_change(
    harness_for: Callable[[Playbook], Harness],
) -> None:
    h = harness_for(playbook("kubernetes.evict"))
    run_id = h.run_for_pod(4)
    h.fake.forbid("create", "pods/eviction")
    assert h.executor.run_step(run_id, "act", 1) == "recorded"
    assert h.step(run_id)["status"] == "retry_wait"
    [intent] = h.records("kubernetes.intent")
    [failed] = h.records("kubernetes.failed")
    assert (failed.data["intents"], failed.data["status"]) == ([intent.seq], 403)
    assert failed.data["attempt_failed"] is True
    # Someone else deletes the pod; the retry finds it gone, and does not claim the deletion
    # for the eviction the API refused.
    h.fake.allow("create", "pods/eviction")
    k8s.CoreV1Api(h.fake.api_client()).delete_namespaced_pod(h.pod, "shop")
    assert h.executor.sweep()["retried"] == 1
    assert h.executor.run_step(run_id, "act", 2) == "recorded"
    result = h.step(run_id)["result"]
    assert result["status"] == "already_gone"
    assert "recovered" not in result["detail"]
    assert h.records("kubernetes.after") == []


def test_a_dry_run_writes_nothing_ahead(fake: FakeKubernetes, settings: Settings) -> None:
    workload = fake.add_workload("shop", "web", labels={"app": "web"}, replicas=1)
    name = workload.pods[0]["metadata"]["name"]
    for action in ("isolate", "evict", "delete", "release"):
        ctx = RecordingContext("run", "act", 1, {"id": "INC1"}, {})
        plugin = PLUGINS[f"kubernetes.{action}"]
        result = plugin.run(ctx, plugin.params.model_validate(
            {"namespace": "shop", "pod": name, "dry_run": True}))
        assert ctx.intended == [], action
        assert result.dry_run is True
    assert fake.writes() == []


def test_a_manual_isolation_writes_its_intents_ahead_as_the_person_who_ran_it(
    fake: FakeKubernetes, sqlite_engine: Engine, settings: Settings,
) -> None:
    workload = fake.add_workload("shop", "web", labels={"app": "web"}, replicas=1)
    name = workload.pods[0]["metadata"]["name"]
    done = run_pod_action(settings, sqlite_engine, "isolate", f"shop/{name}", {},
                          actor="cli:alice")
    assert done.payload["status"] == "isolated"
    with sqlite_engine.connect() as conn:
        records = list(audit.iter_records(conn))
    assert [(r.kind, r.actor) for r in records] == [
        ("kubernetes.intent", "cli:alice"), ("kubernetes.intent", "cli:alice"),
        ("kubernetes.before", "cli:alice"), ("kubernetes.after", "cli:alice"),
        ("manual.isolate", "cli:alice")]
    intents = [r.seq for r in records if r.kind == "kubernetes.intent"]
    assert [r.data["request"]["method"] for r in records[:2]] == ["POST", "PATCH"]
    assert records[2].data["intents"] == records[3].data["intents"] == intents


@pytest.fixture
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    engine = make_engine(sqlite_url)
    migrating.upgrade(engine)
    yield engine
    engine.dispose()
