"""Playbook-run benchmarks: a real stack (ingest, two Celery workers, beat) on PostgreSQL + Redis.

    .venv/bin/python bench/runs.py            # full size (~5 minutes), writes bench/RESULTS.md
    .venv/bin/python bench/runs.py --quick    # smoke test, under a minute, prints only

The stack: one ``drift-responder ingest``, two ``drift-responder worker --pool solo`` and one
``drift-responder beat``, all on the production backends (PostgreSQL store, Redis for correlation
and as the Celery broker), with a playbook directory holding one playbook of three ``core.note``
steps (no approval) that matches "Drop and execute new binary in container". Every run gets a
throw-away PostgreSQL database, a unique DRIFT_REDIS_PREFIX and a unique DRIFT_QUEUE, all removed
afterwards (with the queue's kombu bindings and any of its messages left in ``unacked``).

Figures:

- ``latency``: on an otherwise idle stack, one alert at a time for a new container (the next one
  ~50 ms after the previous run finished); for each, the time from the client receiving the 202
  to the first step's ``step.started`` audit record (its ``time`` is written by the worker's
  transaction; same machine, same clock). Also relative to the incident's ``opened_at_ns`` (the
  intake's receive time), and to the first step's ``step.succeeded``. Target: p99 <= 100 ms.
- ``throughput``: N alerts, each for a distinct container (so N incidents and N runs), posted as
  NDJSON batches from this process as fast as the ingest answers; incidents per second = N / (the
  last run's ``updated_ns`` when all N have status 'succeeded' - the first post).
- a full run then repeats the throughput phase on a second, fresh stack without the beat
  (diagnostic): the difference is what the beat's re-sent starts and re-dispatched leases cost
  while the queue has a backlog (``--no-compare`` skips it).

A full run updates only the "Playbook runs" section of bench/RESULTS.md (between
``<!-- runs:start -->`` and ``<!-- runs:end -->``), leaving the rest of the file alone, or creates
the file with just that section. ``--quick`` prints only, unless ``--results PATH`` is given.
Environment: DRIFT_BENCH_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
DRIFT_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    FOREIGN_LIMIT_PCT,
    PG_ADMIN_URL,
    REDIS_URL,
    Report,
    Row,
    Service,
    all_cpu_seconds,
    busy_pct,
    clean_env,
    cli_command,
    consuming,
    cpu_model,
    drop_queue,
    free_port,
    machine_busy,
    package_versions,
    queue_keys,
    run_cli,
    say,
    table,
    task_errors,
    wait_for_quiet,
    write_section,
)
from responder.models.times import parse_rfc3339_ns  # noqa: E402

DEFAULT_RESULTS = ROOT / "bench" / "RESULTS.md"
START_MARK = "<!-- runs:start -->"
END_MARK = "<!-- runs:end -->"
RULE = "Drop and execute new binary in container"
PLAYBOOK_NAME = "bench-three-notes"
STEPS = ("first", "second", "third")
LATENCY_TARGET_MS = 100.0
OTHER_BENCHMARKS = ("bench/intake.py",)
MS = 1e6  # ns per ms

PLAYBOOK = f"""
name: {PLAYBOOK_NAME}
description: Three audit notes, no approval (benchmark of the run machinery).
match:
  rules: ["{RULE}"]
steps:
  - id: {STEPS[0]}
    uses: core.note
    with:
      message: "{{{{ alert.rule }}}} in {{{{ incident.namespace }}}}/{{{{ incident.pod }}}}"
  - id: {STEPS[1]}
    uses: core.note
    with:
      message: "second note for {{{{ incident.pod }}}}"
  - id: {STEPS[2]}
    uses: core.note
    with:
      message: "third note for {{{{ incident.pod }}}}"
"""


# --------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool
    warmup: int           # sequential alerts (runs) before anything is measured
    latency_samples: int  # one alert at a time
    spacing_s: float      # pause between a run finishing and the next alert
    runs: int             # N alerts -> N incidents -> N runs for the throughput figure
    batch: int            # alerts per request in the throughput phase
    timeout_s: float      # how long the throughput phase may wait for its runs
    compare: bool         # also measure throughput on a stack without the beat (diagnostic)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, warmup=6, latency_samples=40, spacing_s=0.05, runs=200,
                       batch=100, timeout_s=45, compare=False)
        return cls(quick=False, warmup=20, latency_samples=200, spacing_s=0.05, runs=3000,
                   batch=100, timeout_s=600, compare=True)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, int(-(-p * len(ordered) // 100)))  # ceil(p/100 * n)
    return ordered[min(len(ordered), rank) - 1]


def ms(ns: float) -> str:
    return f"{ns / MS:.1f} ms"


# ---------------------------------------------------------------------------- other benchmarks

def wait_for_other_benchmarks(poll_s: float = 30.0, max_wait_s: float = 1200.0) -> None:
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = []
        for pattern in OTHER_BENCHMARKS:
            found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                                   check=False).stdout.split()
            busy += [f"{pattern} (pid {p})" for p in found if int(p) != os.getpid()]
        if not busy:
            return
        if time.monotonic() > deadline:
            say(f"! still running after {max_wait_s / 60:.0f} min: {', '.join(busy)}; "
                "measuring anyway (figures may be depressed)")
            return
        say(f"waiting for another benchmark to finish: {', '.join(busy)}")
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------- CPU use

class CpuMeter:
    """CPU (% of one core) per role between start() and stop(): our services by pid, PostgreSQL,
    Redis, this process, kernel threads, and everything else ("other": foreign work)."""

    def __init__(self, roles: dict[int, str]) -> None:
        self.roles = roles
        self.others: list[tuple[str, float]] = []

    def start(self) -> None:
        self._t = time.perf_counter()
        self._all = all_cpu_seconds()
        self._busy = machine_busy()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t
        now = all_cpu_seconds()
        machine = busy_pct(self._busy, machine_busy())
        used: dict[str, float] = {}
        others: dict[str, float] = {}
        for pid, (name, seconds) in now.items():
            before = self._all.get(pid)
            delta = seconds - (before[1] if before and before[0] == name else 0.0)
            if delta <= 0:
                continue
            if pid in self.roles:
                role = self.roles[pid]
            elif pid == os.getpid():
                role = "benchmark client"
            elif name.startswith("postgres"):
                role = "postgres"
            elif name.startswith("redis"):
                role = "redis"
            elif name.startswith(("kworker", "kdamond", "ksoftirqd", "jbd2", "kswapd")):
                role = "kernel threads"  # serve everyone, PostgreSQL's writes included
            else:
                role = "other"
                others[name] = others.get(name, 0.0) + 100 * delta / wall
            used[role] = used.get(role, 0.0) + 100 * delta / wall
        used["machine"] = machine
        self.others = sorted(others.items(), key=lambda kv: -kv[1])[:4]
        return used


def flag_shared(report: Report, phase: str, used: dict[str, float], meter: CpuMeter) -> None:
    other = used.get("other", 0.0)
    if other > FOREIGN_LIMIT_PCT:
        names = ", ".join(f"{n} {v:.0f}%" for n, v in meter.others if v >= 1)
        report.note(f"{phase}: **the machine was shared**: processes foreign to the benchmark "
                    f"used {other:.0f}% of a core ({names}); the figures are depressed")


def describe_cpu(used: dict[str, float], meter: CpuMeter) -> str:
    cores = os.cpu_count() or 1
    parts = [f"{k} {v:.0f}%" for k, v in sorted(used.items(), key=lambda kv: -kv[1])
             if k != "machine" and v >= 0.5]
    other = ", ".join(f"{n} {v:.0f}%" for n, v in meter.others if v >= 1)
    return (f"CPU (% of one core): {', '.join(parts) or 'none'}"
            f"{f' (other: {other})' if other else ''}; whole machine "
            f"{used.get('machine', 0):.0f}% of {cores * 100}%")


# ------------------------------------------------------------------------------------ the stack

def make_alert(container: int) -> dict[str, Any]:
    from tests.support.samples import drift_alert

    alert = drift_alert(container)
    alert["uuid"] = str(uuid.uuid4())
    return alert


class Stack:
    """Throw-away database, Redis prefix and queue, playbook dir, and the four processes."""

    #: In the names of the throw-away database, Redis prefix, queue and directory; with the
    #: playbook, what a subclass (bench/prompt.py's) changes.
    label = "runs"
    playbook_name = PLAYBOOK_NAME
    playbook = PLAYBOOK

    def __init__(self, workdir: Path, *, beat: bool = True,
                 extra_env: dict[str, str] | None = None) -> None:
        suffix = secrets.token_hex(4)
        self.workdir = workdir
        self.dbname = f"drift_bench_{self.label}_{suffix}"
        self.prefix = f"drift-bench-{self.label}-{suffix}:"
        self.queue = f"drift-bench-{self.label}-{suffix}"
        self.token = secrets.token_hex(16)
        self.db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.dbname}"
        self.playbooks = workdir / "playbooks"
        self.services: list[Service] = []
        self.url = ""
        self.redis: Any = redis.Redis.from_url(REDIS_URL)  # sync client (stubs union awaitables)
        self._db: psycopg.Connection[Any] | None = None
        self.env = clean_env({
            "DRIFT_DATABASE_URL": self.db_url, "DRIFT_REDIS_URL": REDIS_URL,
            "DRIFT_REDIS_PREFIX": self.prefix, "DRIFT_QUEUE": self.queue,
            "DRIFT_PLAYBOOKS_DIR": str(self.playbooks), "DRIFT_INGEST_TOKEN": self.token,
            "DRIFT_DATA_DIR": str(workdir / "data"),
            **(extra_env or {}),
        })
        self.with_beat = beat
        self.beat: Service | None = None

    # -- set-up ---------------------------------------------------------------------------
    def create(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.playbooks.mkdir()
        (self.playbooks / f"{self.playbook_name}.yaml").write_text(
            textwrap.dedent(self.playbook))
        for args in (["db", "upgrade"], ["playbooks", "lint"]):
            done = run_cli(args, env=self.env, cwd=self.workdir, timeout_s=120)
            if done.returncode != 0:
                raise RuntimeError(f"drift-responder {' '.join(args)} failed:\n"
                                   f"{done.stdout}\n{done.stderr}")

    def start(self, name: str, *args: str) -> Service:
        service = Service.start(name, [*cli_command(), *args], env=self.env, cwd=self.workdir)
        self.services.append(service)
        return service

    def launch(self) -> None:
        port = free_port()
        self.ingest = self.start("ingest", "--log-level", "warning", "ingest", "--host",
                                 "127.0.0.1", "--port", str(port))
        self.url = f"http://127.0.0.1:{port}"
        self.workers = [self.start(f"worker{i}", "--log-level", "info", "worker", "--pool",
                                   "solo") for i in (1, 2)]
        if self.with_beat:
            self.beat = self.start("beat", "--log-level", "info", "beat")
        self._wait_ingest()
        self._wait_workers()

    def _check_alive(self) -> None:
        for s in self.services:
            if not s.alive():
                raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{s.tail()}")

    def _wait_ingest(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the ingest was not ready in {timeout_s:.0f} s:\n"
                           f"{self.ingest.tail()}")

    def _wait_workers(self, timeout_s: float = 60.0) -> None:
        """Until each worker has a Redis connection blocked in BRPOP (consuming the queue)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if consuming(self.redis, [w.pid for w in self.workers]):
                return
            time.sleep(0.1)
        raise RuntimeError("the workers did not start consuming in time:\n" + "\n".join(
            f"--- {w.name}\n{w.tail()}" for w in self.workers))

    # -- use -------------------------------------------------------------------------------
    @property
    def db(self) -> psycopg.Connection[Any]:
        if self._db is None:
            self._db = psycopg.connect(self.db_url, autocommit=True)
        return self._db

    def roles(self) -> dict[int, str]:
        return {s.pid: s.name for s in self.services}

    def queue_length(self) -> int:
        return sum(int(self.redis.llen(k)) for k in queue_keys(self.queue))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(args, env=self.env, cwd=self.workdir)

    # -- tear-down -------------------------------------------------------------------------
    def destroy(self) -> list[str]:
        problems: list[str] = []
        for service in reversed(self.services):
            try:
                service.stop()
            except Exception as exc:
                problems.append(f"could not stop {service.name} (pid {service.pid}): {exc}")
        if self._db is not None:
            with contextlib.suppress(Exception):
                self._db.close()
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
        except psycopg.Error as exc:
            problems.append(f"could not drop database {self.dbname}: {exc}")
        try:
            problems += self._clean_redis()
        except redis.RedisError as exc:
            problems.append(f"could not clean Redis: {exc}")
        finally:
            self.redis.close()
        return problems

    def _clean_redis(self) -> list[str]:
        r = self.redis
        # The prefix's keys go with the queue (and its messages still in kombu's shared unacked
        # hash: a worker stopped mid-task).
        deleted, stale = drop_queue(r, self.queue,
                                    list(r.scan_iter(match=f"{self.prefix}*", count=1000)))
        left = list(r.scan_iter(match=f"*{self.queue}*", count=1000))
        left += list(r.scan_iter(match=f"{self.prefix}*", count=1000))
        say(f"cleaned up: database {self.dbname} dropped, {deleted} Redis keys deleted "
            f"(prefix {self.prefix}, queue {self.queue}), {stale} unacked messages removed")
        return [f"Redis keys left behind: {left[:5]}"] if left else []


S = TypeVar("S", bound=Stack)


@contextlib.contextmanager
def stack_up(stack: S, keep_logs: Path | None) -> Iterator[S]:
    """``stack`` created and launched; its services' log tails printed if anything fails; their
    logs copied to ``keep_logs`` (if given) and the stack destroyed in any case."""
    try:
        stack.create()
        stack.launch()
        yield stack
    except BaseException:
        for s in stack.services:
            say(f"--- {s.name} (pid {s.pid}) log tail:\n{s.tail()}")
        raise
    finally:
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for s in stack.services:
                with contextlib.suppress(OSError):
                    shutil.copy(s.log_path, keep_logs / s.log_path.name)
        for problem in stack.destroy():
            say(f"! {problem}")


@contextlib.contextmanager
def running_stack(keep_logs: Path | None, *, beat: bool = True,
                  extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="drift-bench-runs-") as tmp, \
            stack_up(Stack(Path(tmp), beat=beat, extra_env=extra_env), keep_logs) as stack:
        yield stack


# ----------------------------------------------------------------------------------- measuring

class Poster:
    def __init__(self, stack: Stack) -> None:
        self.client = httpx.Client(base_url=stack.url, timeout=60,
                                   headers={"Authorization": f"Bearer {stack.token}"})

    def one(self, alert: dict[str, Any]) -> tuple[int, int, str]:
        """(ns before sending, ns when the 202 was received, incident id)."""
        body = json.dumps(alert).encode()
        sent = time.time_ns()
        response = self.client.post("/v1/falco", content=body,
                                    headers={"Content-Type": "application/json"})
        accepted = time.time_ns()
        if response.status_code != 202:
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:500]}")
        return sent, accepted, str(response.json()["incidents"][0])

    def batch(self, alerts: list[dict[str, Any]]) -> list[str]:
        body = b"\n".join(json.dumps(a).encode() for a in alerts)
        response = self.client.post("/v1/falco", content=body,
                                    headers={"Content-Type": "application/x-ndjson"})
        if response.status_code != 202:
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:500]}")
        return [str(i) for i in response.json()["incidents"]]

    def close(self) -> None:
        self.client.close()


def one(stack: Stack, query: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
    row = stack.db.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query[:60]!r}")
    return tuple(row)


def run_status(stack: Stack, incident_id: str) -> str | None:
    row = stack.db.execute("SELECT status FROM runs WHERE incident_id = %s",
                           (incident_id,)).fetchone()
    return None if row is None else str(row[0])


def wait_run_done(stack: Stack, incident_id: str, timeout_s: float = 30.0,
                  interval_s: float = 0.005) -> str:
    deadline = time.monotonic() + timeout_s
    status = None
    while time.monotonic() < deadline:
        status = run_status(stack, incident_id)
        if status in ("succeeded", "failed", "cancelled"):
            return status
        time.sleep(interval_s)
    raise RuntimeError(f"run of incident {incident_id} still {status!r} after {timeout_s:.0f} s")


def warm_up(stack: Stack, poster: Poster, cfg: Config, base: int) -> None:
    """Sequential runs so that every process has its connections, caches and imports warm."""
    for i in range(cfg.warmup):
        _, _, incident = poster.one(make_alert(base + i))
        wait_run_done(stack, incident)


@dataclasses.dataclass
class Sample:
    incident: str
    sent_ns: int
    accepted_ns: int
    opened_ns: int = 0
    created_ns: int = 0
    step_started_ns: int = 0
    step_succeeded_ns: int = 0
    run_done_ns: int = 0


def audit_times(stack: Stack, incidents: list[str]) -> dict[tuple[str, str, str], int]:
    """(incident, kind, step) -> time (ns) of the first such audit record, for attempt 1."""
    rows = stack.db.execute(
        "SELECT incident_id, kind, time, data FROM audit_log WHERE incident_id = ANY(%s) "
        "AND kind IN ('step.started', 'step.succeeded', 'run.started', 'run.finished') "
        "ORDER BY seq", (incidents,)).fetchall()
    out: dict[tuple[str, str, str], int] = {}
    for incident, kind, stamp, data in rows:
        fields = json.loads(data)
        key = (incident, kind, str(fields.get("step", "")))
        out.setdefault(key, parse_rfc3339_ns(stamp))
    return out


def bench_latency(stack: Stack, poster: Poster, cfg: Config, report: Report,
                  base: int) -> None:
    say(f"\nlatency: {cfg.latency_samples} alerts, one at a time on an idle stack")
    meter = CpuMeter(stack.roles())
    samples: list[Sample] = []
    meter.start()
    for i in range(cfg.latency_samples):
        sent, accepted, incident = poster.one(make_alert(base + i))
        samples.append(Sample(incident, sent, accepted))
        time.sleep(cfg.spacing_s)
        wait_run_done(stack, incident)
    cpu = meter.stop()
    flag_shared(report, "latency", cpu, meter)
    ids = [s.incident for s in samples]
    times = audit_times(stack, ids)
    incident_rows = dict(stack.db.execute(
        "SELECT id, opened_at_ns FROM incidents WHERE id = ANY(%s)", (ids,)).fetchall())
    run_rows = {r[0]: r[1:] for r in stack.db.execute(
        "SELECT incident_id, created_ns, updated_ns, status FROM runs WHERE incident_id = ANY(%s)",
        (ids,)).fetchall()}
    for s in samples:
        s.opened_ns = int(incident_rows[s.incident])
        s.created_ns, s.run_done_ns = int(run_rows[s.incident][0]), int(run_rows[s.incident][1])
        s.step_started_ns = times[(s.incident, "step.started", STEPS[0])]
        s.step_succeeded_ns = times[(s.incident, "step.succeeded", STEPS[0])]
    to_start = [s.step_started_ns - s.accepted_ns for s in samples]
    from_open = [s.step_started_ns - s.opened_ns for s in samples]
    round_trip = [s.accepted_ns - s.sent_ns for s in samples]
    open_to_accept = [s.accepted_ns - s.opened_ns for s in samples]
    to_first_done = [s.step_succeeded_ns - s.accepted_ns for s in samples]
    to_run_done = [s.run_done_ns - s.accepted_ns for s in samples]
    p99 = pct(to_start, 99)
    n = len(samples)
    report.add(Row("Latency, 202 received -> first step started (`step.started`), p50 / p99",
                   f"{ms(pct(to_start, 50))} / {ms(p99)} (max {ms(max(to_start))}; n={n})",
                   f"p99 <= {LATENCY_TARGET_MS:.0f} ms", p99 <= LATENCY_TARGET_MS * MS))
    report.add(Row("Latency, incident opened_at -> first step started, p50 / p99",
                   f"{ms(pct(from_open, 50))} / {ms(pct(from_open, 99))}"))
    report.add(Row("Latency, 202 received -> first step succeeded, p50 / p99",
                   f"{ms(pct(to_first_done, 50))} / {ms(pct(to_first_done, 99))}"))
    report.add(Row("Latency, 202 received -> run succeeded (3 steps), p50 / p99",
                   f"{ms(pct(to_run_done, 50))} / {ms(pct(to_run_done, 99))}"))
    report.add(Row("Latency, HTTP request sent -> 202 received (one alert), p50 / p99",
                   f"{ms(pct(round_trip, 50))} / {ms(pct(round_trip, 99))}"))
    early = sum(1 for v in to_start if v < 0)
    slow = sorted(samples, key=lambda s: s.step_started_ns - s.accepted_ns)[-3:]
    report.note(
        f"latency: {n} samples; opened_at -> 202 received p50 {ms(pct(open_to_accept, 50))} / "
        f"p99 {ms(pct(open_to_accept, 99))}; {early} sample(s) had the first step started "
        f"before the client saw the 202 (the start task is sent before the answer); slowest "
        f"202 -> step.started: " + ", ".join(
            f"{ms(s.step_started_ns - s.accepted_ns)} (request {ms(s.accepted_ns - s.sent_ns)})"
            for s in reversed(slow)) + f"; {describe_cpu(cpu, meter)}")
    hist = histogram([v / MS for v in to_start])
    report.note(f"latency: distribution of 202 -> step.started (ms: count): {hist}")


def histogram(values_ms: list[float]) -> str:
    edges = [0, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000, float("inf")]
    counts = [0] * (len(edges) - 1)
    below = 0
    for v in values_ms:
        if v < 0:
            below += 1
            continue
        for j in range(len(edges) - 1):
            if edges[j] <= v < edges[j + 1]:
                counts[j] += 1
                break
    parts = ([f"<0: {below}"] if below else []) + [
        f"{edges[j]:g}-{edges[j + 1]:g}: {c}" if edges[j + 1] != float("inf") else
        f">={edges[j]:g}: {c}" for j, c in enumerate(counts) if c]
    return ", ".join(parts)


class Profiler:
    """py-spy (raw collapsed stacks) on the workers, the ingest and the beat during a phase."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, stack: Stack, phase: str) -> None:
        if self.directory is None:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.directory.mkdir(parents=True, exist_ok=True)
        for service in stack.services:
            out = self.directory / f"{phase}-{service.name}.txt"
            self.procs.append(subprocess.Popen(
                [spy, "record", "-p", str(service.pid), "-r", "200", "-f", "raw", "--idle",
                 "-o", str(out), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs = []


def bench_throughput(stack: Stack, poster: Poster, cfg: Config, report: Report,
                     base: int, profiler: Profiler, label: str = "") -> None:
    n = cfg.runs
    say(f"\n{label}throughput: {n} alerts for {n} distinct containers, NDJSON batches of "
        f"{cfg.batch}")
    tag = "throughput" + (" without the beat" if stack.beat is None else "")
    alerts = [make_alert(base + i) for i in range(n)]
    meter = CpuMeter(stack.roles())
    trajectory: list[tuple[float, int, int]] = []
    incidents: list[str] = []
    max_queue = 0
    profiler.start(stack, "throughput")
    meter.start()
    t0 = time.time_ns()
    for i in range(0, n, cfg.batch):
        incidents += poster.batch(alerts[i:i + cfg.batch])
    posted = time.time_ns()
    ids = list(dict.fromkeys(incidents))
    if len(ids) != n:
        raise RuntimeError(f"{n} alerts for distinct containers gave {len(ids)} incidents")
    deadline = time.monotonic() + cfg.timeout_s
    done = 0
    last_report = time.monotonic()
    while True:
        done = int(one(stack,
            "SELECT count(*) FROM runs WHERE incident_id = ANY(%s) AND status = 'succeeded'",
            (ids,))[0])
        queued = stack.queue_length()
        max_queue = max(max_queue, queued)
        elapsed = (time.time_ns() - t0) / 1e9
        trajectory.append((elapsed, done, queued))
        if time.monotonic() - last_report > 5:
            say(f"  {elapsed:5.1f} s: {done}/{n} runs succeeded, {queued} messages queued")
            last_report = time.monotonic()
        if done >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    cpu = meter.stop()
    profiler.stop()
    flag_shared(report, tag, cpu, meter)
    row = one(
        stack, "SELECT max(updated_ns), count(*) FILTER (WHERE status = 'succeeded'), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY updated_ns - created_ns), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY updated_ns - created_ns) "
        "FROM runs WHERE incident_id = ANY(%s)", (ids,))
    last_ns, succeeded, run_p50, run_p99 = int(row[0]), int(row[1]), row[2], row[3]
    statuses = dict(stack.db.execute(
        "SELECT status, count(*) FROM runs WHERE incident_id = ANY(%s) GROUP BY status",
        (ids,)).fetchall())
    if succeeded < n:
        elapsed = (time.time_ns() - t0) / 1e9
        report.add(Row(f"{label}Throughput, {n:,} alerts -> {n:,} incidents -> {n:,} "
                       "three-step runs",
                       f"only {succeeded:,} of {n:,} runs succeeded within {elapsed:.0f} s "
                       f"(statuses {statuses})", "all succeed", False))
    else:
        wall = (last_ns - t0) / 1e9
        report.add(Row(f"{label}Throughput, {n:,} alerts -> {n:,} incidents -> {n:,} "
                       "three-step runs: incidents per second (first post -> last run "
                       "succeeded)",
                       f"{n / wall:,.1f} incidents/s ({n:,} in {wall:.1f} s)"))
    report.add(Row(f"{label}Throughput phase: run duration (created -> succeeded) p50 / p99",
                   f"{run_p50 / 1e9:.1f} s / {run_p99 / 1e9:.1f} s"))
    steps = dict(stack.db.execute(
        "SELECT kind, count(*) FROM audit_log WHERE incident_id = ANY(%s) AND kind IN "
        "('step.started', 'step.succeeded', 'step.failed', 'run.started', 'run.finished') "
        "GROUP BY kind", (ids,)).fetchall())
    sweeps = beat_sweeps(stack.beat.log()) if stack.beat else "no beat"
    errors = task_errors("".join(w.log() for w in stack.workers), stale_events=True)
    report.note(
        f"{tag}: posting {n:,} alerts in {-(-n // cfg.batch)} requests took "
        f"{(posted - t0) / 1e9:.2f} s ({n / max(1e-9, (posted - t0) / 1e9):,.0f} alerts/s); "
        f"at most {max_queue:,} messages waited in the queue; audit records for these runs: "
        f"{steps}; beat sweeps over the whole benchmark (re-sent starts, re-dispatched "
        f"leases, ...): {sweeps}; worker task errors over the whole benchmark: "
        f"{errors or 'none'}; "
        f"{describe_cpu(cpu, meter)}")
    step = max(1, len(trajectory) // 12)
    picked = trajectory[::step] + ([trajectory[-1]] if trajectory[-1] not in
                                   trajectory[::step] else [])
    report.note(f"{tag}: progress (s: runs succeeded / messages queued): " + ", ".join(
        f"{t:.1f}: {d}/{q}" for t, d, q in picked))


def beat_sweeps(log: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for line in log.splitlines():
        if line.startswith("sweep: {"):
            with contextlib.suppress(ValueError, SyntaxError):
                for k, v in ast.literal_eval(line[len("sweep: "):]).items():
                    totals[k] = totals.get(k, 0) + int(v)
    return {k: v for k, v in totals.items() if v}


def check_audit(stack: Stack, report: Report) -> None:
    verified = stack.cli("audit", "verify")
    verdict = (verified.stdout + verified.stderr).strip().splitlines()
    report.add(Row("`drift-responder audit verify` after the benchmark",
                   verdict[-1] if verdict else f"exit {verified.returncode}", "passes",
                   verified.returncode == 0))


# ------------------------------------------------------------------------------------- results

def machine_facts() -> str:
    versions = package_versions(("celery", "kombu", "redis", "psycopg", "SQLAlchemy"))
    return (f"{os.cpu_count()} cores ({cpu_model() or platform.machine()}), Python "
            f"{platform.python_version()}, {', '.join(versions)}")


def section(cfg: Config, report: Report, started: dt.datetime) -> str:
    lines = [
        START_MARK,
        "## Playbook runs",
        "",
        f"Generated by `.venv/bin/python bench/runs.py{' --quick' if cfg.quick else ''}` on "
        f"{started:%Y-%m-%d %H:%M} UTC ({machine_facts()}).",
        "A real stack on the production backends: one `drift-responder ingest`, two "
        "`drift-responder worker --pool solo`, one `drift-responder beat` (0.5 s sweeps), "
        "PostgreSQL (store) and Redis (correlation and Celery broker), all on the same cores as "
        "the load generator; a playbook of three `core.note` steps (no approval) matching "
        f"\"{RULE}\"; a fresh database, Redis key prefix and Celery queue.",
        "",
    ]
    if cfg.quick:
        lines += ["**Quick smoke-test run: the figures are not representative.**", ""]
    lines += table(report.rows)
    lines += ["", "### Details", ""]
    lines += [f"- {n}" for n in report.notes]
    lines += [
        "",
        "### Method",
        "",
        f"- Warm-up: {cfg.warmup} alerts, one at a time, each waited for until its run "
        "succeeded.",
        f"- Latency: {cfg.latency_samples} alerts, each for a new container, posted one at a "
        f"time (single JSON alert, keep-alive connection); after each 202 the client sleeps "
        f"{cfg.spacing_s * 1000:.0f} ms and waits until the run has succeeded, so every alert "
        "meets an idle stack. \"202 received\" is the client's clock right after the answer; "
        "\"first step started\" is the `time` of the first step's `step.started` audit record "
        "(written in the worker's transaction that starts the run); \"opened_at\" is the "
        "incident's `opened_at_ns` (the intake's receive time). Same machine, same clock.",
        f"- Throughput: {cfg.runs:,} alerts for {cfg.runs:,} distinct containers posted as "
        f"NDJSON batches of {cfg.batch} from one keep-alive connection, back to back; the "
        "`runs` table is polled every 0.1 s until all runs have status 'succeeded'; the "
        "figure is N / (the last run's `updated_ns` - the client's clock before the first "
        "post).",
        "- \"Without the beat (diagnostic)\": the same throughput phase on a second, fresh "
        "stack that has no `drift-responder beat`, to show what the beat's sweeps (starts "
        "re-sent for runs pending > 2 s, leases re-dispatched when unclaimed after "
        "DRIFT_LEASE_GRACE_SECONDS) cost under a backlog. Not a supported configuration: "
        "without the beat, lost messages are never re-sent.",
        "- CPU figures are per process from /proc between the start and the end of a phase.",
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small runs, under a minute")
    parser.add_argument("--runs", type=int, default=None,
                        help="alerts/runs in the throughput phase (default 3,000; 200 quick)")
    parser.add_argument("--samples", type=int, default=None,
                        help="latency samples (default 200; 40 with --quick)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"update the runs section of this file (default {DEFAULT_RESULTS} "
                             "for a full run, nowhere for --quick)")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other benchmarks (bench/intake.py) to finish")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the second throughput phase on a stack without the beat")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy the services' logs here before cleaning up")
    diagnosis = parser.add_argument_group(
        "diagnosis (runs with these options never write bench/RESULTS.md by default)")
    diagnosis.add_argument("--py-spy", dest="py_spy", type=Path, default=None, metavar="DIR",
                           help="sample every service with py-spy during the throughput phase "
                                "(raw collapsed stacks into DIR)")
    diagnosis.add_argument("--without-beat", action="store_true",
                           help="do not start the beat (no re-sent starts or leases)")
    diagnosis.add_argument("--set", dest="settings", action="append", default=[],
                           metavar="DRIFT_X=VALUE", help="extra setting for every service")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.settings)
    diagnostic = bool(args.py_spy or args.without_beat or extra_env)
    cfg = Config.make(args.quick)
    if args.runs is not None:
        cfg = dataclasses.replace(cfg, runs=args.runs)
    if args.samples is not None:
        cfg = dataclasses.replace(cfg, latency_samples=args.samples)
    if args.no_compare:
        cfg = dataclasses.replace(cfg, compare=False)
    results = args.results
    if results is None and not args.quick and not diagnostic and args.runs is None \
            and args.samples is None:
        results = DEFAULT_RESULTS

    if not args.no_wait:
        wait_for_other_benchmarks()
    started = dt.datetime.now(dt.UTC)
    report = Report()
    failed = False
    t_start = time.monotonic()
    try:
        with running_stack(args.keep_logs, beat=not args.without_beat,
                           extra_env=extra_env) as stack:
            say(f"stack up in {time.monotonic() - t_start:.1f} s: ingest {stack.url} (pid "
                f"{stack.ingest.pid}), workers {[w.pid for w in stack.workers]}, beat "
                f"{stack.beat.pid if stack.beat else 'none'}; database {stack.dbname}, "
                f"queue {stack.queue}" + (f"; extra settings {extra_env}" if extra_env else ""))
            poster = Poster(stack)
            try:
                warm_up(stack, poster, cfg, base=0x100000)
                wait_for_quiet(20 if cfg.quick else 120)
                bench_latency(stack, poster, cfg, report, base=0x200000)
                wait_for_quiet(20 if cfg.quick else 120)
                bench_throughput(stack, poster, cfg, report, base=0x300000,
                                 profiler=Profiler(args.py_spy))
                check_audit(stack, report)
            finally:
                poster.close()
        if cfg.compare and not args.without_beat:
            if not args.no_wait:
                wait_for_other_benchmarks()
            t_compare = time.monotonic()
            with running_stack(None, beat=False, extra_env=extra_env) as stack:
                say(f"\nsecond stack, without the beat, up in "
                    f"{time.monotonic() - t_compare:.1f} s")
                poster = Poster(stack)
                try:
                    warm_up(stack, poster, cfg, base=0x100000)
                    wait_for_quiet(120)
                    bench_throughput(stack, poster, cfg, report, base=0x300000,
                                     profiler=Profiler(None),
                                     label="Without the beat (diagnostic): ")
                finally:
                    poster.close()
    except Exception as exc:
        failed = True
        report.add(Row("benchmark", f"failed: {type(exc).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0]}", "runs", False))
        say(str(exc))
    say(f"\n(took {time.monotonic() - t_start:.0f} s)\n")
    say("\n".join(table(report.rows)))
    if results is not None and not failed:
        write_section(results, section(cfg, report, started), START_MARK, END_MARK)
        say(f"\nupdated the runs section of {results}")
    elif results is None:
        say("\n(not written to a file: pass --results PATH, or run the full benchmark with "
            "default options)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
