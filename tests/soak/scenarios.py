"""Fault scenarios shared by the soak suites (``make soak``) and their smoke subset in
``make test`` (tests/integration/test_faults_smoke.py): the same code, run long or short.

- ``KillTrials``: playbook runs that isolate a pod on the fake Kubernetes API while workers are
  killed with SIGKILL at random points; each trial counts what reached the cluster.
- ``Storm``: alerts posted from client threads to a real ``drift-responder ingest`` while a
  backend is restarted; every answer is counted, so that what was accepted can be checked
  against what the store holds.

Everything runs as real processes; nothing in the product is patched.
"""

from __future__ import annotations

import json
import random
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from responder.kube.pods import QUARANTINE_LABEL
from responder.plugins.registry import load_all
from responder.settings import Settings
from responder.store.engine import make_engine
from responder.store.schema import incidents, runs, step_leases
from responder.workers.app import CeleryDispatcher, make_celery
from responder.workers.executing import Executor
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.support.processes import Service, base_env, wait_for
from tests.support.samples import drift_alert
from tests.support.servers import PrivatePostgres, PrivateRedis
from tests.support.stack import Stack

TOKEN = "stack-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DRIFT_RULE = "Drop and execute new binary in container"
STEP_TIMEOUT_S = 3

ISOLATE_PLAYBOOK = f"""
name: isolate-under-fire
match:
  rules: ["{DRIFT_RULE}"]
steps:
  - id: context
    uses: kubernetes.pod_context
    timeout: {STEP_TIMEOUT_S}
    with:
      namespace: "{{{{ incident.namespace }}}}"
      pod: "{{{{ incident.pod }}}}"
      container_id: "{{{{ alert.container_id }}}}"
      node: "{{{{ incident.node }}}}"
  - id: ask
    uses: core.approval
    with:
      options: [isolate, dismiss]
      approvers: ["cli:alice"]
  - id: before
    uses: test.sleep
    timeout: {STEP_TIMEOUT_S}
    with: {{seconds: 0.3, label: before}}
  - id: isolate
    uses: kubernetes.isolate
    if: steps.ask.result.option == 'isolate' and steps.context.result.found
    timeout: {STEP_TIMEOUT_S}
    with:
      namespace: "{{{{ incident.namespace }}}}"
      pod: "{{{{ incident.pod }}}}"
      uid: "{{{{ steps.context.result.uid }}}}"
  - id: after
    uses: test.sleep
    timeout: {STEP_TIMEOUT_S}
    with: {{seconds: 0.3, label: after}}
  - id: done
    uses: core.note
    with: {{message: "isolation {{{{ steps.isolate.result.status }}}}"}}
"""
ISOLATE_STEPS = ("context", "ask", "before", "isolate", "after", "done")
#: Where a kill is aimed: early (while the run starts and reads the pod), anywhere after the
#: approval, or around the pod PATCH (in flight, just applied, or before the result's commit).
KILL_MODES = ("early", "after-approval", "around-patch")
#: Not in the random rotation: the moment the pod PATCH has been applied (answered 200).
AFTER_PATCH = "after-patch"
#: How long a storm client pauses after a 503.
REFUSED_PAUSE_S = 0.05


def write_playbook(env: dict[str, str], name: str, text: str) -> None:
    Path(env["DRIFT_PLAYBOOKS_DIR"], f"{name}.yaml").write_text(textwrap.dedent(text))


def stack_env(tmp: Path, *, database_url: str | None, redis_url: str | None,
              **extra: str) -> dict[str, str]:
    """A stack's environment: SQLite in ``tmp`` unless ``database_url``; the embedded SQL
    correlator and broker unless ``redis_url``; its own queue and key prefix."""
    (tmp / "pb").mkdir(exist_ok=True)
    values = {
        "DRIFT_DATA_DIR": str(tmp / "data"), "DRIFT_PLAYBOOKS_DIR": str(tmp / "pb"),
        "DRIFT_INGEST_TOKEN": TOKEN, "DRIFT_PLUGIN_MODULES": "tests.support.plugins",
        "DRIFT_QUEUE": f"soak-{uuid.uuid4().hex[:8]}", "DRIFT_LEASE_GRACE_SECONDS": "1",
        "DRIFT_REDIS_PREFIX": f"drift-soak-{uuid.uuid4().hex[:8]}:",
    }
    if database_url:
        values["DRIFT_DATABASE_URL"] = database_url
    if redis_url:
        values["DRIFT_REDIS_URL"] = redis_url
    values.update(extra)
    return base_env(values)


@contextmanager
def running_stack(env: dict[str, str], tmp: Path) -> Iterator[Stack]:
    stack = Stack(env, tmp)
    try:
        yield stack
    finally:
        stack.stop()


def settings_of(env: dict[str, str]) -> Settings:
    """The settings the stack's processes read from their environment."""
    values = {k.removeprefix("DRIFT_").lower(): v for k, v in env.items()
              if k.startswith("DRIFT_")}
    return Settings(**values)


def make_executor(env: dict[str, str]) -> Executor:
    """The product's executor over the stack's store and broker: approvals are decided through
    it, as the CLI and the Slack bot do. Dispose of ``executor.engine`` when done."""
    settings = settings_of(env)
    return Executor(make_engine(settings.effective_database_url),
                    load_all(settings.plugin_module_list), CeleryDispatcher(make_celery(settings)),
                    grace_s=settings.lease_grace_seconds)


def alert_for(pod: dict[str, Any], number: int, *, rule: str | None = None) -> dict[str, Any]:
    """A drift alert about the first container of ``pod`` (as the kubelet reports it)."""
    alert = drift_alert(number, rule=rule)
    alert["output_fields"]["k8s.ns.name"] = pod["metadata"]["namespace"]
    alert["output_fields"]["k8s.pod.name"] = pod["metadata"]["name"]
    alert["hostname"] = pod["spec"]["nodeName"]
    full = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    alert["output_fields"]["container.full_id"] = full
    alert["output_fields"]["container.id"] = full[:12]
    return alert


def pod_writes(fake: FakeKubernetes, namespace: str, pod: str) -> list[Any]:
    path = f"/api/v1/namespaces/{namespace}/pods/{pod}"
    return [r for r in fake.requests if r.method == "PATCH" and r.path == path]


def policy_creates(fake: FakeKubernetes, namespace: str) -> list[Any]:
    path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
    return [r for r in fake.requests if r.method == "POST" and r.path == path]


# ------------------------------------------------------------------------------ worker kills

@dataclass
class Trial:
    index: int
    mode: str
    incident: str = ""
    killed_step: str | None = None  # the step the victim held a lease on (None: it was idle)
    kill_at_s: float = 0.0  # after the alert was posted
    seconds: float = 0.0  # alert posted -> run finished
    status: str = ""
    pod_patches: int = 0  # PATCH requests to the pod
    applied_patches: int = 0  # ... answered 200 (the change applied)
    policy_creates: int = 0  # NetworkPolicy POSTs answered 201
    effects: int = 0  # test.effect audit records (one per test.sleep step)
    #: kubernetes.after records: 0 when the attempt that changed the pod was killed before its
    #: result was saved (the attempt that finished found the pod already isolated).
    after_records: int = 0
    problems: list[str] = field(default_factory=list)


class KillTrials:
    """Runs of ISOLATE_PLAYBOOK, one per trial and namespace, with two workers and a beat; in
    each trial one worker is killed with SIGKILL at a random point and replaced at once."""

    def __init__(self, stack: Stack, fake: FakeKubernetes, *, seed: int, workers: int = 2,
                 patch_delay_s: float = 0.15, read_delay_s: float = 0.03) -> None:
        self.stack = stack
        self.fake = fake
        self.rng = random.Random(seed)
        self.seed = seed
        self.trials: list[Trial] = []
        self._worker_count = workers
        self.workers: list[Service] = []
        self._spawned = 0
        self.executor = make_executor(stack.env)
        self._engine = self.executor.engine
        # Widen the windows a kill can land in: the pod PATCH in flight (the fake applies it
        # even when the client is gone), and the reads after it, before the result is saved.
        fake.delay(r"/pods/[^/]+$", patch_delay_s, method="PATCH")
        fake.delay(r"/namespaces/kill-", read_delay_s, method="GET")

    def start(self) -> None:
        write_playbook(self.stack.env, "isolate", ISOLATE_PLAYBOOK)
        self.stack.ingest()
        for _ in range(self._worker_count):
            self._spawn()
        self.stack.start("beat", "--interval", "0.1", name="beat")

    def close(self) -> None:
        self._engine.dispose()

    def _spawn(self) -> None:
        self._spawned += 1
        self.workers.append(self.stack.start("worker", "--pool", "solo",
                                             name=f"worker{self._spawned}"))

    def run(self, count: int) -> list[Trial]:
        for index in range(count):
            self.trials.append(self.trial(len(self.trials), KILL_MODES[index % len(KILL_MODES)]))
        return self.trials

    def trial(self, index: int, mode: str) -> Trial:
        trial = Trial(index, mode)
        namespace = f"kill-{index}"
        self.fake.add_namespace(namespace)
        workload = self.fake.add_workload(namespace, "web", labels={"app": "web"}, replicas=1)
        self.fake.add_service(namespace, "web", {"app": "web"})
        pod = workload.pods[0]
        name = pod["metadata"]["name"]
        posted = time.monotonic()
        trial.incident = self.stack.post(alert_for(pod, 10_000 + index))
        if mode == "early":
            time.sleep(self.rng.uniform(0.0, 0.6))
            self._kill(trial, posted)
            self._wait(trial, "waiting")
            self._approve(trial)
        else:
            self._wait(trial, "waiting")
            self._approve(trial)
            if mode == "after-approval":
                time.sleep(self.rng.uniform(0.0, 1.2))
            elif mode == "after-patch":  # applied, not yet saved: the worker reads back
                wait_for(lambda: any(r.status == 200 for r in pod_writes(
                    self.fake, namespace, name)), 60, 0.002,
                    what=f"the PATCH of {namespace}/{name} applied")
            else:
                wait_for(lambda: pod_writes(self.fake, namespace, name), 60, 0.005,
                         what=f"the PATCH of {namespace}/{name}")
                time.sleep(self.rng.uniform(0.0, 0.3))
            self._kill(trial, posted)
        run = self._wait(trial, "succeeded")
        trial.seconds = time.monotonic() - posted
        self._check(trial, run, namespace, name)
        return trial

    def _wait(self, trial: Trial, status: str) -> dict[str, Any]:
        try:
            return self.stack.wait_run(trial.incident, status, timeout=90)
        except AssertionError as exc:
            trial.problems.append(f"run never became {status}: {str(exc)[:300]}")
            raise

    def _approve(self, trial: Trial) -> None:
        outcome = self.executor.decide(incident_id=trial.incident, option="isolate",
                                       actor="cli:alice")
        if not outcome.ok:
            trial.problems.append(f"approval refused: {outcome.message}")
            raise AssertionError(outcome.message)

    def _kill(self, trial: Trial, posted: float) -> None:
        """SIGKILL the worker holding a lease of this run (else any live one); replace it."""
        alive = [w for w in self.workers if w.alive()]
        holders = self._lease_holders(trial.incident)
        victim = None
        for step_id, pid in holders:
            victim = next((w for w in alive if w.pid == pid), None)
            if victim is not None:
                trial.killed_step = step_id
                break
        if victim is None:
            victim = self.rng.choice(alive)
        trial.kill_at_s = time.monotonic() - posted
        victim.kill9()
        self.workers.remove(victim)
        self._spawn()

    def _lease_holders(self, incident: str) -> list[tuple[str, int]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(step_leases.c.step_id, step_leases.c.owner)
                .join(runs, runs.c.id == step_leases.c.run_id)
                .where(runs.c.incident_id == incident, step_leases.c.owner.is_not(None))).all()
        return [(r.step_id, int(r.owner.split(":")[1])) for r in rows]

    def _check(self, trial: Trial, run: dict[str, Any], namespace: str, name: str) -> None:
        trial.status = run["status"]
        steps = run["state"]["steps"]
        not_done = {s: steps.get(s, {}).get("status") for s in ISOLATE_STEPS
                    if steps.get(s, {}).get("status") != "succeeded"}
        if not_done:
            trial.problems.append(f"steps not succeeded: {not_done}")
        result = steps.get("isolate", {}).get("result") or {}
        if result.get("status") != "isolated":
            trial.problems.append(f"isolate result: {result}")
        patches = pod_writes(self.fake, namespace, name)
        trial.pod_patches = len(patches)
        trial.applied_patches = sum(1 for r in patches if r.status == 200)
        trial.policy_creates = sum(1 for r in policy_creates(self.fake, namespace)
                                   if r.status == 201)
        if trial.applied_patches != 1:
            trial.problems.append(f"the pod patch was applied {trial.applied_patches} times "
                                  f"(statuses {[r.status for r in patches]})")
        if trial.policy_creates != 1:
            trial.problems.append(f"the NetworkPolicy was created {trial.policy_creates} times")
        labels = (self.fake.pod(namespace, name) or {}).get("metadata", {}).get("labels", {})
        if labels.get(QUARANTINE_LABEL) != trial.incident:
            trial.problems.append(f"pod labels after the run: {labels}")
        try:
            kinds = Counter(self.stack.audit_kinds(trial.incident))  # verifies the chain
        except AssertionError as exc:
            trial.problems.append(f"audit chain does not verify: {exc}")
            return
        trial.effects = kinds["test.effect"]
        trial.after_records = kinds["kubernetes.after"]
        expected = {"test.effect": 2, "run.finished": 1, "note": 1,
                    "step.succeeded": len(ISOLATE_STEPS), "approval.decided": 1,
                    "kubernetes.before": 1}
        wrong = {k: kinds[k] for k, n in expected.items() if kinds[k] != n}
        if wrong:
            trial.problems.append(f"audit counts {wrong} (expected {expected})")


def summarise_trials(trials: list[Trial]) -> dict[str, Any]:
    seconds = sorted(t.seconds for t in trials) or [0.0]
    return {
        "trials": len(trials),
        "succeeded": sum(1 for t in trials if t.status == "succeeded"),
        "with_problems": sum(1 for t in trials if t.problems),
        "modes": dict(Counter(t.mode for t in trials)),
        "killed_while_running": dict(Counter(t.killed_step or "(idle)" for t in trials)),
        "pod_patches_applied": dict(Counter(t.applied_patches for t in trials)),
        "pod_patch_requests": dict(Counter(t.pod_patches for t in trials)),
        "policy_creates": dict(Counter(t.policy_creates for t in trials)),
        "kubernetes_after_records": dict(Counter(t.after_records for t in trials)),
        "run_seconds_median": round(seconds[len(seconds) // 2], 2),
        "run_seconds_max": round(seconds[-1], 2),
    }


# ------------------------------------------------------------------------------ storms

@dataclass
class StormCounts:
    accepted: int = 0  # alerts in requests answered 202
    refused: int = 0  # alerts in requests answered 503
    requests: Counter[int] = field(default_factory=Counter)  # status -> requests
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by kind
    unexpected: list[str] = field(default_factory=list)  # bodies of answers other than 202/503
    per_container: Counter[int] = field(default_factory=Counter)  # accepted alerts
    refusals_without_reason: int = 0
    first_refused: float | None = None
    last_refused: float | None = None


class Storm:
    """Client threads posting alerts (NDJSON batches of 1..max_batch) for ``containers``
    synthetic containers to an ingest, counting every answer."""

    def __init__(self, url: str, *, containers: int, threads: int, max_batch: int = 20,
                 seed: int = 0, pause_s: float = 0.0) -> None:
        self.url = url + "/v1/falco"
        self.containers = containers
        self.threads = threads
        self.max_batch = max_batch
        self.pause_s = pause_s
        self.seed = seed
        self.counts = StormCounts()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = 0
        self._workers: list[threading.Thread] = []
        self._templates: dict[int, tuple[str, str]] = {}

    def _next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def body(self, containers: list[int]) -> bytes:
        lines = []
        for container in containers:
            head, tail = self._template(container)
            lines.append(head + str(uuid.UUID(int=(self.seed << 64) | self._next_seq())) + tail)
        return "\n".join(lines).encode()

    def _template(self, container: int) -> tuple[str, str]:
        found = self._templates.get(container)
        if found is None:
            alert = drift_alert(container + 1)
            alert["uuid"] = "@@UUID@@"
            head, tail = json.dumps(alert).split("@@UUID@@")
            found = self._templates[container] = (head, tail)
        return found

    def post(self, client: httpx.Client, containers: list[int]) -> int | None:
        """One request; returns its status (None on a transport error) and counts it."""
        body = self.body(containers)
        try:
            response = client.post(self.url, content=body, headers={
                **AUTH, "Content-Type": "application/x-ndjson"})
        except httpx.HTTPError as exc:
            with self._lock:
                self.counts.errors[type(exc).__name__] += 1
            return None
        now = time.monotonic()
        refused = False
        with self._lock:
            c = self.counts
            c.requests[response.status_code] += 1
            if response.status_code == 202:
                c.accepted += len(containers)
                c.per_container.update(containers)
            elif response.status_code == 503:
                c.refused += len(containers)
                c.first_refused = c.first_refused or now
                c.last_refused = now
                reason = _json(response).get("error")
                if reason != "unavailable" or "retry-after" not in response.headers:
                    c.refusals_without_reason += 1
                refused = True
            else:
                c.unexpected.append(f"{response.status_code}: {response.text[:300]}")
        if refused:
            time.sleep(REFUSED_PAUSE_S)  # a sender backs off a little (not Retry-After's 5 s)
        return response.status_code

    def seed_every_container(self) -> None:
        """One accepted alert per container (retried until accepted), so each has an incident."""
        with httpx.Client(timeout=30) as client:
            for container in range(self.containers):
                wait_for(lambda c=container: self.post(client, [c]) == 202, 60, 0.2,  # type: ignore[misc]
                         what=f"an alert of container {container} accepted")

    def _loop(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                size = rng.randint(1, self.max_batch)
                self.post(client, [rng.randrange(self.containers) for _ in range(size)])
                if self.pause_s:
                    time.sleep(self.pause_s)

    def start(self) -> None:
        self._workers = [threading.Thread(target=self._loop, args=(i,), daemon=True,
                                          name=f"storm-{i}") for i in range(self.threads)]
        for thread in self._workers:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(60)
        if any(t.is_alive() for t in self._workers):
            raise AssertionError("a storm client thread did not finish")

    def run(self, seconds: float, faults: Callable[[], None] | None = None) -> StormCounts:
        """Storm for ``seconds``; ``faults`` runs meanwhile on this thread."""
        self.start()
        started = time.monotonic()
        try:
            if faults is not None:
                faults()
            rest = seconds - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)
        finally:
            self.stop()
        return self.counts


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class StoreTotals:
    incidents: int
    alerts: int
    keys: int
    per_container: dict[str, int]  # container id (12 hex) -> alert count


def store_totals(database_url: str) -> StoreTotals:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(incidents.c.container_id, incidents.c.key,
                                       incidents.c.alert_count)).all()
            keys = conn.execute(select(func.count(func.distinct(incidents.c.key)))).scalar()
    finally:
        engine.dispose()
    per: Counter[str] = Counter()
    for row in rows:
        per[str(row.container_id)] += int(row.alert_count)
    return StoreTotals(len(rows), sum(int(r.alert_count) for r in rows), int(keys or 0),
                       dict(per))


def container_id(number: int) -> str:
    """The container.id of ``drift_alert(number)``."""
    return f"{number:012x}"


def probe(url: str, path: str = "/readyz") -> tuple[int, dict[str, Any]]:
    response = httpx.get(url + path, timeout=10)
    return response.status_code, _json(response)


def wait_accepting(storm: Storm, timeout: float) -> float:
    """Seconds until a single alert is accepted again."""
    started = time.monotonic()
    with httpx.Client(timeout=30) as client:
        wait_for(lambda: storm.post(client, [0]) == 202, timeout, 0.1,
                 what="the ingest accepting alerts again")
    return time.monotonic() - started


# ------------------------------------------------------------------------------ outages in storms

def redis_restarts_in_storm(storm: Storm, redis_server: PrivateRedis, *, seconds: float,
                            restarts: int) -> tuple[StormCounts, list[dict[str, Any]]]:
    """A storm with ``restarts`` evenly spread Redis restarts: SIGKILL and SHUTDOWN alternate,
    down 0.3 to 1.5 s, then the same port and directory. Returns the counts and, per outage,
    what /readyz said meanwhile and how soon alerts were accepted again."""
    outages: list[dict[str, Any]] = []
    url = storm.url.removesuffix("/v1/falco")

    def restart_all() -> None:
        for n in range(restarts):
            time.sleep(max(0.2, seconds / (restarts + 1) - 1))
            hard = n % 2 == 0
            if hard:
                redis_server.kill()
            else:
                redis_server.shutdown()
            down_at = time.monotonic()
            time.sleep((0.3, 0.8, 1.5)[n % 3])
            ready, body = probe(url)
            redis_server.start()
            back = time.monotonic()
            recovered = wait_accepting(storm, 30)
            outages.append({"hard": hard, "down_s": round(back - down_at, 2),
                            "recovered_s": round(recovered, 2), "readyz": ready,
                            "readyz_redis": body.get("redis")})

    counts = storm.run(seconds, restart_all)
    return counts, outages


def postgres_outages_in_storm(storm: Storm, postgres: PrivatePostgres, *, seconds: float,
                              outages: int) -> tuple[StormCounts, list[dict[str, Any]]]:
    """A storm with ``outages`` evenly spread PostgreSQL outages: crashes (``-m immediate``) and
    clean stops (``-m fast``) alternate, down 1 to 6 s. Per outage: what one POST, /readyz and
    /healthz answered while it was down, and how soon alerts were accepted again."""
    seen: list[dict[str, Any]] = []
    url = storm.url.removesuffix("/v1/falco")

    def outage(n: int) -> None:
        mode = ("immediate", "fast")[n % 2]
        postgres.stop(mode)
        stopped = time.monotonic()
        answer = httpx.post(storm.url, json=drift_alert(1), headers=AUTH, timeout=30)
        ready, body = probe(url)
        alive, _ = probe(url, "/healthz")
        time.sleep((1.0, 3.0, 6.0)[n % 3])
        postgres.start()
        back = time.monotonic()
        recovered = wait_accepting(storm, 60)
        seen.append({
            "mode": mode, "down_s": round(back - stopped, 2),
            "recovered_s": round(recovered, 2), "post_status": answer.status_code,
            "post_error": _json(answer).get("error"),
            "retry_after": answer.headers.get("retry-after"), "readyz": ready,
            "readyz_database": body.get("database"), "healthz": alive})

    def all_outages() -> None:
        for n in range(outages):
            time.sleep(max(0.2, seconds / (outages + 1) - 2))
            outage(n)

    counts = storm.run(seconds, all_outages)
    return counts, seen


def check_redis_restarts(counts: StormCounts, outages: list[dict[str, Any]],
                         totals: StoreTotals, containers: int) -> None:
    """Every alert that got a 202 is in an incident, exactly one incident per container."""
    assert counts.unexpected == [], counts.unexpected[:5]
    assert counts.errors == {}, "requests that got no answer cannot be accounted for"
    assert counts.refusals_without_reason == 0
    assert all(o["readyz"] == 503 and str(o["readyz_redis"]).startswith("unavailable")
               for o in outages), outages
    assert counts.refused > 0, "no request was refused while Redis was down"
    assert totals.alerts == counts.accepted
    assert totals.incidents == containers
    assert totals.keys == containers
    assert totals.per_container == {container_id(c + 1): n
                                    for c, n in counts.per_container.items()}


def check_postgres_outages(counts: StormCounts, outages: list[dict[str, Any]],
                           totals: StoreTotals, containers: int) -> None:
    """503 with a reason (never 500) while down, /readyz failing, recovery without a restart,
    and nothing accepted lost."""
    assert counts.unexpected == [], counts.unexpected[:5]
    assert counts.errors == {}, "requests that got no answer cannot be accounted for"
    assert counts.refusals_without_reason == 0
    for seen in outages:
        assert (seen["post_status"], seen["post_error"], seen["retry_after"]) == (
            503, "unavailable", "5"), seen
        assert seen["readyz"] == 503, seen
        assert str(seen["readyz_database"]).startswith("unavailable"), seen
        assert seen["healthz"] == 200, seen
    # Nothing accepted is lost. A request refused because the server died while it committed
    # may still have been committed (the answer, not the data, was lost): at most those extra.
    assert counts.accepted <= totals.alerts <= counts.accepted + counts.refused
    assert totals.incidents == containers
    assert totals.keys == containers
    for number, accepted in counts.per_container.items():
        assert totals.per_container[container_id(number + 1)] >= accepted
