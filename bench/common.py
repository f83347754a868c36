"""What the benchmark scripts share (bench/intake.py, runs.py, prompt.py, evidence.py).

Imported as ``bench.common``: each script puts the repository root on ``sys.path`` before it
imports this, so the same module object serves a script run as ``python bench/x.py`` and
bench/prompt.py importing bench/runs.py. Standard library only (redis and psycopg clients are
passed in), so that bench/evidence.py needs neither to import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("DRIFT_BENCH_PG_ADMIN_URL",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DRIFT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
#: More CPU than this (% of one core) used by work foreign to a benchmark marks a measurement
#: as taken on a shared machine (and is what "idle" means before one).
FOREIGN_LIMIT_PCT = 25.0
#: An incident id (a ULID) in a Slack request body.
ULID = re.compile(rb"[0-9A-HJKMNP-TV-Z]{26}")


def say(text: str) -> None:
    # Flushed: the scripts run for minutes, often with their output piped to a log.
    print(text, flush=True)


# ------------------------------------------------------------------------------------ results

@dataclasses.dataclass
class Row:
    """One line of a results table."""

    figure: str
    measured: str
    target: str = "-"
    met: bool | None = None
    timing: bool = True  # a speed figure (bench/intake.py marks these when the machine was shared)

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else "yes" if self.met else "**NO**"

    @property
    def summary(self) -> str:
        """How a row is printed as soon as it is measured."""
        return f"  {self.figure}: {self.measured}  (target {self.target}; met: {self.verdict})"


@dataclasses.dataclass
class Report:
    """Rows and notes, each printed as it is added (progress on the console)."""

    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        say(row.summary)

    def note(self, text: str) -> None:
        self.notes.append(text)
        say(f"  - {text}")


def table(rows: Iterable[Row]) -> list[str]:
    """The Markdown results table (the same on the console and in bench/RESULTS.md)."""
    return ["| figure | measured | target | met? |", "| --- | --- | --- | --- |",
            *(f"| {r.figure} | {r.measured} | {r.target} | {r.verdict} |" for r in rows)]


def write_section(path: Path, text: str, start_mark: str, end_mark: str) -> None:
    """Replace the part of ``path`` between the marks with ``text`` (which carries the marks),
    or append ``text``: several scripts keep their own sections in one bench/RESULTS.md."""
    if not path.exists():
        path.write_text(text)
        return
    current = path.read_text()
    start, end = current.find(start_mark), current.find(end_mark)
    if start != -1 and end > start:
        updated = current[:start] + text.rstrip("\n") + current[end + len(end_mark):]
        if not updated.endswith("\n"):
            updated += "\n"
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated)


# ------------------------------------------------------------------------------------ machine

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "" where it has none (some ARM kernels)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                    "")
    return ""


def package_versions(dists: Iterable[str]) -> list[str]:
    """"name version" of each installed distribution (the missing ones left out)."""
    versions = []
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{dist} {importlib.metadata.version(dist)}")
    return versions


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def busy_pct(before: tuple[float, float], after: tuple[float, float]) -> float:
    """CPU the whole machine used between two machine_busy() readings, in % of one core."""
    cores = os.cpu_count() or 1
    return 100 * cores * (after[0] - before[0]) / max(1.0, after[1] - before[1])


def busy_pct_over(window_s: float) -> float:
    """busy_pct() over the next ``window_s`` seconds (this process sleeps meanwhile)."""
    before = machine_busy()
    time.sleep(window_s)
    return busy_pct(before, machine_busy())


def wait_for_quiet(max_wait_s: float, window_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until the machine is nearly idle; returns the last busy %."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = busy_pct_over(window_s)
        if busy <= FOREIGN_LIMIT_PCT or time.monotonic() > deadline:
            return busy
        say(f"  (machine busy with other work: {busy:.0f}% of a core; waiting)")


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
        except OSError:  # exited meanwhile
            continue
        # The command name is in parentheses and may hold spaces: split after the last ")".
        head, _, rest = raw.rpartition(")")
        fields = rest.split()
        out[int(entry)] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
    return out


def rusage_seconds(who: int) -> float:
    """user + system CPU seconds of ``resource.RUSAGE_SELF`` or ``RUSAGE_CHILDREN``."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------- processes

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cli_command() -> list[str]:
    """``drift-responder``: the venv's console script, else one on PATH, else the package."""
    script = Path(sys.executable).parent / "drift-responder"
    if script.exists():
        return [str(script)]
    found = shutil.which("drift-responder")
    if found:
        return [found]
    return [sys.executable, "-m", "responder"]


def run_cli(args: Sequence[str], *, env: dict[str, str], cwd: Path,
            timeout_s: float = 600.0) -> subprocess.CompletedProcess[str]:
    """One ``drift-responder`` command with a stack's settings, output captured."""
    return subprocess.run([*cli_command(), "--log-level", "warning", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any DRIFT_* setting, plus ``extra``: a stack must not
    pick up the settings of whoever runs the benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env.update(extra)
    return env


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def log_tail(path: Path, lines: int) -> str:
    return "\n".join(read_log(path).splitlines()[-lines:])


def stop_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process group ``proc`` leads, then SIGKILL if it lingers; the group, not
    just the leader, because ``nice`` wrappers and Celery's children belong to it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    else:  # the leader exited; make sure nothing of its group survives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclasses.dataclass
class Service:
    """A process of a benchmark's stack (a Celery worker, the beat...), in a process group of its
    own so that it can be stopped whole, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, argv: Sequence[str], *, env: dict[str, str],
              cwd: Path) -> Service:
        log_path = cwd / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return read_log(self.log_path)

    def tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, grace_s: float = 15.0) -> None:
        stop_group(self.proc, grace_s)


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
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_path) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# ------------------------------------------------------------------------------ Redis, Celery

def consuming(client: Any, pids: Iterable[int]) -> bool:
    """Whether each process has a Redis connection blocked in BRPOP/BLPOP: a Celery worker that
    waits on its queue is ready, which its log does not tell reliably."""
    blocked = {int(c["addr"].rsplit(":", 1)[1]) for c in client.client_list()
               if c.get("cmd") in ("brpop", "blpop") and "b" in c.get("flags", "")}
    return all(tcp_ports(pid) & blocked for pid in pids)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a Celery queue (kombu keeps one per priority step)."""
    sep = "\x06\x16"
    return [queue, *(f"{queue}{sep}{p}" for p in (3, 6, 9))]


def unacked_tags(client: Any, queue: str) -> list[bytes]:
    """Delivery tags in kombu's shared ``unacked`` hash that belong to ``queue``: tasks a
    worker has taken but not acknowledged yet (running, or held for their countdown)."""
    tags = []
    for tag, raw in client.hscan_iter("unacked", count=1000):
        with contextlib.suppress(ValueError, TypeError, IndexError):
            _, exchange, routing_key = json.loads(raw)
            if queue in (exchange, routing_key):
                tags.append(tag)
    return tags


def drop_queue(client: Any, queue: str, extra_keys: Iterable[bytes] = ()) -> tuple[int, int]:
    """Delete a throw-away Celery queue from Redis (its lists, kombu bindings, anything naming
    it, its entries in kombu's shared ``unacked`` hash) and ``extra_keys``; returns (keys
    deleted, unacked messages removed). The shared hash is why this is not just a key scan."""
    keys = [*extra_keys, *(k.encode() for k in (*queue_keys(queue), f"_kombu.binding.{queue}",
                                               f"_kombu.binding_permanent.{queue}"))]
    keys += list(client.scan_iter(match=f"*{queue}*", count=1000))
    deleted = 0
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), 500):
        deleted += int(client.delete(*unique[i:i + 500]))
    client.zrem("_kombu.binding_deadlines", queue)
    stale = unacked_tags(client, queue)
    if stale:
        client.hdel("unacked", *stale)
        client.zrem("unacked_index", *stale)
    return deleted, len(stale)


def channel_state(client: Any, prefix: str, channel: str) -> dict[str, Any]:
    """A Slack channel's bucket as responder/plugins/notify/ratelimit.py keeps it in Redis
    ("w": incidents waiting, "n": counters), or {} before its first message."""
    raw = client.get(f"{prefix}slack:channel:{channel}")
    state: dict[str, Any] = json.loads(raw) if raw else {}
    return state


def channel_counters(state: dict[str, Any]) -> dict[str, int]:
    """The bucket's counters: joined, asked, posts, waits, digests."""
    return {k: int(v) for k, v in state.get("n", {}).items()}


TASK_ERROR = re.compile(r"Task (drift\.\w+)\[[^\]]*\] raised unexpected: (\w+)\((.*)\)\s*$",
                        re.MULTILINE)


def task_errors(log: str, *, stale_events: bool = False) -> dict[str, int]:
    """'task: exception: message' -> count, from the Celery workers' logs; with
    ``stale_events`` also the run.stale_event lines (bench/runs.py's workers log at info)."""
    counts: dict[str, int] = {}
    for task, exc, message in TASK_ERROR.findall(log):
        key = f"{task}: {exc}: {message.strip(chr(34) + chr(39))[:160]}"
        counts[key] = counts.get(key, 0) + 1
    stale = log.count('"event": "run.stale_event"') if stale_events else 0
    if stale:
        counts["run.stale_event log lines"] = stale
    return counts
