"""Intake benchmarks: a real ``drift-responder ingest`` process, load from separate processes.

    .venv/bin/python bench/intake.py            # everything, full size (~5 minutes)
    .venv/bin/python bench/intake.py --quick    # smoke test, ~2 minutes (the storm's prompts)
    .venv/bin/python bench/intake.py --only storm

Benchmarks (targets from the issue, for one ingest process on a 2-core machine):

- ``http-single``: one alert per request, production backends (PostgreSQL + Redis), load from
  ``wrk`` (2 threads, 64 connections, 20 s) cycling over 100 containers. Target >= 5,000 alerts/s
  with p99 < 50 ms.
- ``http-single-embedded``: the same on the embedded default (SQLite, no Redis). No target.
- ``http-batch``: NDJSON bodies of 500 alerts from ``wrk``. Target >= 50,000 alerts/s.
- ``storm``: 1,000,000 alerts over 100 containers in NDJSON batches of 5,000 from a separate
  process (bench/post_batches.py); then ``incidents list --json`` must show exactly 100 incidents
  summing to 1,000,000 alerts, ``audit verify`` must pass, and the ingest's RSS must stay flat
  (growth < 50 MB). The stack also runs two ``drift-responder worker --pool solo`` and one
  ``drift-responder beat`` (niced, so that the ingest comes first), with a playbook whose
  ``slack.prompt`` step asks in Slack for the drift rule, and Slack is tests/fakes/slack_api.py's
  FakeSlack in this process (reached by the workers' real slack_sdk client through
  DRIFT_SLACK_API_URL). After the storm the script waits until nothing is left to do (at most
  60 s + 2 s per incident: the default channel limit posts one new message a second after a
  burst of 10, all in one channel) and counts the prompts the fake received: exactly 100
  top-level ``chat.postMessage``, one per incident (digests, thread replies and ``chat.update``
  are counted apart).

Each benchmark gets a fresh throw-away PostgreSQL database and Redis key prefix (or a temporary
SQLite data dir) and removes them afterwards. A full run of every benchmark writes its section
of bench/RESULTS.md (between ``<!-- intake:start -->`` and ``<!-- intake:end -->``, leaving other
sections alone); ``--quick`` and ``--only`` runs print only, unless ``--results PATH`` is given.
Environment: DRIFT_BENCH_PG_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
DRIFT_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    FOREIGN_LIMIT_PCT,
    PG_ADMIN_URL,
    REDIS_URL,
    ULID,
    Row,
    Service,
    all_cpu_seconds,
    busy_pct,
    channel_counters,
    channel_state,
    clean_env,
    cli_command,
    consuming,
    cpu_model,
    drop_queue,
    free_port,
    log_tail,
    machine_busy,
    package_versions,
    queue_keys,
    run_cli,
    rusage_seconds,
    say,
    table,
    task_errors,
    unacked_tags,
    wait_for_quiet,
)
from bench.common import Report as BaseReport  # noqa: E402

BENCH = ROOT / "bench"
WRK_LUA = BENCH / "wrk_post.lua"
POST_BATCHES = BENCH / "post_batches.py"
DEFAULT_RESULTS = BENCH / "RESULTS.md"
CONTAINERS = 100
SEP = b"\x1e"  # separates bodies in the files wrk_post.lua reads
PLACEHOLDER = "@@SEQ@@"
BENCHMARKS = ("http-single", "http-single-embedded", "http-batch", "storm")
MB = 1024 * 1024


# --------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool
    warmup_s: int
    duration_s: int
    single_threads: int
    single_connections: int
    batch_size: int
    batch_connections: int
    storm_total: int
    storm_batch: int
    storm_concurrency: int

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, warmup_s=1, duration_s=3, single_threads=2,
                       single_connections=64, batch_size=500, batch_connections=8,
                       storm_total=20_000, storm_batch=5000, storm_concurrency=2)
        return cls(quick=False, warmup_s=3, duration_s=20, single_threads=2,
                   single_connections=64, batch_size=500, batch_connections=8,
                   storm_total=1_000_000, storm_batch=5000, storm_concurrency=2)


@dataclasses.dataclass
class Report(BaseReport):
    """bench/common.py's Report, which also keeps the worst foreign load of its measurements
    (a benchmark is run again when it was measured on a shared machine)."""

    foreign_pct: float = 0.0  # the worst foreign load seen by a measurement in this report

    def measured(self, meter: CpuMeter) -> None:
        self.foreign_pct = max(self.foreign_pct, meter.foreign_pct)

    @property
    def contended(self) -> bool:
        return self.foreign_pct > FOREIGN_LIMIT_PCT

    def merge(self, other: Report) -> None:
        self.rows += other.rows
        self.notes += other.notes
        self.foreign_pct = max(self.foreign_pct, other.foreign_pct)


# ------------------------------------------------------------------------------------- helpers

def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in bytes."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by the ingest, by the other busy processes and by the whole machine between
    start() and stop() (to tell a CPU-bound ingest from a contended machine). ``roles`` names
    other processes of the benchmark by pid (the storm's Celery workers, its beat, this process
    serving the Slack fake): their shares are reported by role and are not foreign load."""

    def __init__(self, pid: int, roles: dict[int, str] | None = None) -> None:
        self.pid = pid
        self.roles = dict(roles or {})
        self.ingest_pct = 0.0
        self.machine_pct = 0.0
        self.loadgen_pct = 0.0
        self.foreign_pct = 0.0
        self.role_pct: dict[str, float] = {}
        self.others: list[tuple[str, float]] = []

    def start(self) -> None:
        self._t = time.perf_counter()
        self._cpu = cpu_seconds(self.pid)
        self._busy = machine_busy()
        self._all = all_cpu_seconds()
        self._children = rusage_seconds(resource.RUSAGE_CHILDREN)

    def stop(self) -> None:
        wall = time.perf_counter() - self._t
        self.ingest_pct = 100 * (cpu_seconds(self.pid) - self._cpu) / wall
        self.machine_pct = busy_pct(self._busy, machine_busy())
        groups: dict[str, float] = {}
        roles: dict[str, float] = {}
        for pid, (name, seconds) in all_cpu_seconds().items():
            if pid == self.pid:
                continue
            before = self._all.get(pid)
            used = seconds - before[1] if before else seconds
            if pid in self.roles:
                role = self.roles[pid]
                roles[role] = roles.get(role, 0.0) + used
                continue
            group = name.split("/", 1)[0] if name.startswith("kworker") else name
            groups[group] = groups.get(group, 0.0) + used
        self.role_pct = {r: 100 * s / wall for r, s in roles.items()}
        self.others = sorted(((n, 100 * s / wall) for n, s in groups.items() if s > 0),
                             key=lambda x: -x[1])[:5]
        # The load generator (wrk, post_batches.py) has exited and been reaped by now.
        self.loadgen_pct = 100 * (rusage_seconds(resource.RUSAGE_CHILDREN)
                                  - self._children) / wall
        ours = sum(100 * s / wall for n, s in groups.items() if n in OUR_SERVICES)
        self.foreign_pct = max(0.0, self.machine_pct - self.ingest_pct - self.loadgen_pct - ours
                               - sum(self.role_pct.values()))

    @property
    def contended(self) -> bool:
        return self.foreign_pct > FOREIGN_LIMIT_PCT

    def describe(self) -> str:
        cores = os.cpu_count() or 1
        others = ", ".join(f"{n} {p:.0f}%" for n, p in self.others if p >= 1) or "none"
        roles = "".join(f", {r} {p:.0f}%" for r, p in self.role_pct.items())
        return (f"ingest process CPU {self.ingest_pct:.0f}% of one core, load generator "
                f"{self.loadgen_pct:.0f}%{roles}; whole machine {self.machine_pct:.0f}% of "
                f"{cores * 100}%, of which {self.foreign_pct:.0f}% was work foreign to the "
                f"benchmark (processes still running at the end: {others})")


#: Processes that serve the benchmark (not foreign load).
OUR_SERVICES = frozenset({"postgres", "redis-server", "py-spy"})


# -------------------------------------------------------------------------------------- alerts

def sample_alert(container: int, uuid: str) -> dict[str, Any]:
    try:
        from tests.support.samples import drift_alert
    except RuntimeError as exc:  # pragma: no cover - only without shared/samples
        raise SystemExit(f"cannot load the Falco samples: {exc}") from None
    alert = drift_alert(container)
    alert["uuid"] = uuid
    return alert


def alert_template_lines() -> list[bytes]:
    """One compact JSON alert per container, with PLACEHOLDER in its uuid (12 hex digits)."""
    return [json.dumps(sample_alert(c, f"00000000-0000-4000-8{c:03x}-{PLACEHOLDER}"),
                       separators=(",", ":")).encode() for c in range(CONTAINERS)]


def write_single_bodies(path: Path) -> None:
    path.write_bytes(SEP.join(alert_template_lines()))


def write_batch_bodies(path: Path, batch_size: int, bodies: int = 20) -> int:
    """``bodies`` distinct NDJSON bodies of ``batch_size`` alerts over the 100 containers."""
    lines = alert_template_lines()
    out: list[bytes] = []
    n = 0
    for b in range(bodies):
        alerts = []
        for j in range(batch_size):
            alerts.append(lines[n % CONTAINERS].replace(PLACEHOLDER.encode(),
                                                        b"%04x%08x" % (b, j)))
            n += 1
        out.append(b"\n".join(alerts))
    path.write_bytes(SEP.join(out))
    return max(len(o) for o in out)


# ------------------------------------------------------------------------------------ backends

@contextlib.contextmanager
def production_backends(label: str, *, queue: bool = False) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and Redis key prefix; both removed afterwards. With
    ``queue``, also a Celery queue of its own (DRIFT_QUEUE): its messages, kombu bindings and
    entries in kombu's shared ``unacked`` hash are removed afterwards too."""
    import psycopg
    import redis

    suffix = secrets.token_hex(4)
    dbname = f"drift_bench_{label.replace('-', '_')}_{suffix}"
    prefix = f"drift-bench-{label}-{suffix}:"
    queue_name = f"drift-bench-{label}-{suffix}-runs"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"
    try:
        env = {"DRIFT_DATABASE_URL": db_url, "DRIFT_REDIS_URL": REDIS_URL,
               "DRIFT_REDIS_PREFIX": prefix}
        if queue:
            env["DRIFT_QUEUE"] = queue_name
        yield env
    finally:
        if queue:
            clean_queue(queue_name)
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        except psycopg.Error as exc:
            say(f"  ! could not drop database {dbname}: {exc}")
        client: Any = redis.Redis.from_url(REDIS_URL)
        try:
            deleted = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    deleted += client.delete(*batch)
                    batch = []
            if batch:
                deleted += client.delete(*batch)
        except redis.RedisError as exc:
            say(f"  ! could not delete Redis keys {prefix}*: {exc}")
        finally:
            client.close()


def clean_queue(queue: str) -> None:
    import redis

    client: Any = redis.Redis.from_url(REDIS_URL)  # sync client (the stubs union awaitables)
    try:
        drop_queue(client, queue)
    except redis.RedisError as exc:
        say(f"  ! could not clean the Celery queue {queue} in Redis: {exc}")
    finally:
        client.close()


@contextlib.contextmanager
def embedded_backends(workdir: Path) -> Iterator[dict[str, str]]:
    data = workdir / "embedded-data"
    data.mkdir()
    try:
        yield {"DRIFT_DATA_DIR": str(data)}
    finally:
        shutil.rmtree(data, ignore_errors=True)


@dataclasses.dataclass
class Ingest:
    proc: subprocess.Popen[bytes]
    base_url: str
    token: str
    env: dict[str, str]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def falco_url(self) -> str:
        return self.base_url + "/v1/falco"

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)


@contextlib.contextmanager
def run_ingest(workdir: Path, backend_env: dict[str, str],
               extra: dict[str, str] | None = None) -> Iterator[Ingest]:
    token = secrets.token_hex(16)
    port = free_port()
    env = clean_env({"DRIFT_INGEST_TOKEN": token, "DRIFT_DATA_DIR": str(workdir / "data"),
                     **backend_env, **(extra or {})})
    log_path = workdir / f"ingest-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*cli_command(), "--log-level", "warning", "ingest", "--host", "127.0.0.1",
             "--port", str(port)],
            env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    ingest = Ingest(proc, f"http://127.0.0.1:{port}", token, env, log_path)
    try:
        wait_healthy(ingest)
        yield ingest
    finally:
        stop_process(proc)


def wait_healthy(ingest: Ingest, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ingest.proc.poll() is not None:
            raise RuntimeError(f"the ingest exited with {ingest.proc.returncode}:\n"
                               f"{ingest.log_tail()}")
        try:
            with urllib.request.urlopen(ingest.base_url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the ingest did not answer /healthz in {timeout_s:.0f} s:\n"
                       f"{ingest.log_tail()}")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def drift_cli(ingest: Ingest, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(args, env=ingest.env, cwd=ingest.log_path.parent)


# ------------------------------------------------------------------------------------------ wrk

def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed; install it (e.g. `sudo apt-get install -y wrk`) "
                         "and run again")
    say("wrk is not installed: apt-get install -y wrk")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get did not provide wrk")
    return found


@dataclasses.dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    stdout: str

    @property
    def failed(self) -> int:
        """Requests that did not get a 2xx (status errors) or got no answer (timeouts)."""
        return self.errors["status"] + self.errors["timeout"]

    @property
    def ok_requests(self) -> int:
        return max(0, self.requests - self.errors["status"])

    def per_second(self, alerts_per_request: int) -> float:
        return self.ok_requests * alerts_per_request / self.duration_s

    def describe_errors(self) -> str:
        bad = {k: v for k, v in self.errors.items() if v}
        return "no errors" if not bad else ", ".join(f"{k} errors: {v}" for k, v in bad.items())


def run_wrk(url: str, bodies: Path, token: str, content_type: str, *, threads: int,
            connections: int, duration_s: int, run_no: int, timeout_s: int = 10,
            during: Callable[[], None] | None = None) -> WrkResult:
    cmd = [ensure_wrk(), f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency",
           "--timeout", f"{timeout_s}s", "-s", str(WRK_LUA), url, "--", str(bodies), token,
           content_type, str(run_no)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if during is not None:
        during()
    out, errout = proc.communicate(timeout=duration_s + timeout_s + 120)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}\n{errout}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkResult(
        requests=data["requests"], duration_s=data["duration_us"] / 1e6,
        errors={"connect": data["connect_errors"], "read": data["read_errors"],
                "write": data["write_errors"], "status": data["status_errors"],
                "timeout": data["timeouts"]},
        p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000, p999_ms=data["p999_us"] / 1000,
        max_ms=data["max_us"] / 1000, stdout=out)


class Profiler:
    """Optionally samples the ingest with py-spy while a measured run goes on."""

    def __init__(self, directory: Path | None, *, gil: bool = False) -> None:
        self.directory = directory
        # --gil: only the thread holding the GIL, i.e. where the one core the ingest can use
        # goes (threads waiting for the GIL otherwise look busy).
        self.mode = ["--gil", "--nonblocking"] if gil else ["--threads", "--idle", "--nonblocking"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, pid: int, name: str, duration_s: int) -> None:
        if self.directory is None:
            return
        exe = Path(sys.executable).parent / "py-spy"
        if not exe.exists():
            say("  ! --py-spy given but py-spy is not installed in the venv "
                "(.venv/bin/pip install py-spy)")
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(exe), "record", "--pid", str(pid), "--duration", str(duration_s),
             "--rate", "250", "--format", "raw", *self.mode,
             "--output", str(self.directory / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


# ---------------------------------------------------------------------------------- benchmarks

def bench_http_single(cfg: Config, report: Report, workdir: Path, profiler: Profiler, *,
                      embedded: bool) -> None:
    name = "http-single-embedded" if embedded else "http-single"
    label = "embedded (SQLite, no Redis)" if embedded else "production (PostgreSQL + Redis)"
    say(f"\n== {name}: one alert per request, {label}, wrk -t{cfg.single_threads} "
        f"-c{cfg.single_connections} -d{cfg.duration_s}s")
    bodies = workdir / "single.bodies"
    write_single_bodies(bodies)
    backends = embedded_backends(workdir) if embedded else production_backends("single")
    with backends as backend_env, run_ingest(workdir, backend_env) as ingest:
        run_wrk(ingest.falco_url, bodies, ingest.token, "application/json",
                threads=cfg.single_threads, connections=cfg.single_connections,
                duration_s=cfg.warmup_s, run_no=1)
        meter = CpuMeter(ingest.pid)
        meter.start()
        result = run_wrk(ingest.falco_url, bodies, ingest.token, "application/json",
                         threads=cfg.single_threads, connections=cfg.single_connections,
                         duration_s=cfg.duration_s, run_no=2,
                         during=lambda: profiler.start(ingest.pid, name, cfg.duration_s - 1))
        meter.stop()
        report.measured(meter)
        profiler.finish()
    rate = result.per_second(1)
    what = "one alert/request, " + ("embedded SQLite" if embedded else "PostgreSQL + Redis")
    if embedded:
        report.add(Row(f"HTTP {what}: throughput (extra line, no target)",
                       f"{rate:,.0f} alerts/s"))
        report.add(Row(f"HTTP {what}: p50 / p99 latency (no target)",
                       f"{result.p50_ms:.1f} ms / {result.p99_ms:.1f} ms"))
    else:
        report.add(Row(f"HTTP {what}: throughput", f"{rate:,.0f} alerts/s",
                       ">= 5,000 alerts/s", rate >= 5000 and result.failed == 0))
        report.add(Row(f"HTTP {what}: p50 latency", f"{result.p50_ms:.1f} ms"))
        report.add(Row(f"HTTP {what}: p99 latency", f"{result.p99_ms:.1f} ms", "< 50 ms",
                       result.p99_ms < 50 and result.failed == 0))
    report.note(f"{name}: {result.requests:,} requests in {result.duration_s:.1f} s "
                f"({result.describe_errors()}); latency p50 {result.p50_ms:.1f} / p90 "
                f"{result.p90_ms:.1f} / p99 {result.p99_ms:.1f} / p99.9 {result.p999_ms:.1f} / "
                f"max {result.max_ms:.1f} ms; {meter.describe()}; after a {cfg.warmup_s} s "
                f"warm-up run that opened the 100 incidents")


def bench_http_batch(cfg: Config, report: Report, workdir: Path, profiler: Profiler) -> None:
    name = "http-batch"
    say(f"\n== {name}: NDJSON batches of {cfg.batch_size}, production, wrk -t2 "
        f"-c{cfg.batch_connections} -d{cfg.duration_s}s")
    bodies = workdir / "batch.bodies"
    biggest = write_batch_bodies(bodies, cfg.batch_size)
    extra = {}
    if biggest > MB:
        extra["DRIFT_MAX_BODY_BYTES"] = str(4 * biggest)
    with production_backends("batch") as backend_env, \
            run_ingest(workdir, backend_env, extra) as ingest:
        run_wrk(ingest.falco_url, bodies, ingest.token, "application/x-ndjson", threads=2,
                connections=cfg.batch_connections, duration_s=cfg.warmup_s, run_no=1,
                timeout_s=60)
        meter = CpuMeter(ingest.pid)
        meter.start()
        result = run_wrk(ingest.falco_url, bodies, ingest.token, "application/x-ndjson",
                         threads=2, connections=cfg.batch_connections,
                         duration_s=cfg.duration_s, run_no=2, timeout_s=60,
                         during=lambda: profiler.start(ingest.pid, name, cfg.duration_s - 1))
        meter.stop()
        report.measured(meter)
        profiler.finish()
    rate = result.per_second(cfg.batch_size)
    report.add(Row(f"HTTP NDJSON batches of {cfg.batch_size}: throughput",
                   f"{rate:,.0f} alerts/s", ">= 50,000 alerts/s",
                   rate >= 50_000 and result.failed == 0))
    report.note(f"{name}: {result.requests:,} requests ({result.ok_requests * cfg.batch_size:,} "
                f"alerts, bodies of {biggest / 1024:.0f} KiB) in {result.duration_s:.1f} s "
                f"({result.describe_errors()}); per-request latency p50 {result.p50_ms:.0f} / p99 "
                f"{result.p99_ms:.0f} ms; {meter.describe()}")


#: The storm's playbook: an audit note, then the Slack prompt (an approval asked in Slack), for
#: the drift rule every storm alert carries. The note first, as the shipped drop-and-execute
#: playbook does: its step.succeeded notifies too, so a prompt may be posted before its buttons
#: exist and be updated in place (chat.update) once the approval is requested.
STORM_PLAYBOOK_NAME = "bench-storm-prompt"
STORM_RULE = "Drop and execute new binary in container"
STORM_CHANNEL = "#drift-bench-storm"
STORM_PLAYBOOK = f"""\
name: {STORM_PLAYBOOK_NAME}
description: Note the drift, then ask in Slack (the storm benchmark's prompts).
match:
  rules: ["{STORM_RULE}"]
steps:
  - id: summary
    uses: core.note
    with:
      message: "{{{{ alert.rule }}}} in {{{{ incident.namespace }}}}/{{{{ incident.pod }}}}"
  - id: ask
    uses: slack.prompt
    with:
      options: [isolate, dismiss]
      approvers: ["slack:*"]
      expires_after_seconds: 86400
"""
#: Celery workers (``--pool solo``) and beat beside the storm's ingest, run at this niceness so
#: that the ingest (and PostgreSQL, Redis) come first while the storm lasts.
STORM_WORKERS = 2
SERVICE_NICE = 10
#: The prompts have settled when nothing is left to do (no Celery message of the stack queued or
#: taken, no incident waiting in the channel's bucket, every incident's message recorded in the
#: store) and the Slack fake has received nothing for this long.
SETTLE_QUIET_S = 3.0
@contextlib.contextmanager
def run_services(ingest: Ingest, workers: int) -> Iterator[list[Service]]:
    """``workers`` x ``drift-responder worker --pool solo`` and one ``drift-responder beat``
    with the ingest's settings, niced; returns once every worker consumes the queue."""
    import redis

    env = {k: v for k, v in ingest.env.items()
           if k not in ("SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN")}
    nice = shutil.which("nice")
    prefix = [nice, "-n", str(SERVICE_NICE)] if nice else []
    services: list[Service] = []
    workdir = ingest.log_path.parent

    def start(name: str, *args: str) -> Service:
        service = Service.start(name, [*prefix, *cli_command(), "--log-level", "warning", *args],
                                env=env, cwd=workdir)
        services.append(service)
        return service

    client: Any = redis.Redis.from_url(REDIS_URL)  # sync client (the stubs union awaitables)
    try:
        pool = [start(f"worker{i + 1}", "worker", "--pool", "solo") for i in range(workers)]
        start("beat", "beat")
        deadline = time.monotonic() + 90
        while True:
            for s in services:
                if s.proc.poll() is not None:
                    raise RuntimeError(f"{s.name} exited with {s.proc.returncode}:\n{s.tail()}")
            if consuming(client, [w.pid for w in pool]):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start consuming in 90 s:\n" + "\n".join(
                    f"--- {w.name}\n{w.tail()}" for w in pool))
            time.sleep(0.1)
        yield services
    except BaseException:
        for s in services:
            say(f"--- {s.name} (pid {s.pid}) log tail:\n{s.tail()}")
        raise
    finally:
        client.close()
        for s in reversed(services):
            s.stop()


@dataclasses.dataclass
class SlackTally:
    """What the Slack fake received, sorted out. A *prompt* is an incident's own message: a
    successful top-level ``chat.postMessage`` (no ``thread_ts``) that is not a digest; it is
    attributed to the storm incident whose id it names."""

    prompts: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    stray: int = 0            # top-level, not a digest, naming no storm incident (or several)
    digests: int = 0
    digest_names: int = 0     # incident ids named by the digests, in all
    replies: int = 0          # successful chat.postMessage in a thread
    failed_posts: int = 0     # chat.postMessage not answered ok (none expected: no faults)
    updates: int = 0
    failed_updates: int = 0
    methods: dict[str, int] = dataclasses.field(default_factory=dict)
    pending: int = 0          # requests not answered yet
    last_ns: int = 0          # received_ns of the latest request

    @property
    def total(self) -> int:
        """New prompt messages in all (attributed or not)."""
        return sum(len(v) for v in self.prompts.values()) + self.stray

    @property
    def last_prompt_ns(self) -> int:
        return max((r.received_ns for v in self.prompts.values() for r in v), default=0)

    @classmethod
    def of(cls, requests: list[Any], incidents: set[str], digest_block_id: str) -> SlackTally:
        tally = cls()
        for r in requests:
            tally.methods[r.method] = tally.methods.get(r.method, 0) + 1
            tally.last_ns = max(tally.last_ns, r.received_ns)
            if r.status is None:
                tally.pending += 1
                continue
            if r.method == "chat.update":
                tally.updates += 1
                tally.failed_updates += 0 if r.ok else 1
            if r.method != "chat.postMessage":
                continue
            if not r.ok:
                tally.failed_posts += 1
                continue
            if r.args.get("thread_ts"):
                tally.replies += 1
                continue
            named = {m.decode() for m in ULID.findall(r.body)} & incidents
            blocks = r.args.get("blocks")
            if (isinstance(blocks, list) and any(isinstance(b, dict) and
                                                 b.get("block_id") == digest_block_id
                                                 for b in blocks)) \
                    or digest_block_id.encode() in r.body:
                tally.digests += 1
                tally.digest_names += len(named)
            elif len(named) == 1:
                tally.prompts.setdefault(named.pop(), []).append(r)
            else:
                tally.stray += 1
        return tally


@dataclasses.dataclass
class Settled:
    settled: bool
    waited_s: float           # after the storm's last answer
    tally: SlackTally
    incidents: dict[str, tuple[str | None, str | None]]  # id -> (chat_channel, chat_ts)
    bucket: dict[str, int]    # the channel's counters (ratelimit.py): joined, asked, posts...
    in_flight: int            # Celery messages of the stack queued or taken at the end
    waiting: int              # incidents waiting in the channel's bucket at the end
    why: str = ""


def wait_for_prompts(slack: Any, env: dict[str, str], timeout_s: float,
                     digest_block_id: str) -> Settled:
    """Until the prompts settle (see SETTLE_QUIET_S) or ``timeout_s`` passes."""
    import psycopg
    import redis

    queue, prefix = env["DRIFT_QUEUE"], env["DRIFT_REDIS_PREFIX"]
    client: Any = redis.Redis.from_url(REDIS_URL)
    t0 = time.monotonic()
    last_say = t0
    try:
        with psycopg.connect(env["DRIFT_DATABASE_URL"], autocommit=True) as db:
            while True:
                rows = db.execute("SELECT id, chat_channel, chat_ts FROM incidents").fetchall()
                incidents = {str(i): (c, t) for i, c, t in rows}
                tally = SlackTally.of(slack.requests, set(incidents), digest_block_id)
                state = channel_state(client, prefix, STORM_CHANNEL)
                waiting = len(state.get("w", {}))
                in_flight = sum(int(client.llen(k)) for k in queue_keys(queue)) + len(
                    unacked_tags(client, queue))
                unposted = sum(1 for _, ts in incidents.values() if not ts or ts == "posting")
                quiet_s = (time.time_ns() - tally.last_ns) / 1e9 if tally.last_ns else 0.0
                why = (f"{len(tally.prompts)}/{len(incidents)} incidents prompted, {unposted} "
                       f"without a message in the store, {waiting} waiting in the channel's "
                       f"bucket, {in_flight} Celery messages queued or taken, "
                       f"{tally.pending} Slack calls unanswered, Slack quiet for {quiet_s:.1f} s")
                done = (incidents and not unposted and not waiting and not in_flight
                        and not tally.pending and quiet_s >= SETTLE_QUIET_S
                        and set(tally.prompts) >= set(incidents))
                waited = time.monotonic() - t0
                if done or waited > timeout_s:
                    bucket = channel_counters(state)
                    return Settled(bool(done), waited, tally, incidents, bucket, in_flight,
                                   waiting, why)
                if time.monotonic() - last_say > 15:
                    say(f"  ... {waited:.0f} s after the storm: {why}")
                    last_say = time.monotonic()
                time.sleep(0.5)
    finally:
        client.close()


# ---------------------------------------------------------------------------------- the storm

def bench_storm(cfg: Config, report: Report, workdir: Path, profiler: Profiler) -> None:
    from responder.plugins.notify.ratelimit import SlackLimits
    from responder.plugins.notify.slack_blocks import DIGEST_BLOCK_ID
    from tests.fakes.slack_api import FakeSlack

    name = "storm"
    total, batch = cfg.storm_total, cfg.storm_batch
    limits = SlackLimits()  # the stack runs with the default Slack settings
    say(f"\n== {name}: {total:,} alerts over {CONTAINERS} containers, NDJSON batches of "
        f"{batch:,} from a separate process ({cfg.storm_concurrency} connections), production; "
        f"{STORM_WORKERS} Celery workers + beat prompting in Slack (fake)")
    template = workdir / "storm.template"
    template.write_bytes(b"\n".join(alert_template_lines()))
    playbooks = workdir / "playbooks"
    playbooks.mkdir()
    (playbooks / f"{STORM_PLAYBOOK_NAME}.yaml").write_text(STORM_PLAYBOOK)
    body_bytes = max(len(line) for line in alert_template_lines()) * batch + batch
    with FakeSlack() as slack, production_backends("storm", queue=True) as backend_env:
        slack.add_channel(STORM_CHANNEL)
        extra = {"DRIFT_MAX_BODY_BYTES": str(max(MB, 4 * body_bytes)),
                 "DRIFT_MAX_BATCH_ALERTS": str(max(10_000, batch)),
                 "DRIFT_PLAYBOOKS_DIR": str(playbooks),
                 "SLACK_BOT_TOKEN": str(slack.token), "DRIFT_SLACK_API_URL": slack.base_url,
                 "DRIFT_SLACK_CHANNEL": STORM_CHANNEL}
        with run_ingest(workdir, backend_env, extra) as ingest:
            linted = drift_cli(ingest, "playbooks", "lint")
            if linted.returncode != 0:
                raise RuntimeError(f"playbooks lint failed:\n{linted.stdout}\n{linted.stderr}")
            with run_services(ingest, STORM_WORKERS) as services:
                time.sleep(1.0)  # settle after start-up before the "before" reading
                rss_before, _ = rss_bytes(ingest.pid)
                samples: list[tuple[float, int]] = []
                stop_sampling = threading.Event()

                def sample() -> None:
                    t0 = time.perf_counter()
                    while not stop_sampling.is_set():
                        with contextlib.suppress(OSError):
                            samples.append((time.perf_counter() - t0,
                                            rss_bytes(ingest.pid)[0]))
                        stop_sampling.wait(0.5)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                roles = {s.pid: "Celery workers" if s.name.startswith("worker") else "beat"
                         for s in services}
                roles[os.getpid()] = "this script (Slack fake)"
                service_cpu = {s.pid: cpu_seconds(s.pid) for s in services}
                meter = CpuMeter(ingest.pid, roles)
                meter.start()
                started_ns = time.time_ns()
                expected_s = max(5, int(total / 20_000))
                profiler.start(ingest.pid, name, expected_s)
                client = subprocess.run(
                    [sys.executable, str(POST_BATCHES), "--url", ingest.falco_url, "--token",
                     ingest.token, "--template", str(template), "--total", str(total),
                     "--batch", str(batch), "--concurrency", str(cfg.storm_concurrency),
                     "--run", "3"],
                    capture_output=True, text=True, timeout=3600, check=False)
                meter.stop()
                ended_ns = time.time_ns()
                report.measured(meter)
                during_cpu = {s.pid: cpu_seconds(s.pid) - service_cpu[s.pid] for s in services}
                stop_sampling.set()
                sampler.join()
                profiler.finish()
                time.sleep(1.0)
                rss_after, rss_peak = rss_bytes(ingest.pid)
                line = next((ln for ln in client.stdout.splitlines()
                             if ln.startswith("BENCH_JSON ")), None)
                if line is None:
                    raise RuntimeError(f"the storm client failed ({client.returncode}):\n"
                                       f"{client.stdout}\n{client.stderr}\n{ingest.log_tail()}")
                storm = json.loads(line.removeprefix("BENCH_JSON "))
                # Every incident's prompt is due within CONTAINERS / rate seconds of the storm's
                # start (the channel's bucket paces them); a generous margin on top.
                timeout_s = 60 + 2 * CONTAINERS / limits.rate_per_second
                say(f"  storm sent in {storm['elapsed_s']:.1f} s; waiting (at most "
                    f"{timeout_s:.0f} s) for the prompts to settle")
                settled = wait_for_prompts(slack, ingest.env, timeout_s, DIGEST_BLOCK_ID)
                total_cpu = {s.pid: cpu_seconds(s.pid) - service_cpu[s.pid] for s in services}
                errors = task_errors("".join(s.log() for s in services))
            stop_process(ingest.proc)  # quiesce before reading the store back
            listed = drift_cli(ingest, "incidents", "list", "--json")
            verified = drift_cli(ingest, "audit", "verify")
        if slack.errors:
            raise RuntimeError(f"the Slack fake failed: {slack.errors[:3]}")
        final = SlackTally.of(slack.requests, set(settled.incidents), DIGEST_BLOCK_ID)
        channel_messages = slack.messages(STORM_CHANNEL)

    rate = storm["alerts_per_s"]
    report.add(Row(f"Storm ({total:,} alerts, batches of {batch:,}): throughput",
                   f"{rate:,.0f} alerts/s"))
    if listed.returncode != 0:
        report.add(Row("Storm: incidents afterwards (CLI incidents list --json)",
                       f"CLI failed: {listed.stderr.strip()[:200]}",
                       f"exactly {CONTAINERS}, alert_count sum {total:,}", False, timing=False))
    else:
        incidents = json.loads(listed.stdout)
        count = len(incidents)
        summed = sum(int(i["alert_count"]) for i in incidents)
        report.add(Row("Storm: incidents afterwards (CLI incidents list --json)",
                       f"{count} incidents, alert_count sum {summed:,}",
                       f"exactly {CONTAINERS}, sum {total:,}",
                       count == CONTAINERS and summed == total, timing=False))
    report_prompts(report, final, settled, started_ns, ended_ns, channel_messages,
                   DIGEST_BLOCK_ID)
    growth = rss_after - rss_before
    report.add(Row("Storm: ingest RSS before -> after",
                   f"{rss_before / MB:.0f} MB -> {rss_after / MB:.0f} MB "
                   f"({growth / MB:+.0f} MB; peak {rss_peak / MB:.0f} MB)",
                   "flat: growth < 50 MB", growth < 50 * MB, timing=False))
    verdict = (verified.stdout + verified.stderr).strip().splitlines()
    report.add(Row("Storm: `drift-responder audit verify`",
                   (verdict[-1] if verdict else f"exit {verified.returncode}"), "passes",
                   verified.returncode == 0, timing=False))
    if len(samples) >= 4:
        # Working set vs leak: growth from 10% of the storm's duration to its end.
        cut = samples[-1][0] * 0.1
        early = next(r for t, r in samples if t >= cut)
        late = samples[-1][1]
        report.add(Row("Storm: ingest RSS from 10% of the storm to its end (leak check)",
                       f"{early / MB:.0f} MB -> {late / MB:.0f} MB "
                       f"({(late - early) / MB:+.0f} MB)", timing=False))
    trajectory = _trajectory(samples)
    report.note(f"{name}: {storm['accepted']:,} of {storm['sent']:,} alerts accepted in "
                f"{storm['batches']} requests, {storm['elapsed_s']:.1f} s, statuses "
                f"{storm['statuses']}; per-batch latency p50 {storm['batch_p50_s'] * 1000:.0f} / "
                f"p99 {storm['batch_p99_s'] * 1000:.0f} ms; {meter.describe()}")
    wall = max(1e-9, (ended_ns - started_ns) / 1e9)
    workers_during = sum(v for p, v in during_cpu.items() if roles[p] != "beat")
    workers_total = sum(v for p, v in total_cpu.items() if roles[p] != "beat")
    beat_total = sum(v for p, v in total_cpu.items() if roles[p] == "beat")
    share = 100 * workers_during / wall
    report.note(f"{name}: the {STORM_WORKERS} Celery workers (nice {SERVICE_NICE}) used "
                f"{workers_during:.1f} CPU-s while the storm was posted ({share:.0f}% of one "
                f"core over its {wall:.1f} s) and {workers_total:.1f} CPU-s in all until the "
                f"prompts settled; the beat {beat_total:.1f} CPU-s; worker task errors: "
                f"{errors or 'none'}")
    report.note(f"{name}: ingest RSS during the storm (s: MB): {trajectory}")
    for failure in storm["failures"][:5]:
        report.note(f"{name}: client failure: {failure}")


def report_prompts(report: Report, tally: SlackTally, settled: Settled, started_ns: int,
                   ended_ns: int, channel_messages: list[dict[str, Any]],
                   digest_block_id: str) -> None:
    incidents = settled.incidents
    per_incident = {i: len(tally.prompts.get(i, [])) for i in incidents}
    once = sum(1 for n in per_incident.values() if n == 1)
    twice = sum(1 for n in per_incident.values() if n > 1)
    none = sum(1 for n in per_incident.values() if n == 0)
    met = (tally.total == CONTAINERS and len(incidents) == CONTAINERS and once == CONTAINERS
           and settled.settled)
    extra = [f"{tally.updates} chat.update" + (f" ({tally.failed_updates} failed)"
                                              if tally.failed_updates else ""),
             f"{tally.digests} digest message(s) (not counted)",
             f"{tally.replies} thread replies"]
    if twice or none or tally.stray:
        extra.insert(0, f"{twice} incidents prompted more than once, {none} never, "
                        f"{tally.stray} unattributed")
    if tally.failed_posts:
        extra.append(f"{tally.failed_posts} chat.postMessage refused")
    if not settled.settled:
        extra.append(f"NOT settled after {settled.waited_s:.0f} s: {settled.why}")
    report.add(Row("Storm: Slack prompts (top-level chat.postMessage per incident, after the "
                   "prompts settled)",
                   f"{tally.total} prompts, one each for {once} of {len(incidents)} incidents; "
                   + "; ".join(extra),
                   f"exactly {CONTAINERS} (one per incident)", met, timing=False))
    report.add(Row("Storm: Slack digests (extra messages naming waiting incidents; no target)",
                   f"{tally.digests} digest(s) naming {tally.digest_names} incidents in all",
                   timing=False))
    last = tally.last_prompt_ns
    if last:
        report.add(Row("Storm: last prompt posted, after the storm's first request / after its "
                       "last answer",
                       f"{(last - started_ns) / 1e9:.1f} s / {(last - ended_ns) / 1e9:.1f} s"))
    # Cross-checks: the store's message for each incident is its one prompt; the channel as the
    # fake keeps it (after updates) holds the same top-level messages.
    ts_of = {i: rs[0].response.get("ts") for i, rs in tally.prompts.items() if len(rs) == 1}
    matching = sum(1 for i, (_, ts) in incidents.items() if ts and ts_of.get(i) == ts)
    top = [m for m in channel_messages if not m.get("thread_ts") or m.get("thread_ts") == m["ts"]]
    digests_kept = sum(1 for m in top if any(b.get("block_id") == digest_block_id
                                             for b in m.get("blocks") or []))
    b = settled.bucket
    report.note(
        f"storm prompts: settled {settled.waited_s:.1f} s after the storm's last answer "
        f"({'nothing left to do' if settled.settled else 'TIMED OUT: ' + settled.why}); "
        f"Slack calls {dict(sorted(tally.methods.items()))}; {matching} of {len(incidents)} "
        f"incidents' chat_ts in the store is the ts of their one prompt; the fake's channel "
        f"{STORM_CHANNEL} holds {len(top)} top-level messages ({len(top) - digests_kept} "
        f"prompts, {digests_kept} digests); the channel's bucket: {b.get('joined', 0)} incidents "
        f"queued for their first message, asked {b.get('asked', 0)} times, {b.get('posts', 0)} "
        f"posts granted, {b.get('waits', 0)} refusals (each re-queued the notification until "
        f"its turn), {b.get('digests', 0)} digests")

def _trajectory(samples: list[tuple[float, int]], points: int = 10) -> str:
    if not samples:
        return "no samples"
    step = max(1, len(samples) // points)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return ", ".join(f"{t:.0f}: {r / MB:.0f}" for t, r in picked)


# ------------------------------------------------------------------------------------- facts

def machine_facts() -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    facts.append(("cores (nproc)", nproc or str(os.cpu_count())))
    model = cpu_model()
    if model:
        facts.append(("CPU", model))
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        total_kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal:"))
        facts.append(("memory", f"{total_kb / 1024 / 1024:.1f} GiB"))
    facts.append(("kernel", platform.release()))
    facts.append(("Python", platform.python_version()))
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        facts.append(("PostgreSQL", str(row[0]) if row else "?"))
    except Exception as exc:
        facts.append(("PostgreSQL", f"unreachable: {exc}"))
    try:
        import redis

        client: Any = redis.Redis.from_url(REDIS_URL)
        facts.append(("Redis", str(client.info("server")["redis_version"])))
        client.close()
    except Exception as exc:
        facts.append(("Redis", f"unreachable: {exc}"))
    wrk = shutil.which("wrk")
    if wrk:
        first = subprocess.run([wrk, "-v"], capture_output=True, text=True,
                               check=False).stdout.splitlines()
        facts.append(("wrk", first[0].split(" Copyright")[0] if first else "?"))
    versions = package_versions(("uvicorn", "uvloop", "httptools", "starlette", "pydantic",
                                 "SQLAlchemy", "psycopg", "redis", "orjson"))
    facts.append(("packages", ", ".join(versions)))
    return facts


def write_results(path: Path, cfg: Config, report: Report, facts: list[tuple[str, str]],
                  ran: list[str], started: dt.datetime) -> None:
    lines = [
        "# Intake benchmarks",
        "",
        f"Generated by `.venv/bin/python bench/intake.py{' --quick' if cfg.quick else ''}` "
        f"(`make bench`) on {started:%Y-%m-%d %H:%M} UTC; benchmarks: {', '.join(ran)}.",
        "One `drift-responder ingest` process (uvicorn, one worker) on the machine below, with "
        "PostgreSQL, Redis and the load generator (wrk, or bench/post_batches.py for the storm) "
        "sharing the same cores; for the storm also two Celery workers and the beat, which post "
        "the incidents' Slack prompts (to a local Slack fake). Each benchmark uses a fresh "
        "database and Redis key prefix.",
        "",
    ]
    if cfg.quick:
        lines += ["**Quick smoke-test run: the figures are not representative.**", ""]
    lines += table(report.rows)
    lines += ["", "## Machine", "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in facts]
    lines += ["", "## Details", ""]
    lines += [f"- {n}" for n in report.notes]
    lines += [
        "",
        "## Method",
        "",
        f"- HTTP one alert per request: `wrk -t{cfg.single_threads} "
        f"-c{cfg.single_connections} -d{cfg.duration_s}s --latency -s bench/wrk_post.lua`, "
        "each request a falcosidekick drift alert (tests/support/samples.py) for one of 100 "
        "containers in turn, with a unique uuid; Bearer token; throughput counts 202s only.",
        f"- HTTP batches: the same script with `-t2 -c{cfg.batch_connections}`, cycling over "
        f"20 distinct NDJSON bodies of {cfg.batch_size} alerts (5 per container).",
        f"- Storm: bench/post_batches.py posts {cfg.storm_total:,} alerts with distinct uuids as "
        f"NDJSON batches of {cfg.storm_batch:,} over {cfg.storm_concurrency} keep-alive "
        "connections (DRIFT_MAX_BODY_BYTES raised to fit them); RSS is VmRSS from "
        "/proc/<pid>/status one second after start-up (before) and one second after the last "
        "answer (after); peak is VmHWM.",
        f"- Storm prompts: the storm's stack also runs {STORM_WORKERS} `drift-responder worker "
        f"--pool solo` and one `drift-responder beat` (at nice {SERVICE_NICE}, so that the "
        "ingest, PostgreSQL and Redis come first; their CPU during the storm is reported by "
        "role and is not counted as foreign load) on its own Celery queue, started (and "
        "consuming) before the storm; a playbook for the drift rule records a `core.note`, then "
        "asks in Slack (`slack.prompt`, options isolate/dismiss, approvers `slack:*`); Slack is "
        "tests/fakes/slack_api.py's FakeSlack in the benchmark process, reached by the workers' "
        "real slack_sdk client (SLACK_BOT_TOKEN, DRIFT_SLACK_API_URL). Default Slack limits and "
        f"one channel ({STORM_CHANNEL}, DRIFT_SLACK_CHANNEL): the channel's token bucket lets "
        "10 new messages out at once, then one a second, oldest incident first, and posts a "
        "digest naming the waiting incidents while more than 20 wait (at most one per 5 s), so "
        "the 100 prompts take about 90 s from the storm's first request, partly after the storm "
        "(the incidents are spread over no other channels on purpose: one channel is the "
        "default and the case where the re-queued notifications could double-post). After the "
        "last answer the script waits (at most 60 s + 2 s per incident) until nothing is left "
        "to do: no message of the stack's queue queued or taken (kombu's `unacked`, where "
        "notifications re-queued with a countdown wait), no incident waiting in the channel's "
        "bucket, every incident's message (`chat_ts`) recorded in the store, and no Slack "
        f"call for {SETTLE_QUIET_S:g} s. Counted from the fake's request log: a **prompt** is "
        "a successful `chat.postMessage` without `thread_ts` that is not a digest (no block "
        "`drift-digest`), attributed to the storm incident whose id it names; the row is met "
        "when there are exactly 100 and each of the 100 incidents has exactly one. Digests, "
        "thread replies and `chat.update` calls are counted apart; each incident's `chat_ts` "
        "in the store is checked against the ts of its prompt.",
        "- The script measures the CPU used by everything else during each measurement; "
        + ("" if cfg.quick else "before each benchmark it waits (up to 90 s) for the machine "
           "to be idle, and it runs a benchmark again when ")
        + ("a measurement is marked 'machine shared' when " if cfg.quick else "")
        + f"that foreign load exceeded {FOREIGN_LIMIT_PCT:.0f}% of a core.",
        "- Where the time goes (profiles and suggestions): bench/PROFILE.md.",
        "",
    ]
    section = "\n".join([START_MARK, *lines]).rstrip("\n") + "\n" + END_MARK + "\n"
    path.write_text(merge_section(path.read_text() if path.exists() else "", section))


#: This script owns only the part of RESULTS.md between these marks (other bench scripts, such as
#: bench/runs.py, keep their own marked sections in the same file).
START_MARK = "<!-- intake:start -->"
END_MARK = "<!-- intake:end -->"


def merge_section(old: str, section: str) -> str:
    """``old`` with its intake section replaced by ``section`` (or ``section`` put first)."""
    if START_MARK in old and END_MARK in old:
        head, rest = old.split(START_MARK, 1)
        tail = rest.split(END_MARK, 1)[1].lstrip("\n")
        return head + section + ("\n" + tail if tail else "")
    if old.startswith("# Intake benchmarks"):
        # Written before the marks existed: the intake part runs up to the next marked section.
        other = old.find("<!-- ", 1)
        old = old[other:] if other >= 0 else ""
    return section + ("\n" + old.lstrip("\n") if old.strip() else "")


# ---------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="much smaller runs (3 s wrk runs, a 20,000-alert storm; the "
                             "storm still waits ~90 s for its 100 Slack prompts)")
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"write the markdown table here (default: {DEFAULT_RESULTS} for a "
                             "full run of every benchmark, nowhere otherwise)")
    parser.add_argument("--py-spy", dest="py_spy", type=Path, default=None, metavar="DIR",
                        help="also sample the ingest with py-spy (raw collapsed stacks) into DIR")
    parser.add_argument("--py-spy-gil", dest="py_spy_gil", action="store_true",
                        help="with --py-spy: sample only the thread holding the GIL (where the "
                             "ingest's one core goes), not every thread")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per measured wrk run (default 20, 3 with --quick)")
    parser.add_argument("--storm-total", type=int, default=None,
                        help="alerts in the storm (default 1,000,000, 20,000 with --quick)")
    parser.add_argument("--storm-batch", type=int, default=None,
                        help="alerts per storm request (default 5,000)")
    parser.add_argument("--retries", type=int, default=None,
                        help="run a benchmark again (at most this often) when other work used "
                             f"more than {FOREIGN_LIMIT_PCT:.0f}%% of a core during it "
                             "(default 1; 0 with --quick)")
    args = parser.parse_args()
    cfg = Config.make(args.quick)
    retries = args.retries if args.retries is not None else 0 if args.quick else 1
    overrides = {"duration_s": args.duration, "storm_total": args.storm_total,
                 "storm_batch": args.storm_batch}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    customised = any(v is not None for v in overrides.values())
    selected = [b for b in BENCHMARKS if not args.only or b in args.only]
    results_path = args.results
    if results_path is None and not args.quick and not args.only and not customised:
        results_path = DEFAULT_RESULTS

    started = dt.datetime.now(dt.UTC)
    if any(b != "storm" for b in selected):
        ensure_wrk()
    facts = machine_facts()
    say("machine: " + "; ".join(f"{k}: {v}" for k, v in facts))
    report = Report()
    if args.py_spy_gil and args.py_spy is None:
        parser.error("--py-spy-gil needs --py-spy DIR")
    profiler = Profiler(args.py_spy, gil=args.py_spy_gil)
    failures = 0
    runners: dict[str, Callable[[Config, Report, Path, Profiler], None]] = {
        "http-single": lambda c, r, w, p: bench_http_single(c, r, w, p, embedded=False),
        "http-single-embedded": lambda c, r, w, p: bench_http_single(c, r, w, p, embedded=True),
        "http-batch": bench_http_batch,
        "storm": bench_storm,
    }
    for name in selected:
        attempts: list[Report] = []
        for attempt in range(1 + retries):
            quiet = wait_for_quiet(90.0) if not cfg.quick else 0.0
            sub = Report()
            if attempt:
                say(f"\n(running {name} again: attempt {attempt + 1} of {1 + retries})")
            with tempfile.TemporaryDirectory(prefix=f"drift-bench-{name}-") as tmp:
                try:
                    runners[name](cfg, sub, Path(tmp), profiler)
                except Exception as exc:
                    failures += 1
                    sub.add(Row(f"{name}", f"benchmark failed: {type(exc).__name__}: "
                                           f"{str(exc).splitlines()[0] if str(exc) else ''}",
                                "runs", False))
                    say(str(exc))
                    attempts = [sub]
                    break
            attempts.append(sub)
            if not sub.contended:
                break
            say(f"  ! other work used {sub.foreign_pct:.0f}% of a core during the measurement "
                f"(machine was at {quiet:.0f}% before it started): the figures are depressed")
        chosen = min(attempts, key=lambda r: r.foreign_pct)
        if chosen.contended:
            chosen.notes.append(
                f"{name}: **the machine was shared**: work foreign to the benchmark used "
                f"{chosen.foreign_pct:.0f}% of a core during the best of {len(attempts)} "
                "attempt(s), so its speed figures may be lower than on an idle machine")
            for row in chosen.rows:
                if row.timing:
                    row.measured += " (machine shared)"
        elif len(attempts) > 1:
            chosen.notes.append(f"{name}: figures from attempt {attempts.index(chosen) + 1} of "
                                f"{len(attempts)}; the others ran while other work used the "
                                "machine")
        report.merge(chosen)
    say("\n" + "\n".join(table(report.rows)))
    if results_path is not None:
        write_results(results_path, cfg, report, facts, selected, started)
        say(f"\nwrote {results_path}")
    else:
        say("\n(not written to a file: pass --results PATH, or run the full benchmark)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
