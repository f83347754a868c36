"""A stack of real drift-responder processes (ingest, workers, beat) for integration tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from responder.store import audit
from responder.store.engine import make_engine
from responder.store.schema import runs
from tests.support.processes import CLI, REPO, Service, free_port, wait_for, wait_http


class Stack:
    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.services: list[Service] = []
        self.url = ""

    def start(self, *args: str, name: str) -> Service:
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

    def run_of(self, incident_id: str) -> dict[str, Any] | None:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                row = conn.execute(select(runs).where(runs.c.incident_id == incident_id)).first()
                return None if row is None else {"status": row.status,
                                                  "state": json.loads(row.state)}
        finally:
            engine.dispose()

    def wait_run(self, incident_id: str, status: str, timeout: float = 40) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            run = self.run_of(incident_id)
            return run if run is not None and run["status"] == status else None

        try:
            return wait_for(reached, timeout, 0.1, what=f"run {status}")  # type: ignore[no-any-return]
        except AssertionError:
            logs = "\n".join(f"--- {s.name}\n{s.output()[-3000:]}" for s in self.services)
            raise AssertionError(f"run is {self.run_of(incident_id)}; logs:\n{logs}") from None

    def audit_kinds(self, incident_id: str) -> list[str]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                assert audit.verify(conn).ok
                return [r.kind for r in audit.iter_records(conn, incident_id)]
        finally:
            engine.dispose()

    def stop(self) -> None:
        # All at once: each takes its own time to shut down, and they need not wait in turn.
        for service in self.services:
            service.terminate()
        for service in reversed(self.services):
            service.stop()
