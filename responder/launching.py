"""`drift-responder up`: every process of the responder on one machine, supervised together.

For trying it out and for small single-host installs: ingest, worker, beat, the Slack bot when
Slack is configured (else prompts print through the console notifier in the worker's output and
decisions come from `drift-responder approve`), and the node agent when this process may read
the host's /proc (root). Each child is our own command with a fixed argv; their output is
prefixed with their name; when one exits the others are stopped, so a half-running responder is
never mistaken for a working one.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from responder.settings import Settings
from responder.stopping import StopSignals


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    reader: threading.Thread | None = None


@dataclass
class Plan:
    """What `up` will start, and how to reach it."""

    children: list[Child]
    env: dict[str, str]
    ingest_url: str
    token: str | None
    agent_node: str | None
    notes: list[str] = field(default_factory=list)


def agent_possible() -> str | None:
    """None when a node agent can run here, else why not."""
    if os.geteuid() != 0:
        return "not root: the agent reads other processes' /proc entries and overlay layers"
    if not Path("/proc/self/mountinfo").exists():
        return "no /proc"
    return None


def describe_backends(settings: Settings) -> str:
    store = "PostgreSQL" if (settings.database_url or "").startswith("postgresql") else \
        "SQLite" if settings.database_url is None or settings.database_url.startswith("sqlite") \
        else (settings.database_url.split(":", 1)[0])
    where = f" at {settings.data_dir / 'drift.db'}" if settings.database_url is None else ""
    correlation = "Redis" if settings.redis_url else "the SQL store (embedded)"
    broker = "Redis" if (settings.broker_url or settings.redis_url) else \
        f"embedded SQLite at {settings.data_dir / 'broker.db'}"
    kind = "embedded default" if not settings.redis_url and settings.database_url is None \
        else "configured servers"
    return (f"backends ({kind}): store={store}{where}, correlation={correlation}, "
            f"broker={broker}")


def plan(settings: Settings, *, host: str, port: int, node: str | None, with_agent: bool | None,
         bot_port: int, environ: Mapping[str, str] | None = None) -> Plan:
    env = dict(environ if environ is not None else os.environ)
    token = settings.ingest_token.get_secret_value() if settings.ingest_token else None
    notes: list[str] = []
    if token is None:
        # Local use: a fresh token for this run rather than an unauthenticated intake.
        token = secrets.token_urlsafe(24)
        env["DRIFT_INGEST_TOKEN"] = token
        notes.append("DRIFT_INGEST_TOKEN was not set: this run's token is printed below")
    own = [sys.executable, "-m", "responder"]
    children = [Child("ingest", [*own, "ingest", "--host", host, "--port", str(port)]),
                Child("worker", [*own, "worker", "--pool", "solo"]),
                Child("beat", [*own, "beat"])]
    if settings.slack_bot_token is not None and (settings.slack_signing_secret is not None or
                                                 settings.slack_app_token is not None):
        children.append(Child("bot", [*own, "bot", "--host", host, "--port", str(bot_port)]))
    else:
        notes.append("Slack is not configured: prompts print in the worker's output (console "
                     "notifier); decide with `drift-responder approve`")
    why_not = agent_possible()
    agent_node = None
    if with_agent is None:
        with_agent = why_not is None
    if with_agent:
        agent_node = node or socket.gethostname()
        children.append(Child("agent", [*own, "agent", "--node", agent_node]))
    elif why_not:
        notes.append(f"no node agent ({why_not}): evidence steps use the exec fallback")
    return Plan(children, env, f"http://{host}:{port}", token, agent_node, notes)


class Launcher:
    """Start a plan's children, forward their output, stop them all together."""

    def __init__(self, plan: Plan, *, out: IO[str] | None = None,
                 echo: Callable[[str, str], bool] | None = None) -> None:
        self.plan = plan
        self.out = out or sys.stdout
        self.echo = echo or (lambda _name, _line: True)
        self._lock = threading.Lock()

    def start(self) -> None:
        for child in self.plan.children:
            # Our own command with a fixed argv: no shell, nothing from alerts.
            child.process = subprocess.Popen(  # noqa: S603
                child.argv, env=self.plan.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                start_new_session=True)
            child.reader = threading.Thread(target=self._forward, args=(child,), daemon=True)
            child.reader.start()

    def _forward(self, child: Child) -> None:
        assert child.process is not None
        assert child.process.stdout is not None
        for raw in child.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if self.echo(child.name, line):
                with self._lock:
                    self.out.write(f"{child.name:>6} | {line}\n")
                    self.out.flush()

    def exited(self) -> Child | None:
        for child in self.plan.children:
            if child.process is not None and child.process.poll() is not None:
                return child
        return None

    def stop(self, timeout: float = 30.0) -> None:
        for child in self.plan.children:
            if child.process is not None and child.process.poll() is None:
                os.killpg(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.plan.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(5)

    def supervise(self) -> int:
        """Until a signal (0) or a child's exit (1)."""
        stop = StopSignals()
        try:
            while not stop.wait(0.5):
                gone = self.exited()
                if gone is not None:
                    assert gone.process is not None
                    self.out.write(f"up: {gone.name} exited with {gone.process.returncode}; "
                                   "stopping the others\n")
                    return 1
            return 0
        finally:
            self.stop()
