"""The node agent: a Celery worker on its node's queue (``evidence.<node>``), with a heartbeat.

It runs the same ``drift.run_step`` task as the workers, but only for evidence steps routed to
its node, with a runtime that points the evidence plug-ins at the host's ``/proc`` and overlay
directories (mounted read-only in the DaemonSet). The heartbeat row tells dispatchers the node
can be served; on a clean stop it is withdrawn, so that steps fall back at once.
"""

from __future__ import annotations

import os
import socket
import threading
from importlib.metadata import PackageNotFoundError, version

import structlog
from sqlalchemy import Engine

from responder.models.times import now_ns
from responder.store import agents

log = structlog.get_logger("drift.agent")


def package_version() -> str:
    try:
        return version("drift-responder")
    except PackageNotFoundError:  # running from a source tree
        return "0+source"


class Heartbeat:
    """Beats in a daemon thread until stopped; a failed beat is logged and retried."""

    def __init__(self, engine: Engine, node: str, interval_s: float) -> None:
        self.engine = engine
        self.node = node
        self.interval_s = interval_s
        self.started_ns = now_ns()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-heartbeat", daemon=True)

    def beat(self, *, at_ns: int | None = None) -> None:
        with self.engine.begin() as conn:
            agents.heartbeat(conn, node=self.node, hostname=socket.gethostname(),
                             pid=os.getpid(), version=package_version(),
                             started_ns=self.started_ns, now_ns=at_ns or now_ns())

    def start(self) -> None:
        self.beat()  # before consuming: dispatchers may route here from now on
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.beat(at_ns=1)  # "last seen at the epoch": gone, route elsewhere
        except Exception as exc:
            log.warning("agent.withdraw_failed", node=self.node, error=repr(exc))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # the store is down: the next beat tries again
                log.warning("agent.heartbeat_failed", node=self.node, error=repr(exc))
