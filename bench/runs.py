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
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from responder.models.times import parse_rfc3339_ns  # noqa: E402

DEFAULT_RESULTS = ROOT / "bench" / "RESULTS.md"
PG_ADMIN_URL = os.environ.get("DRIFT_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DRIFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
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


@dataclasses.dataclass
class Row:
    figure: str
    measured: str
    target: str = "-"
    met: bool | None = None

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else "yes" if self.met else "**NO**"


@dataclasses.dataclass
class Report:
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        say(f"  {row.figure}: {row.measured}  (target {row.target}; met: {row.verdict})")

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"  - {text}")


def say(text: str) -> None:
    print(text, flush=True)


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

def _all_cpu() -> dict[int, tuple[str, float]]:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        head, _, rest = raw.rpartition(")")
        fields = rest.split()
        out[int(entry)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
    return out


def _machine() -> tuple[float, float]:
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class CpuMeter:
    """CPU (% of one core) per role between start() and stop(): our services by pid, PostgreSQL,
    Redis, this process, kernel threads, and everything else ("other": foreign work)."""

    def __init__(self, roles: dict[int, str]) -> None:
        self.roles = roles
        self.others: list[tuple[str, float]] = []

    def start(self) -> None:
        self._t = time.perf_counter()
        self._all = _all_cpu()
        self._busy = _machine()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t
        now = _all_cpu()
        busy, total = _machine()
        cores = os.cpu_count() or 1
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
        used["machine"] = 100 * cores * (busy - self._busy[0]) / max(1.0, total - self._busy[1])
        self.others = sorted(others.items(), key=lambda kv: -kv[1])[:4]
        return used


#: Foreign CPU (% of one core) above which a phase is flagged as measured on a shared machine.
FOREIGN_LIMIT_PCT = 25.0


def wait_for_quiet(max_wait_s: float = 120.0, window_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until the machine is nearly idle; returns the last busy %."""
    deadline = time.monotonic() + max_wait_s
    cores = os.cpu_count() or 1
    while True:
        busy0, total0 = _machine()
        time.sleep(window_s)
        busy1, total1 = _machine()
        busy = 100 * cores * (busy1 - busy0) / max(1.0, total1 - total0)
        if busy <= FOREIGN_LIMIT_PCT or time.monotonic() > deadline:
            return busy
        say(f"  (machine busy with other work: {busy:.0f}% of a core; waiting)")


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

def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "drift-responder"
    if script.exists():
        return [str(script)]
    found = shutil.which("drift-responder")
    if found:
        return [found]
    return [sys.executable, "-m", "responder"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_alert(container: int) -> dict[str, Any]:
    from tests.support.samples import drift_alert

    alert = drift_alert(container)
    alert["uuid"] = str(uuid.uuid4())
    return alert


@dataclasses.dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM to the process group this benchmark started, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        else:  # the leader exited; make sure nothing of its group survives
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class Stack:
    """Throw-away database, Redis prefix and queue, playbook dir, and the four processes."""

    def __init__(self, workdir: Path, *, beat: bool = True,
                 extra_env: dict[str, str] | None = None) -> None:
        suffix = secrets.token_hex(4)
        self.workdir = workdir
        self.dbname = f"drift_bench_runs_{suffix}"
        self.prefix = f"drift-bench-runs-{suffix}:"
        self.queue = f"drift-bench-runs-{suffix}"
        self.token = secrets.token_hex(16)
        self.db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.dbname}"
        self.playbooks = workdir / "playbooks"
        self.services: list[Service] = []
        self.url = ""
        self.redis: Any = redis.Redis.from_url(REDIS_URL)  # sync client (stubs union awaitables)
        self._db: psycopg.Connection[Any] | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
        self.env.update({
            "DRIFT_DATABASE_URL": self.db_url, "DRIFT_REDIS_URL": REDIS_URL,
            "DRIFT_REDIS_PREFIX": self.prefix, "DRIFT_QUEUE": self.queue,
            "DRIFT_PLAYBOOKS_DIR": str(self.playbooks), "DRIFT_INGEST_TOKEN": self.token,
            "DRIFT_DATA_DIR": str(workdir / "data"),
        })
        self.env.update(extra_env or {})
        self.with_beat = beat
        self.beat: Service | None = None

    # -- set-up ---------------------------------------------------------------------------
    def create(self) -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')
        self.playbooks.mkdir()
        (self.playbooks / "bench-three-notes.yaml").write_text(textwrap.dedent(PLAYBOOK))
        for args in (["db", "upgrade"], ["playbooks", "lint"]):
            done = subprocess.run([*cli_command(), "--log-level", "warning", *args],
                                  env=self.env, cwd=self.workdir, capture_output=True,
                                  text=True, timeout=120, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"drift-responder {' '.join(args)} failed:\n"
                                   f"{done.stdout}\n{done.stderr}")

    def start(self, name: str, *args: str) -> Service:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([*cli_command(), *args], env=self.env, cwd=self.workdir,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        service = Service(name, proc, log_path)
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
            blocked = {int(c["addr"].rsplit(":", 1)[1]) for c in self.redis.client_list()
                       if c.get("cmd") in ("brpop", "blpop") and "b" in c.get("flags", "")}
            if all(tcp_ports(w.pid) & blocked for w in self.workers):
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
        return sum(int(self.redis.llen(k)) for k in self.queue_keys())

    def queue_keys(self) -> list[str]:
        sep = "\x06\x16"
        return [self.queue, *(f"{self.queue}{sep}{p}" for p in (3, 6, 9))]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli_command(), "--log-level", "warning", *args], env=self.env,
                              cwd=self.workdir, capture_output=True, text=True, timeout=600,
                              check=False)

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
        keys = list(r.scan_iter(match=f"{self.prefix}*", count=1000))
        keys += list(r.scan_iter(match=f"*{self.queue}*", count=1000))
        keys += [k.encode() for k in (*self.queue_keys(), f"_kombu.binding.{self.queue}",
                                      f"_kombu.binding_permanent.{self.queue}")]
        deleted = 0
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):
            deleted += int(r.delete(*unique[i:i + 500]))
        r.zrem("_kombu.binding_deadlines", self.queue)
        # Messages of our queue still in kombu's shared unacked hash (a worker stopped mid-task).
        stale = []
        for tag, raw in r.hscan_iter("unacked", count=1000):
            with contextlib.suppress(ValueError, TypeError, IndexError):
                _, exchange, routing_key = json.loads(raw)
                if self.queue in (exchange, routing_key):
                    stale.append(tag)
        if stale:
            r.hdel("unacked", *stale)
            r.zrem("unacked_index", *stale)
        left = list(r.scan_iter(match=f"*{self.queue}*", count=1000))
        left += list(r.scan_iter(match=f"{self.prefix}*", count=1000))
        say(f"cleaned up: database {self.dbname} dropped, {deleted} Redis keys deleted "
            f"(prefix {self.prefix}, queue {self.queue}), {len(stale)} unacked messages removed")
        return [f"Redis keys left behind: {left[:5]}"] if left else []


def tcp_ports(pid: int) -> set[int]:
    """Local TCP ports of a process's sockets (from /proc)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@contextlib.contextmanager
def running_stack(keep_logs: Path | None, *, beat: bool = True,
                  extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="drift-bench-runs-") as tmp:
        stack = Stack(Path(tmp), beat=beat, extra_env=extra_env)
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
    errors = task_errors("".join(w.log() for w in stack.workers))
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


TASK_ERROR = re.compile(r"Task (drift\.\w+)\[[^\]]*\] raised unexpected: (\w+)\((.*)\)\s*$",
                        re.MULTILINE)


def task_errors(log: str) -> dict[str, int]:
    """'task: exception: message' -> count, from the Celery workers' logs."""
    counts: dict[str, int] = {}
    for task, exc, message in TASK_ERROR.findall(log):
        key = f"{task}: {exc}: {message.strip(chr(34) + chr(39))[:160]}"
        counts[key] = counts.get(key, 0) + 1
    stale = log.count('"event": "run.stale_event"')
    if stale:
        counts["run.stale_event log lines"] = stale
    return counts


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
    model = ""
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as fh:
        model = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    versions = []
    import importlib.metadata

    for dist in ("celery", "kombu", "redis", "psycopg", "SQLAlchemy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    return (f"{os.cpu_count()} cores ({model or platform.machine()}), Python "
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
    lines += ["| figure | measured | target | met? |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.figure} | {r.measured} | {r.target} | {r.verdict} |" for r in report.rows]
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


def write_section(path: Path, text: str) -> None:
    if not path.exists():
        path.write_text(text)
        return
    current = path.read_text()
    start, end = current.find(START_MARK), current.find(END_MARK)
    if start != -1 and end > start:
        updated = current[:start] + text.rstrip("\n") + current[end + len(END_MARK):]
        if not updated.endswith("\n"):
            updated += "\n"
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated)


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
    say("| figure | measured | target | met? |")
    say("| --- | --- | --- | --- |")
    for r in report.rows:
        say(f"| {r.figure} | {r.measured} | {r.target} | {r.verdict} |")
    if results is not None and not failed:
        write_section(results, section(cfg, report, started))
        say(f"\nupdated the runs section of {results}")
    elif results is None:
        say("\n(not written to a file: pass --results PATH, or run the full benchmark with "
            "default options)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
