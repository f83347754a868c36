"""Prompt latency: alert accepted (202) -> the Slack prompt's chat.postMessage reaches Slack.

    .venv/bin/python bench/prompt.py            # full size (~15 minutes), writes bench/RESULTS.md
    .venv/bin/python bench/prompt.py --quick    # smoke test (~3 minutes), prints only

A real stack on the production backends, started as bench/runs.py starts it (its Stack is reused):
one ``drift-responder ingest``, two ``drift-responder worker --pool solo``, one ``drift-responder
beat``, PostgreSQL (store) and Redis (correlation, Celery broker, the Slack channel bucket), a
throw-away database, Redis key prefix and Celery queue. The Slack Web API is FakeSlack
(tests/fakes/slack_api.py), started in this process; the workers reach it through the real
slack_sdk client (SLACK_BOT_TOKEN, DRIFT_SLACK_API_URL, DRIFT_SLACK_CHANNEL), exactly as
tests/integration/test_slack_bot.py configures a stack. The playbook's first step is a
``core.approval`` (approvers ["slack:*"]): the worker's ``drift.start`` stores the approval
request, then its ``drift.notify`` task renders the incident and posts the prompt.

Measured per alert: the client's clock when the 202 arrives -> the fake's ``received_ns`` of the
chat.postMessage that carries the incident (same machine, same clock), plus the legs in between
(the ``approval.requested`` audit record's time, the incident's ``opened_at_ns``).

Phases (each alert for a new container, so each makes one incident, one run, one prompt):

- idle: N alerts posted one at a time, one every 100 ms (as briefed);
- storm: the same while ``bench/prompt_storm.py`` (a separate process) posts NDJSON batches at
  2,000 alerts/s for a fixed set of containers whose incidents were opened (and prompted) before
  the storm starts, so the storm adds load but no new prompts; its achieved rate is reported.
- the same two phases again with one alert every 1.25 s: the workers post at most
  DRIFT_SLACK_RATE_PER_SECOND (default 1) new messages per second per channel after a burst of
  10 (a token bucket in Redis, shared by the workers, Slack's own limit), so one prompt every
  100 ms in one channel queues by design beyond the burst (oldest first; a digest message names
  the waiting incidents once more than 20 wait); these phases show the latency of the machinery
  within that limit.

Per alert, two latencies: to its own prompt (the message with its buttons) and to the first
message naming it (its prompt or a digest); for the 100 ms phases also the first 10 alerts alone
(what the burst absorbs).
- a full run then repeats the 100 ms phases on a second, fresh stack with the bucket lifted
  (DRIFT_SLACK_RATE_PER_SECOND=1000; diagnostic, not a supported setting), which isolates what
  the bucket costs (``--no-compare`` skips it).

Before starting it waits (up to 15 minutes) until no other benchmark or test run is running
(``pgrep -f "bench/|pytest"``), then before each phase until the machine is nearly idle. A full run
updates only the section between ``<!-- prompt:start -->`` and ``<!-- prompt:end -->`` of
bench/RESULTS.md; ``--quick`` prints only unless ``--results PATH`` is given.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    FOREIGN_LIMIT_PCT,
    ULID,
    Report,
    Row,
    channel_counters,
    channel_state,
    say,
    stop_group,
    table,
    task_errors,
    wait_for_quiet,
    write_section,
)
from bench.runs import (  # noqa: E402
    MS,
    CpuMeter,
    Poster,
    Stack,
    check_audit,
    describe_cpu,
    flag_shared,
    histogram,
    machine_facts,
    make_alert,
    pct,
    stack_up,
)
from responder.models.times import parse_rfc3339_ns  # noqa: E402
from responder.plugins.notify.ratelimit import SlackLimits  # noqa: E402
from responder.plugins.notify.slack_blocks import DIGEST_BLOCK_ID  # noqa: E402
from tests.fakes.slack_api import FakeSlack, SlackRequest  # noqa: E402

DEFAULT_RESULTS = ROOT / "bench" / "RESULTS.md"
START_MARK = "<!-- prompt:start -->"
END_MARK = "<!-- prompt:end -->"
RULE = "Drop and execute new binary in container"
PLAYBOOK_NAME = "bench-prompt"
CHANNEL = "#drift-bench"
P50_TARGET_MS = 100.0
P99_TARGET_MS = 500.0
STORM_BASE = 0x500000  # container numbers of the storm's containers
LIMITS = SlackLimits()  # the defaults the stack runs with (burst, digest threshold...)
PLACEHOLDER = "@@SEQ@@"
BUSY_PATTERN = "bench/|pytest"

PLAYBOOK = f"""
name: {PLAYBOOK_NAME}
description: Ask in Slack first (benchmark of the prompt's latency).
match:
  rules: ["{RULE}"]
steps:
  - id: ask
    uses: core.approval
    with:
      options: [isolate, dismiss]
      approvers: ["slack:*"]
      expires_after_seconds: 86400
  - id: decided
    uses: core.note
    with:
      message: "decided {{{{ steps.ask.result.option }}}} for {{{{ incident.pod }}}}"
"""


# --------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class Config:
    quick: bool
    warmup: int            # alerts (prompts) before anything is measured
    samples: int           # measured alerts per phase
    spacing_s: float       # as briefed: one alert every 100 ms
    slow_spacing_s: float  # within the default 1 message/s/channel bucket
    storm_containers: int  # containers the storm posts for (incidents opened beforehand)
    storm_rate: float      # alerts/s offered by the storm
    storm_batch: int       # alerts per NDJSON request
    storm_connections: int
    storm_settle_s: float  # storm running before the first measured alert
    compare: bool          # second stack with the bucket lifted (diagnostic)

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(quick=True, warmup=3, samples=15, spacing_s=0.1, slow_spacing_s=1.25,
                       storm_containers=20, storm_rate=2000, storm_batch=200,
                       storm_connections=2, storm_settle_s=3, compare=True)
        return cls(quick=False, warmup=5, samples=100, spacing_s=0.1, slow_spacing_s=1.25,
                   storm_containers=100, storm_rate=2000, storm_batch=200,
                   storm_connections=2, storm_settle_s=5, compare=True)


def fmt_ms(ns: float) -> str:
    value = ns / MS
    if abs(value) >= 10_000:
        return f"{value / 1000:,.1f} s"
    return f"{value:,.1f} ms"


# ---------------------------------------------------------------------------- waiting for quiet

def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def _ancestors(pid: int) -> set[int]:
    pids = set()
    while pid > 1:
        pids.add(pid)
        pid = _parent(pid)
    return pids


def busy_processes() -> list[str]:
    """Other benchmarks and test runs (``pgrep -f "bench/|pytest"``): not this process, its
    parents (a shell that started it) or its children (the storm generator)."""
    found = subprocess.run(["pgrep", "-af", BUSY_PATTERN], capture_output=True, text=True,
                           check=False).stdout.splitlines()
    me = os.getpid()
    mine = _ancestors(me)
    busy = []
    for line in found:
        pid, _, cmd = line.partition(" ")
        if not pid.isdigit() or int(pid) in mine or me in _ancestors(int(pid)):
            continue
        if cmd.startswith("pgrep "):
            continue
        busy.append(f"{pid} {cmd[:100]}")
    return busy


def wait_for_other_work(max_wait_s: float = 900.0, poll_s: float = 15.0) -> str:
    deadline = time.monotonic() + max_wait_s
    waited = False
    while True:
        busy = busy_processes()
        if not busy:
            return "no other benchmark or test run was running" + (
                " (after waiting for one)" if waited else "")
        if time.monotonic() > deadline:
            say(f"! still running after {max_wait_s / 60:.0f} min: {busy}; measuring anyway")
            return f"other work still running after {max_wait_s / 60:.0f} min: {busy}"
        say(f"waiting for other work to finish: {'; '.join(busy)}")
        waited = True
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------ the stack

class PromptStack(Stack):
    """bench/runs.py's Stack with this benchmark's names, playbook and Slack settings."""

    label = "prompt"
    playbook_name = PLAYBOOK_NAME
    playbook = PLAYBOOK

    def __init__(self, workdir: Path, slack: FakeSlack, extra_env: dict[str, str]) -> None:
        env = {"SLACK_BOT_TOKEN": str(slack.token), "DRIFT_SLACK_API_URL": slack.base_url,
               "DRIFT_SLACK_CHANNEL": CHANNEL, **extra_env}
        super().__init__(workdir, beat=True, extra_env=env)
        for name in ("SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN"):
            self.env.pop(name, None)


@contextlib.contextmanager
def running_stack(slack: FakeSlack, extra_env: dict[str, str],
                  keep_logs: Path | None) -> Iterator[PromptStack]:
    with tempfile.TemporaryDirectory(prefix="drift-bench-prompt-") as tmp, \
            stack_up(PromptStack(Path(tmp), slack, extra_env), keep_logs) as stack:
        yield stack


# ------------------------------------------------------------------------------ the prompts

class Prompts:
    """incident id -> the first successful chat.postMessage that names it (from the fake's log)."""

    def __init__(self, slack: FakeSlack) -> None:
        self.slack = slack
        self.seen = 0
        self.first: dict[str, SlackRequest] = {}  # its own prompt (header, buttons)
        self.mentioned: dict[str, SlackRequest] = {}  # the first message naming it (or digest)
        self.posts: list[SlackRequest] = []
        self.digests: list[SlackRequest] = []
        self.updates: list[SlackRequest] = []

    def scan(self) -> None:
        requests = self.slack.requests
        for r in requests[self.seen:]:
            if r.status is None:  # not answered yet: look again next time
                break
            self.seen += 1
            if r.method == "chat.update":
                self.updates.append(r)
            if r.method != "chat.postMessage" or not r.ok:
                continue
            self.posts.append(r)
            digest = DIGEST_BLOCK_ID.encode() in r.body
            if digest:
                self.digests.append(r)
            for match in ULID.findall(r.body):
                self.mentioned.setdefault(match.decode(), r)
                if not digest:
                    self.first.setdefault(match.decode(), r)

    def wait(self, incidents: Sequence[str], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while True:
            self.scan()
            missing = [i for i in incidents if i not in self.first]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(missing)} of {len(incidents)} prompts ({what}) not "
                                   f"posted within {timeout_s:.0f} s")
            if time.monotonic() - last > 15:
                say(f"  ... {len(incidents) - len(missing)}/{len(incidents)} prompts ({what}) "
                    "posted")
                last = time.monotonic()
            time.sleep(0.05)


# ------------------------------------------------------------------------------------ the storm

class Storm:
    def __init__(self, stack: PromptStack, cfg: Config, workdir: Path) -> None:
        self.stack, self.cfg = stack, cfg
        self.template = workdir / "storm.template"
        lines = []
        for c in range(cfg.storm_containers):
            alert = make_alert(STORM_BASE + c)
            alert["uuid"] = f"00000000-0000-4000-9{c:03x}-{PLACEHOLDER}"
            lines.append(json.dumps(alert, separators=(",", ":")))
        self.template.write_text("\n".join(lines))
        self.out = workdir / "storm.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.result: dict[str, Any] = {}

    def start(self) -> None:
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "bench" / "prompt_storm.py"),
                 "--url", f"{self.stack.url}/v1/falco", "--token", self.stack.token,
                 "--template", str(self.template), "--rate", str(self.cfg.storm_rate),
                 "--batch", str(self.cfg.storm_batch),
                 "--concurrency", str(self.cfg.storm_connections)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else -1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return self.result
        stop_group(self.proc, 60)
        text = self.out.read_text(errors="replace")
        for line in text.splitlines():
            if line.startswith("BENCH_JSON "):
                self.result = json.loads(line[len("BENCH_JSON "):])
        if not self.result:
            raise RuntimeError(f"the storm generator printed no result:\n{text[-2000:]}")
        self.proc = None
        return self.result

    def rate_between(self, start_ns: int, end_ns: int) -> float:
        """Alerts/s the storm had accepted between two wall-clock times (whole seconds)."""
        per_second = self.result.get("per_second", [])
        t0 = int(self.result.get("started_ns", 0))
        a = max(0, int((start_ns - t0) / 1e9) + 1)
        b = min(len(per_second), int((end_ns - t0) / 1e9))
        if b <= a:
            return float("nan")
        return float(sum(per_second[a:b])) / (b - a)


# ----------------------------------------------------------------------------------- measuring

@dataclasses.dataclass
class Sample:
    incident: str
    sent_ns: int
    accepted_ns: int
    opened_ns: int = 0
    requested_ns: int = 0  # approval.requested audit record
    posted_ns: int = 0     # its own prompt's chat.postMessage received by the fake
    mentioned_ns: int = 0  # the first chat.postMessage naming it (its prompt or a digest)

    @property
    def latency(self) -> int:
        return self.posted_ns - self.accepted_ns

    @property
    def mention_latency(self) -> int:
        return self.mentioned_ns - self.accepted_ns


@dataclasses.dataclass
class Phase:
    name: str
    spacing_s: float
    samples: list[Sample]
    started_ns: int
    posted_ns: int        # the last measured alert's 202
    done_ns: int          # the last prompt
    cpu: dict[str, float]
    cpu_text: str
    meter: CpuMeter
    storm_rate: float | None = None
    attempt: int = 1
    notify_updates: int | None = None  # incidents row updates (claim + release/final)
    bucket: dict[str, int] = dataclasses.field(default_factory=dict)  # the channel's counters
    digests: int = 0


def approval_times(stack: PromptStack, incidents: list[str]) -> dict[str, int]:
    rows = stack.db.execute(
        "SELECT incident_id, time FROM audit_log WHERE incident_id = ANY(%s) "
        "AND kind = 'approval.requested' ORDER BY seq", (incidents,)).fetchall()
    out: dict[str, int] = {}
    for incident, stamp in rows:
        out.setdefault(str(incident), parse_rfc3339_ns(stamp))
    return out


def run_phase(stack: PromptStack, poster: Poster, prompts: Prompts, *, name: str, n: int,
              spacing_s: float, base: int, roles: dict[int, str], rate_per_s: float) -> Phase:
    say(f"\n{name}: {n} alerts for new containers, one every {spacing_s * 1000:.0f} ms")
    meter = CpuMeter(roles)
    samples: list[Sample] = []
    alerts = [make_alert(base + i) for i in range(n)]
    counters = bucket_counters(stack)
    prompts.scan()
    digests = len(prompts.digests)
    meter.start()
    started_ns = time.time_ns()
    t0 = time.monotonic()
    for i, alert in enumerate(alerts):
        delay = t0 + i * spacing_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent, accepted, incident = poster.one(alert)
        samples.append(Sample(incident, sent, accepted))
    posted_ns = time.time_ns()
    ids = [s.incident for s in samples]
    if len(set(ids)) != n:
        raise RuntimeError(f"{n} alerts for new containers gave {len(set(ids))} incidents")
    # Every prompt is due within n / rate seconds when they queue at the channel bucket.
    prompts.wait(ids, 60 + 2 * n / rate_per_s, name)
    cpu = meter.stop()
    requested = approval_times(stack, ids)
    opened = dict(stack.db.execute("SELECT id, opened_at_ns FROM incidents WHERE id = ANY(%s)",
                                   (ids,)).fetchall())
    for s in samples:
        s.posted_ns = prompts.first[s.incident].received_ns
        s.mentioned_ns = prompts.mentioned[s.incident].received_ns
        s.requested_ns = requested.get(s.incident, 0)
        s.opened_ns = int(opened[s.incident])
    done_ns = max(s.posted_ns for s in samples)
    after = bucket_counters(stack)
    return Phase(name, spacing_s, samples, started_ns, posted_ns, done_ns, cpu,
                 describe_cpu(cpu, meter), meter,
                 bucket={k: v - counters.get(k, 0) for k, v in after.items()},
                 digests=len(prompts.digests) - digests)


def bucket_counters(stack: PromptStack) -> dict[str, int]:
    """The channel's counters in Redis (responder.plugins.notify.ratelimit): joined (first asks),
    asked (every notification that asked the bucket for a first message), posts, waits,
    digests."""
    return channel_counters(channel_state(stack.redis, stack.prefix, CHANNEL))


def latency_rows(report: Report, label: str, what: str, lat: list[int], *,
                 targets: bool) -> None:
    p50, p99 = pct(lat, 50), pct(lat, 99)
    tgt50 = f"< {P50_TARGET_MS:.0f} ms" if targets else "-"
    tgt99 = f"< {P99_TARGET_MS:.0f} ms" if targets else "-"
    report.add(Row(f"{label}: 202 received -> {what}, p50", f"{fmt_ms(p50)} (n={len(lat)})",
                   tgt50, p50 < P50_TARGET_MS * MS if targets else None))
    report.add(Row(f"{label}: 202 received -> {what}, p99",
                   f"{fmt_ms(p99)} (max {fmt_ms(max(lat))})", tgt99,
                   p99 < P99_TARGET_MS * MS if targets else None))


def report_phase(report: Report, phase: Phase, label: str, *, targets: bool,
                 burst: int = 0) -> None:
    s = phase.samples
    lat = [x.latency for x in s]
    mention = [x.mention_latency for x in s]
    p50, p99 = pct(lat, 50), pct(lat, 99)
    n = len(s)
    latency_rows(report, label, "its own prompt's chat.postMessage received", lat,
                 targets=targets)
    if any(x.mentioned_ns < x.posted_ns for x in s):
        latency_rows(report, label, "first chat.postMessage naming it (its prompt, or a "
                     "digest)", mention, targets=targets)
    if burst and n > burst:
        latency_rows(report, f"{label}, its first {burst} alerts (the bucket's burst)",
                     "its own prompt's chat.postMessage received",
                     [x.latency for x in s[:burst]], targets=targets)
    start_leg = [x.requested_ns - x.accepted_ns for x in s if x.requested_ns]
    notify_leg = [x.posted_ns - x.requested_ns for x in s if x.requested_ns]
    from_open = [x.posted_ns - x.opened_ns for x in s]
    rtt = [x.accepted_ns - x.sent_ns for x in s]
    early = sum(1 for v in start_leg if v < 0)
    spacing = [b.sent_ns - a.sent_ns for a, b in itertools.pairwise(s)]
    posts = sorted(x.posted_ns for x in s)
    gaps = [b - a for a, b in itertools.pairwise(posts)]
    order = [x.incident for x in sorted(s, key=lambda x: x.posted_ns)]
    inversions = sum(1 for i, inc in enumerate(order) if inc != s[i].incident)
    slow = sorted(s, key=lambda x: x.latency)[-3:]
    parts = [
        f"{phase.name}: {n} alerts, measured spacing median "
        f"{fmt_ms(statistics.median(spacing)) if spacing else '-'}",
        f"latency p50 {fmt_ms(p50)} / p90 {fmt_ms(pct(lat, 90))} / p99 {fmt_ms(p99)} / max "
        f"{fmt_ms(max(lat))}",
        f"legs (p50 / p99): 202 -> `approval.requested` (drift.start) "
        f"{fmt_ms(pct(start_leg, 50))} / {fmt_ms(pct(start_leg, 99))} ({early} before the 202), "
        f"`approval.requested` -> chat.postMessage (drift.notify) "
        f"{fmt_ms(pct(notify_leg, 50))} / {fmt_ms(pct(notify_leg, 99))}",
        f"incident opened_at (intake receive) -> chat.postMessage {fmt_ms(pct(from_open, 50))} / "
        f"{fmt_ms(pct(from_open, 99))}",
        f"request sent -> 202 {fmt_ms(pct(rtt, 50))} / {fmt_ms(pct(rtt, 99))}",
        f"prompts arrived at the fake {(phase.done_ns - phase.started_ns) / 1e9:.1f} s after the "
        f"first alert (last 202 after {(phase.posted_ns - phase.started_ns) / 1e9:.1f} s); gap "
        f"between consecutive prompts median {fmt_ms(statistics.median(gaps)) if gaps else '-'}"
        f", min {fmt_ms(min(gaps)) if gaps else '-'}; {inversions} of {n} prompts posted out of "
        f"alert order",
        "slowest: " + ", ".join(
            f"#{s.index(x) + 1} {fmt_ms(x.latency)} (start leg "
            f"{fmt_ms(x.requested_ns - x.accepted_ns)}, notify leg "
            f"{fmt_ms(x.posted_ns - x.requested_ns)})" for x in reversed(slow)),
        phase.cpu_text,
    ]
    if phase.storm_rate is not None:
        parts.insert(1, f"storm accepted {phase.storm_rate:,.0f} alerts/s meanwhile")
    if any(x.mentioned_ns < x.posted_ns for x in s):
        parts.insert(3, f"first message naming the alert's incident (its prompt, or a digest) "
                     f"p50 {fmt_ms(pct(mention, 50))} / p90 {fmt_ms(pct(mention, 90))} / p99 "
                     f"{fmt_ms(pct(mention, 99))} / max {fmt_ms(max(mention))}; "
                     f"{sum(1 for x in s if x.mentioned_ns < x.posted_ns)} of {n} were named "
                     f"in a digest before their own prompt")
    if phase.bucket:
        b = phase.bucket
        parts.insert(-1, f"the channel's bucket was asked {b.get('asked', 0):,} times for "
                     f"{b.get('posts', 0):,} first messages ({b.get('asked', 0) / max(1, n):.2f} "
                     f"per prompt; {b.get('waits', 0):,} refusals, each re-queueing the "
                     f"notification for the time until its turn); {phase.digests} digest "
                     "message(s)")
    if phase.notify_updates is not None:
        parts.insert(-1, f"{phase.notify_updates:,} `incidents` row updates (a claim and the "
                     "posted ts per prompt; a refused notification no longer touches the "
                     "database)")
    if phase.attempt > 1:
        parts.insert(1, f"figures from attempt {phase.attempt} (during attempt 1 other work "
                     "used the machine)")
    report.note("; ".join(parts))
    report.note(f"{phase.name}: distribution of 202 -> chat.postMessage (ms: count): "
                f"{histogram([v / MS for v in lat])}")


def warm_up(stack: PromptStack, poster: Poster, prompts: Prompts, cfg: Config, base: int,
            rate_per_s: float) -> None:
    for i in range(cfg.warmup):
        _, _, incident = poster.one(make_alert(base + i))
        prompts.wait([incident], 30, "warm-up")
        time.sleep(1.0 / rate_per_s + 0.1)  # the channel bucket has a token again


def open_storm_incidents(stack: PromptStack, poster: Poster, prompts: Prompts, cfg: Config,
                         rate_per_s: float) -> list[str]:
    n = cfg.storm_containers
    say(f"\nopening the storm's {n} incidents (one alert each) and waiting for their prompts "
        f"(~{n / rate_per_s:.0f} s at {rate_per_s:g} message/s in the channel)")
    ids = poster.batch([make_alert(STORM_BASE + c) for c in range(n)])
    ids = list(dict.fromkeys(ids))
    if len(ids) != n:
        raise RuntimeError(f"{n} storm containers gave {len(ids)} incidents")
    prompts.wait(ids, 60 + 2 * n / rate_per_s, "storm incidents")
    time.sleep(refill_s(rate_per_s))  # let the bucket refill
    return ids


def refill_s(rate_per_s: float) -> float:
    """Seconds an empty channel bucket takes to fill up (its burst) again."""
    return LIMITS.burst / rate_per_s + 0.5


def storm_counts(stack: PromptStack, ids: list[str]) -> tuple[int, int]:
    row = stack.db.execute("SELECT count(*), coalesce(sum(alert_count), 0) FROM incidents "
                           "WHERE id = ANY(%s)", (ids,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def settle(cfg: Config, *, storm_running: bool = False) -> None:
    """Without our storm running: wait (bounded) until the machine is nearly idle. Other
    benchmarks and test runs are waited for only before starting (and before the storm): waiting
    for them mid-phase would leave our stack (and storm) loading the machine they measure on."""
    if not storm_running:
        wait_for_quiet(20 if cfg.quick else 120)


def incident_updates(stack: PromptStack) -> int:
    row = stack.db.execute("SELECT n_tup_upd FROM pg_stat_user_tables "
                           "WHERE relname = 'incidents'").fetchone()
    return int(row[0]) if row else 0


def measure(stack: PromptStack, poster: Poster, prompts: Prompts, cfg: Config, *, name: str,
            spacing_s: float, bases: Iterator[int], roles: dict[int, str], rate_per_s: float,
            storm_running: bool) -> Phase:
    """A phase, measured again (once) when other work used the machine meanwhile."""
    for attempt in (1, 2):
        settle(cfg, storm_running=storm_running)
        if not storm_running:
            time.sleep(11)  # earlier updates reach pg_stat_user_tables first (see below)
        before = incident_updates(stack)
        phase = run_phase(stack, poster, prompts, name=name, n=cfg.samples, spacing_s=spacing_s,
                          base=next(bases), roles=roles, rate_per_s=rate_per_s)
        phase.attempt = attempt
        if not storm_running:
            time.sleep(11)  # PostgreSQL flushes an idle backend's table counters within 10 s
            phase.notify_updates = incident_updates(stack) - before
        time.sleep(refill_s(rate_per_s))  # the channel bucket is full again
        foreign = phase.cpu.get("other", 0.0)
        if foreign <= FOREIGN_LIMIT_PCT or attempt == 2:
            return phase
        say(f"  (work foreign to the benchmark used {foreign:.0f}% of a core during the phase; "
            "measuring it again)")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------- the phases

def bench_stack(stack: PromptStack, slack: FakeSlack, cfg: Config, report: Report,
                workdir: Path, *, rate_per_s: float, diagnostic: bool) -> None:
    prompts = Prompts(slack)
    poster = Poster(stack)
    storm = Storm(stack, cfg, workdir)
    label = "Bucket lifted (diagnostic)" if diagnostic else ""
    try:
        warm_up(stack, poster, prompts, cfg, 0x100000, rate_per_s)
        storm_ids = open_storm_incidents(stack, poster, prompts, cfg, rate_per_s)
        before_storm = storm_counts(stack, storm_ids)
        roles = stack.roles()
        phases: list[tuple[Phase, str]] = []
        spacings = [cfg.spacing_s] if diagnostic else [cfg.slow_spacing_s, cfg.spacing_s]
        bases = itertools.count(0x200000, 0x10000)
        suffix = " (bucket lifted)" if diagnostic else ""
        for spacing in spacings:
            phase = measure(stack, poster, prompts, cfg,
                            name=f"idle, 1 alert / {spacing * 1000:.0f} ms{suffix}",
                            spacing_s=spacing, bases=bases, roles=roles, rate_per_s=rate_per_s,
                            storm_running=False)
            phases.append((phase, "idle"))
        # Do not start a 2,000 alerts/s storm on top of someone else's benchmark or tests.
        wait_for_other_work(300, poll_s=10)
        settle(cfg)
        # The storm: a fixed set of containers with open (and prompted) incidents.
        prompts.scan()
        posts_before, updates_before = len(prompts.posts), len(prompts.updates)
        storm.start()
        storm_roles = {**roles, storm.pid: "storm generator"}
        time.sleep(cfg.storm_settle_s)
        if not storm.alive():
            raise RuntimeError(f"the storm generator exited:\n{storm.out.read_text()[-2000:]}")
        storm_phases: list[Phase] = []
        try:
            for spacing in spacings:
                phase = measure(stack, poster, prompts, cfg,
                                name=f"storm, 1 alert / {spacing * 1000:.0f} ms{suffix}",
                                spacing_s=spacing, bases=bases, roles=storm_roles,
                                rate_per_s=rate_per_s, storm_running=True)
                storm_phases.append(phase)
                if not storm.alive():
                    raise RuntimeError("the storm generator exited during the phase:\n"
                                       f"{storm.out.read_text()[-2000:]}")
        finally:
            result = storm.stop()
        for phase in storm_phases:
            phase.storm_rate = storm.rate_between(phase.started_ns, phase.done_ns)
            phases.append((phase, "storm"))
        prompts.scan()
        new_posts = prompts.posts[posts_before:]
        storm_set = set(storm_ids)
        storm_prompts = sum(1 for r in new_posts
                            if {m.decode() for m in ULID.findall(r.body)} & storm_set)
        measured = len(new_posts) - storm_prompts
        after_storm = storm_counts(stack, storm_ids)

        # -- rows, as briefed first -------------------------------------------------------
        by_spacing = {}
        for phase, kind in phases:
            by_spacing[(kind, phase.spacing_s)] = phase
        for kind in ("idle", "storm"):
            phase = by_spacing[(kind, cfg.spacing_s)]
            what = ("Idle" if kind == "idle" else
                    f"Under a {cfg.storm_rate:,.0f} alerts/s storm")
            head = (f"{label}: " if label else "") + f"{what}, 1 alert / " \
                f"{cfg.spacing_s * 1000:.0f} ms"
            report_phase(report, phase, head, targets=not diagnostic,
                         burst=0 if diagnostic else int(LIMITS.burst))
        if not diagnostic:
            for kind in ("idle", "storm"):
                phase = by_spacing[(kind, cfg.slow_spacing_s)]
                what = ("Idle" if kind == "idle" else
                        f"Under a {cfg.storm_rate:,.0f} alerts/s storm")
                report_phase(report, phase, f"{what}, 1 alert / {cfg.slow_spacing_s:g} s "
                             "(within the 1 message/s/channel bucket)", targets=True)
        elapsed = float(result.get("elapsed_s", 0.0))
        achieved = float(result.get("alerts_per_s", 0.0))
        during = [p.storm_rate for p in storm_phases if p.storm_rate == p.storm_rate]
        report.add(Row((f"{label}: " if label else "") +
                       "Storm: achieved rate (accepted alerts / s, whole storm; during the "
                       "measured phases)",
                       f"{achieved:,.0f} alerts/s over {elapsed:.0f} s ("
                       + ", ".join(f"{r:,.0f}" for r in during) + " alerts/s)",
                       f"{cfg.storm_rate:,.0f} alerts/s offered",
                       None if diagnostic else achieved >= 0.97 * cfg.storm_rate))
        ok_counts = (after_storm[0] == cfg.storm_containers and
                     after_storm[1] - before_storm[1] == int(result.get("accepted", -1)))
        report.note(
            f"storm{' (bucket lifted)' if diagnostic else ''}: {result.get('accepted', 0):,} of "
            f"{result.get('sent', 0):,} alerts accepted in {result.get('batches', 0)} NDJSON "
            f"requests of {cfg.storm_batch} over {cfg.storm_connections} keep-alive connections "
            f"in {elapsed:.1f} s (offered {cfg.storm_rate:,.0f}/s; statuses "
            f"{result.get('statuses')}; {result.get('skipped_slots', 0)} batch slots dropped "
            f"because the generator was > 1 s behind); per-batch latency p50 "
            f"{result.get('batch_p50_s', 0) * 1000:.0f} / p99 "
            f"{result.get('batch_p99_s', 0) * 1000:.0f} / max "
            f"{result.get('batch_max_s', 0) * 1000:.0f} ms; the storm's {cfg.storm_containers} "
            f"incidents went from {before_storm[1]:,} to {after_storm[1]:,} alerts "
            f"({'exactly the accepted count, no new incident' if ok_counts else 'MISMATCH'}); "
            f"chat.postMessage during the storm: {len(new_posts)} ({measured} for the measured "
            f"alerts' incidents, {storm_prompts} for the storm's incidents), chat.update: "
            f"{len(prompts.updates) - updates_before}"
            + (f"; failures {result.get('failures')}" if result.get("failures") else ""))
        errors = task_errors("".join(w.log() for w in stack.workers), stale_events=True)
        report.note(f"worker task errors{' (bucket lifted)' if diagnostic else ''}: "
                    f"{errors or 'none'}; Slack calls in all: "
                    f"{dict(collections.Counter(r.method for r in slack.requests))}")
        for phase, _ in phases:
            flag_shared(report, phase.name, phase.cpu, phase.meter)
        if not diagnostic:
            check_audit(stack, report)
    finally:
        if storm.alive():
            with contextlib.suppress(Exception):
                storm.stop()
        poster.close()


# ------------------------------------------------------------------------------------- results

def section(cfg: Config, report: Report, started: dt.datetime, quiet_note: str) -> str:
    lines = [
        START_MARK,
        "## Slack prompt latency",
        "",
        f"Generated by `.venv/bin/python bench/prompt.py{' --quick' if cfg.quick else ''}` on "
        f"{started:%Y-%m-%d %H:%M} UTC ({machine_facts()}).",
        "A real stack on the production backends: one `drift-responder ingest`, two "
        "`drift-responder worker --pool solo`, one `drift-responder beat`, PostgreSQL (store) and "
        "Redis (correlation, Celery broker, Slack channel bucket), on the same 2 cores as the "
        "load; the Slack Web API is tests/fakes/slack_api.py's FakeSlack in the benchmark "
        "process, reached by the workers' real slack_sdk client; a playbook whose first step is "
        "a `core.approval` (approvers `[\"slack:*\"]`); default settings, one channel: "
        f"new messages {LIMITS.rate_per_second:g}/s per channel with a burst of "
        f"{LIMITS.burst:g} (a token bucket in Redis shared by the workers), prompts waiting in "
        f"a channel served oldest first, a digest message naming the waiting incidents once "
        f"more than {LIMITS.digest_after} wait (then at most one per "
        f"{LIMITS.digest_interval_s:g} s), every incident still getting its own prompt in its "
        "turn (responder/plugins/notify/ratelimit.py), unless a row says otherwise.",
        "",
        "Two latencies per alert: to **its own prompt** (the message with its approval "
        "buttons), and to **the first message naming it** (its prompt, or a digest). One "
        "prompt every 100 ms in one channel is ten times what Slack accepts there (about one "
        "message a second per channel): beyond the burst, its own prompts queue by design, and "
        "the digest is what reaches the channel early.",
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
        f"- Before starting: {quiet_note}; before each phase without the storm the machine is "
        "nearly idle (bench/runs.py's wait_for_quiet); the storm starts only once no other "
        "benchmark or test run is running (`pgrep -f \"bench/|pytest\"`, waiting up to 5 "
        "minutes).",
        f"- Warm-up: {cfg.warmup} alerts, each waited for until its prompt was posted. Then the "
        f"storm's {cfg.storm_containers} containers get one alert each (one NDJSON request): "
        "their incidents open, their runs ask for approval and their prompts are posted (at the "
        "channel's rate) before anything is measured.",
        f"- Each phase: {cfg.samples} single-alert requests (JSON, keep-alive connection), each "
        "for a new container, sent on a fixed schedule (one every 100 ms, or every "
        f"{cfg.slow_spacing_s:g} s) whatever the previous prompt did. Latency = the fake's "
        "`received_ns` of the incident's own prompt (the first successful chat.postMessage "
        "naming the incident that is not a digest), or of the first one naming it at all "
        "(digests included) - the client's `time.time_ns()` right after the 202. FIFO is by "
        "the time a prompt first asks its channel's bucket; within the burst two workers may "
        "post two prompts a few ms apart in either order. Legs: the `approval.requested` "
        "audit record's `time` (written by drift.start's transaction in a worker); "
        "`opened_at_ns` (the intake's receive time). Percentiles are nearest-rank.",
        f"- Storm: bench/prompt_storm.py, a separate process, posts NDJSON batches of "
        f"{cfg.storm_batch} alerts (distinct uuids) for the {cfg.storm_containers} storm "
        f"containers on a fixed schedule of {cfg.storm_rate:,.0f} alerts/s over "
        f"{cfg.storm_connections} keep-alive connections; measuring starts "
        f"{cfg.storm_settle_s:g} s after it; the achieved rate counts accepted alerts; the "
        "storm's incidents are checked afterwards (same 100 incidents, alert counts grown by "
        "exactly what was accepted), and so is the absence of other Slack messages.",
        "- \"Bucket lifted (diagnostic)\": a second, fresh stack with "
        "DRIFT_SLACK_RATE_PER_SECOND=1000, the 100 ms phases only; not a supported setting "
        "(Slack allows about one message per second per channel), it shows what the bucket "
        "costs. Between phases the benchmark waits until the bucket is full again "
        f"({LIMITS.burst:g} tokens).",
        "- drift.notify executions: the channel's counters kept with its bucket in Redis "
        "(every notification that asked for a first message, refusals, posts, digests), read "
        "before and after each phase; and (idle phases) `pg_stat_user_tables.n_tup_upd` of "
        "`incidents` in the throw-away database, read 11 s after the previous activity "
        "(PostgreSQL flushes an idle backend's counters within 10 s) and 11 s after the phase: a "
        "posted prompt updates the row twice (the claim, then the ts); a refused notification "
        "is answered by the bucket before any database work.",
        "- CPU figures are per process from /proc between a phase's first alert and its last "
        "prompt; a phase during which work foreign to the benchmark used more than 25% of a "
        "core is measured once more.",
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small phases (~3 minutes)")
    parser.add_argument("--samples", type=int, default=None, help="alerts per phase")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"update the prompt section of this file (default {DEFAULT_RESULTS} "
                             "for a full run, nowhere for --quick)")
    parser.add_argument("--no-wait", action="store_true",
                        help="do not wait for other benchmarks / test runs to finish")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the diagnostic stack with the bucket lifted")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy the services' logs here before cleaning up")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="DRIFT_X=VALUE", help="extra setting for every service "
                        "(diagnosis; never writes bench/RESULTS.md by default)")
    args = parser.parse_args()

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds: the storm, the stack, the database, Redis

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    extra_env = dict(item.split("=", 1) for item in args.settings)
    cfg = Config.make(args.quick)
    if args.samples is not None:
        cfg = dataclasses.replace(cfg, samples=args.samples)
    if args.no_compare:
        cfg = dataclasses.replace(cfg, compare=False)
    results = args.results
    if results is None and not args.quick and not extra_env and args.samples is None:
        results = DEFAULT_RESULTS

    quiet_note = "not checked (--no-wait)" if args.no_wait else wait_for_other_work()
    started = dt.datetime.now(dt.UTC)
    report = Report()
    failed = False
    t_start = time.monotonic()
    rate = float(extra_env.get("DRIFT_SLACK_RATE_PER_SECOND", 1.0))
    try:
        with FakeSlack() as slack:
            slack.add_channel(CHANNEL)
            with tempfile.TemporaryDirectory(prefix="drift-bench-prompt-work-") as work, \
                    running_stack(slack, extra_env, args.keep_logs) as stack:
                say(f"stack up in {time.monotonic() - t_start:.1f} s: ingest {stack.url} (pid "
                    f"{stack.ingest.pid}), workers {[w.pid for w in stack.workers]}, beat "
                    f"{stack.beat.pid if stack.beat else 'none'}; database {stack.dbname}, "
                    f"queue {stack.queue}; fake Slack {slack.base_url}")
                bench_stack(stack, slack, cfg, report, Path(work), rate_per_s=rate,
                            diagnostic=False)
            if slack.errors:
                raise RuntimeError(f"the fake Slack failed: {slack.errors[:3]}")
        if cfg.compare and not extra_env:
            lifted = {"DRIFT_SLACK_RATE_PER_SECOND": "1000"}
            with FakeSlack() as slack:
                slack.add_channel(CHANNEL)
                with tempfile.TemporaryDirectory(prefix="drift-bench-prompt-work-") as work, \
                        running_stack(slack, lifted, None) as stack:
                    say(f"\nsecond stack (bucket lifted: {lifted}) up")
                    bench_stack(stack, slack, cfg, report, Path(work), rate_per_s=1000.0,
                                diagnostic=True)
    except Exception as exc:
        failed = True
        report.add(Row("benchmark", f"failed: {type(exc).__name__}: "
                                    f"{(str(exc).splitlines() or [''])[0]}", "runs", False))
        say(str(exc))
    say(f"\n(took {time.monotonic() - t_start:.0f} s)\n")
    say("\n".join(table(report.rows)))
    if results is not None and not failed:
        write_section(results, section(cfg, report, started, quiet_note), START_MARK, END_MARK)
        say(f"\nupdated the prompt section of {results}")
    elif results is None:
        say("\n(not written to a file: pass --results PATH, or run the full benchmark with "
            "default options)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
