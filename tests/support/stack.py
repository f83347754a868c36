"""A stack of real drift-responder processes (ingest, workers, beat) for integration tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from responder.models.audit import AuditRecord
from responder.store import audit, migrating
from responder.store.engine import make_engine
from responder.store.schema import runs
from tests.support.processes import CLI, REPO, Service, free_port, wait_for, wait_http

#: Settings that point a stack at servers other tests use too; without them, all of a stack's
#: state (the embedded SQLite store and broker) is in its own data directory.
SHARED_SERVERS = ("DRIFT_DATABASE_URL", "DRIFT_REDIS_URL", "DRIFT_BROKER_URL")


class Stack:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.services: list[Service] = []
        self.url = ""

    @property
    def private(self) -> bool:
        """Whether all of the stack's state is in its own data directory."""
        return not any(self.env.get(name) for name in SHARED_SERVERS)

    def _prepare(self) -> None:
        """Before the first process starts, the embedded store is migrated, as a deployment's
        migrate job (docker-compose, Helm) leaves it: the processes then find it ready instead
        of each waiting its turn to migrate it. test_up and test_demo start from nothing, and
        test_sqlite_first_start has processes migrate a fresh store together."""
        if not self.env.get("DRIFT_DATA_DIR"):
            return
        if not self.env.get("DRIFT_DATABASE_URL"):
            engine = self.engine()
            try:
                migrating.upgrade(engine)
            finally:
                engine.dispose()

    def start(self, *args: str, name: str) -> Service:
        if not self.services:
            self._prepare()
        service = Service(list(args), self.env, self.tmp, name)
        self.services.append(service)
        return service

    def ingest(self) -> None:
        port = free_port()
        service = self.start("ingest", "--port", str(port), name="ingest")
        self.url = f"http://127.0.0.1:{port}"
        wait_http(self.url + "/healthz", service)

    def post(self, alert: dict[str, Any]) -> str:
        response = httpx.post(self.url + "/v1/falco", json=alert,
                              headers={"Authorization": "Bearer stack-token"}, timeout=10)
        assert response.status_code == 202, response.text
        return str(response.json()["incidents"][0])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True,
                              timeout=60, cwd=REPO, check=False)

    def engine(self) -> Any:
        url = self.env.get("DRIFT_DATABASE_URL") or f"sqlite:///{self.env['DRIFT_DATA_DIR']}/drift.db"
        return make_engine(url)

    def run_of(self, incident_id: str, engine: Any = None) -> dict[str, Any] | None:
        own = engine is None
        engine = self.engine() if own else engine
        try:
            with engine.connect() as conn:
                row = conn.execute(select(runs).where(runs.c.incident_id == incident_id)).first()
                return None if row is None else {"status": row.status,
                                                  "state": json.loads(row.state)}
        finally:
            if own:
                engine.dispose()

    def wait_run(self, incident_id: str, status: str, timeout: float = 40) -> dict[str, Any]:
        engine = self.engine()  # one for all the polls

        def reached() -> dict[str, Any] | None:
            run = self.run_of(incident_id, engine)
            return run if run is not None and run["status"] == status else None

        try:
            return wait_for(reached, timeout, 0.05, what=f"run {status}")  # type: ignore[no-any-return]
        except AssertionError:
            logs = "\n".join(f"--- {s.name}\n{s.output()[-3000:]}" for s in self.services)
            raise AssertionError(f"run is {self.run_of(incident_id)}; logs:\n{logs}") from None
        finally:
            engine.dispose()

    def records(self, incident_id: str | None = None) -> list[AuditRecord]:
        """The audit trail, of one incident or of all, once its whole chain has verified."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                assert audit.verify(conn).ok
                return list(audit.iter_records(conn, incident_id))
        finally:
            engine.dispose()

    def audit_kinds(self, incident_id: str) -> list[str]:
        return [r.kind for r in self.records(incident_id)]

    def stop(self, *, background: bool | None = None) -> None:
        """Stop every process; with ``background``, return before they have exited.

        By default a private stack's processes finish stopping while the caller goes on:
        nothing another test uses can see them (an embedded worker notices SIGTERM only between
        two-second polls of its broker). A stack on the shared servers is waited for, unless the
        caller says otherwise because the next user of those servers waits for it: the `stack`
        fixture does, as tests/conftest.py waits for background stops before it empties the
        database for the next test (and deletes the finished tests' Redis keys only then)."""
        # All at once: each takes its own time to shut down, and they need not wait in turn.
        for service in self.services:
            service.terminate()
        in_background = self.private if background is None else background
        for service in reversed(self.services):
            if in_background:
                service.stop_in_background(shared=not self.private)
            else:
                service.stop()
