"""Intake benchmarks: a real ``drift-responder ingest`` process, load from separate processes.

    .venv/bin/python bench/intake.py            # everything, full size (~4 minutes)
    .venv/bin/python bench/intake.py --quick    # smoke test, well under a minute
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
  (growth < 50 MB).

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
import importlib.metadata
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
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
BENCH = ROOT / "bench"
WRK_LUA = BENCH / "wrk_post.lua"
POST_BATCHES = BENCH / "post_batches.py"
DEFAULT_RESULTS = BENCH / "RESULTS.md"
PG_ADMIN_URL = os.environ.get("DRIFT_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DRIFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
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
class Row:
    figure: str
    measured: str
    target: str = "-"
    met: bool | None = None
    timing: bool = True  # a speed figure (other load on the machine can depress it)

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else "yes" if self.met else "**NO**"


@dataclasses.dataclass
class Report:
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    foreign_pct: float = 0.0  # the worst foreign load seen by a measurement in this report

    def measured(self, meter: CpuMeter) -> None:
        self.foreign_pct = max(self.foreign_pct, meter.foreign_pct)

    @property
    def contended(self) -> bool:
        return self.foreign_pct > FOREIGN_LOAD_LIMIT_PCT

    def merge(self, other: Report) -> None:
        self.rows += other.rows
        self.notes += other.notes
        self.foreign_pct = max(self.foreign_pct, other.foreign_pct)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(f"  {row.figure}: {row.measured}  (target {row.target}; met: {row.verdict})",
              flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  - {text}", flush=True)


# ------------------------------------------------------------------------------------- helpers

def say(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "drift-responder"
    if script.exists():
        return [str(script)]
    found = shutil.which("drift-responder")
    if found:
        return [found]
    return [sys.executable, "-c", "from responder.cli import main; main()"]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any DRIFT_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env.update(extra)
    return env


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


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


def all_cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command name, user + system CPU seconds) for every process we can read."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
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
        out[int(entry)] = (head.split("(", 1)[1],
                           (int(fields[11]) + int(fields[12])) / tick)
    return out


class CpuMeter:
    """CPU used by the ingest, by the other busy processes and by the whole machine between
    start() and stop() (to tell a CPU-bound ingest from a contended machine)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ingest_pct = 0.0
        self.machine_pct = 0.0
        self.loadgen_pct = 0.0
        self.foreign_pct = 0.0
        self.others: list[tuple[str, float]] = []

    def start(self) -> None:
        self._t = time.perf_counter()
        self._cpu = cpu_seconds(self.pid)
        self._busy = machine_busy()
        self._all = all_cpu_seconds()
        self._children = _children_cpu()

    def stop(self) -> None:
        wall = time.perf_counter() - self._t
        self.ingest_pct = 100 * (cpu_seconds(self.pid) - self._cpu) / wall
        busy, total = machine_busy()
        cores = os.cpu_count() or 1
        self.machine_pct = 100 * cores * (busy - self._busy[0]) / max(1.0, total - self._busy[1])
        groups: dict[str, float] = {}
        for pid, (name, seconds) in all_cpu_seconds().items():
            if pid == self.pid:
                continue
            before = self._all.get(pid)
            used = seconds - before[1] if before else seconds
            group = name.split("/", 1)[0] if name.startswith("kworker") else name
            groups[group] = groups.get(group, 0.0) + used
        self.others = sorted(((n, 100 * s / wall) for n, s in groups.items() if s > 0),
                             key=lambda x: -x[1])[:5]
        # The load generator (wrk, post_batches.py) has exited and been reaped by now.
        self.loadgen_pct = 100 * (_children_cpu() - self._children) / wall
        ours = sum(100 * s / wall for n, s in groups.items() if n in OUR_SERVICES)
        self.foreign_pct = max(0.0, self.machine_pct - self.ingest_pct - self.loadgen_pct - ours)

    @property
    def contended(self) -> bool:
        return self.foreign_pct > FOREIGN_LOAD_LIMIT_PCT

    def describe(self) -> str:
        cores = os.cpu_count() or 1
        others = ", ".join(f"{n} {p:.0f}%" for n, p in self.others if p >= 1) or "none"
        return (f"ingest process CPU {self.ingest_pct:.0f}% of one core, load generator "
                f"{self.loadgen_pct:.0f}%; whole machine {self.machine_pct:.0f}% of "
                f"{cores * 100}%, of which {self.foreign_pct:.0f}% was work foreign to the "
                f"benchmark (processes still running at the end: {others})")


#: Processes that serve the benchmark (not foreign load).
OUR_SERVICES = frozenset({"postgres", "redis-server", "py-spy"})
#: More foreign CPU than this (% of one core) during a measurement marks it as contended.
FOREIGN_LOAD_LIMIT_PCT = 25.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float = 90.0, window_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until the machine is nearly idle; returns the last busy %."""
    deadline = time.monotonic() + max_wait_s
    cores = os.cpu_count() or 1
    while True:
        busy0, total0 = machine_busy()
        time.sleep(window_s)
        busy1, total1 = machine_busy()
        pct = 100 * cores * (busy1 - busy0) / max(1.0, total1 - total0)
        if pct <= FOREIGN_LOAD_LIMIT_PCT or time.monotonic() > deadline:
            return pct
        say(f"  (machine busy with other work: {pct:.0f}% of a core; waiting)")


# -------------------------------------------------------------------------------------- alerts

def sample_alert(container: int, uuid: str) -> dict[str, Any]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
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
def production_backends(label: str) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and Redis key prefix; both removed afterwards."""
    import psycopg
    import redis

    suffix = secrets.token_hex(4)
    dbname = f"drift_bench_{label.replace('-', '_')}_{suffix}"
    prefix = f"drift-bench-{label}-{suffix}:"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{dbname}"
    try:
        yield {"DRIFT_DATABASE_URL": db_url, "DRIFT_REDIS_URL": REDIS_URL,
               "DRIFT_REDIS_PREFIX": prefix}
    finally:
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        except psycopg.Error as exc:
            say(f"  ! could not drop database {dbname}: {exc}")
        client = redis.Redis.from_url(REDIS_URL)
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
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


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
    return subprocess.run([*cli_command(), "--log-level", "warning", *args], env=ingest.env,
                          cwd=ingest.log_path.parent, capture_output=True, text=True,
                          timeout=600, check=False)


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

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
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
             "--rate", "250", "--format", "raw", "--threads", "--idle", "--nonblocking",
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


def bench_storm(cfg: Config, report: Report, workdir: Path, profiler: Profiler) -> None:
    name = "storm"
    total, batch = cfg.storm_total, cfg.storm_batch
    say(f"\n== {name}: {total:,} alerts over {CONTAINERS} containers, NDJSON batches of "
        f"{batch:,} from a separate process ({cfg.storm_concurrency} connections), production")
    template = workdir / "storm.template"
    template.write_bytes(b"\n".join(alert_template_lines()))
    body_bytes = max(len(line) for line in alert_template_lines()) * batch + batch
    extra = {"DRIFT_MAX_BODY_BYTES": str(max(MB, 4 * body_bytes)),
             "DRIFT_MAX_BATCH_ALERTS": str(max(10_000, batch))}
    with production_backends("storm") as backend_env, \
            run_ingest(workdir, backend_env, extra) as ingest:
        time.sleep(1.0)  # let the process settle after start-up before the "before" reading
        rss_before, _ = rss_bytes(ingest.pid)
        samples: list[tuple[float, int]] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            t0 = time.perf_counter()
            while not stop_sampling.is_set():
                with contextlib.suppress(OSError):
                    samples.append((time.perf_counter() - t0, rss_bytes(ingest.pid)[0]))
                stop_sampling.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        meter = CpuMeter(ingest.pid)
        meter.start()
        expected_s = max(5, int(total / 20_000))
        profiler.start(ingest.pid, name, expected_s)
        client = subprocess.run(
            [sys.executable, str(POST_BATCHES), "--url", ingest.falco_url, "--token",
             ingest.token, "--template", str(template), "--total", str(total), "--batch",
             str(batch), "--concurrency", str(cfg.storm_concurrency), "--run", "3"],
            capture_output=True, text=True, timeout=3600, check=False)
        meter.stop()
        report.measured(meter)
        stop_sampling.set()
        sampler.join()
        profiler.finish()
        time.sleep(1.0)
        rss_after, rss_peak = rss_bytes(ingest.pid)
        line = next((ln for ln in client.stdout.splitlines() if ln.startswith("BENCH_JSON ")),
                    None)
        if line is None:
            raise RuntimeError(f"the storm client failed ({client.returncode}):\n"
                               f"{client.stdout}\n{client.stderr}\n{ingest.log_tail()}")
        storm = json.loads(line.removeprefix("BENCH_JSON "))
        stop_process(ingest.proc)  # quiesce before reading the store back
        listed = drift_cli(ingest, "incidents", "list", "--json")
        verified = drift_cli(ingest, "audit", "verify")

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
    report.note(f"{name}: ingest RSS during the storm (s: MB): {trajectory}")
    for failure in storm["failures"][:5]:
        report.note(f"{name}: client failure: {failure}")


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
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                     "")
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

        client = redis.Redis.from_url(REDIS_URL)
        facts.append(("Redis", str(client.info("server")["redis_version"])))
        client.close()
    except Exception as exc:
        facts.append(("Redis", f"unreachable: {exc}"))
    wrk = shutil.which("wrk")
    if wrk:
        first = subprocess.run([wrk, "-v"], capture_output=True, text=True,
                               check=False).stdout.splitlines()
        facts.append(("wrk", first[0].split(" Copyright")[0] if first else "?"))
    versions = []
    for dist in ("uvicorn", "uvloop", "httptools", "starlette", "pydantic", "SQLAlchemy",
                 "psycopg", "redis", "orjson"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
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
        "sharing the same cores. Each benchmark uses a fresh database and Redis key prefix.",
        "",
    ]
    if cfg.quick:
        lines += ["**Quick smoke-test run: the figures are not representative.**", ""]
    lines += ["| figure | measured | target | met? |", "| --- | --- | --- | --- |"]
    lines += [f"| {r.figure} | {r.measured} | {r.target} | {r.verdict} |" for r in report.rows]
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
        "- The script measures the CPU used by everything else during each measurement; "
        + ("" if cfg.quick else "before each benchmark it waits (up to 90 s) for the machine "
           "to be idle, and it runs a benchmark again when ")
        + ("a measurement is marked 'machine shared' when " if cfg.quick else "")
        + f"that foreign load exceeded {FOREIGN_LOAD_LIMIT_PCT:.0f}% of a core.",
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
                        help="much smaller runs (3 s wrk runs, a 20,000-alert storm)")
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"write the markdown table here (default: {DEFAULT_RESULTS} for a "
                             "full run of every benchmark, nowhere otherwise)")
    parser.add_argument("--py-spy", dest="py_spy", type=Path, default=None, metavar="DIR",
                        help="also sample the ingest with py-spy (raw collapsed stacks) into DIR")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds per measured wrk run (default 20, 3 with --quick)")
    parser.add_argument("--storm-total", type=int, default=None,
                        help="alerts in the storm (default 1,000,000, 20,000 with --quick)")
    parser.add_argument("--storm-batch", type=int, default=None,
                        help="alerts per storm request (default 5,000)")
    parser.add_argument("--retries", type=int, default=None,
                        help="run a benchmark again (at most this often) when other work used "
                             f"more than {FOREIGN_LOAD_LIMIT_PCT:.0f}%% of a core during it "
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
    profiler = Profiler(args.py_spy)
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
            quiet = wait_for_quiet() if not cfg.quick else 0.0
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
    say("\n| figure | measured | target | met? |")
    say("| --- | --- | --- | --- |")
    for r in report.rows:
        say(f"| {r.figure} | {r.measured} | {r.target} | {r.verdict} |")
    if results_path is not None:
        write_results(results_path, cfg, report, facts, selected, started)
        say(f"\nwrote {results_path}")
    else:
        say("\n(not written to a file: pass --results PATH, or run the full benchmark)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
