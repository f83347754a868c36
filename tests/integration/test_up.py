"""`drift-responder up` runs the whole responder on the embedded default and stops it whole."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from responder.store import incidents, runs
from responder.store.engine import make_engine
from tests.support.processes import CLI, REPO, base_env, free_port, wait_for
from tests.support.samples import drift_alert


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def test_up_starts_every_process_on_the_embedded_default_and_stops_them_together(
        tmp_path: Path) -> None:
    port = free_port()
    env = base_env({"DRIFT_DATA_DIR": str(tmp_path / "data"),
                    "DRIFT_PLAYBOOKS_DIR": str(REPO / "playbooks"),
                    "DRIFT_INGEST_TOKEN": "up-token", "DRIFT_DRY_RUN": "true"})
    for key in ("DRIFT_DATABASE_URL", "DRIFT_REDIS_URL", "DRIFT_BROKER_URL"):
        env.pop(key, None)
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen([*CLI, "up", "--port", str(port), "--no-agent"], env=env, cwd=REPO,
                          stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_for(healthy, 40, 0.2, what="the intake")
        children = _children_of(up.pid)
        assert len(children) == 3  # ingest, worker, beat (no Slack, no agent)
        response = httpx.post(f"http://127.0.0.1:{port}/v1/falco/up-token",
                              json=drift_alert(1), timeout=10)
        assert response.status_code == 202
        [incident_id] = response.json()["incidents"]
        engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'drift.db'}")
        try:
            def run_started() -> bool:
                with engine.connect() as conn:
                    detail = incidents.get_incident(conn, incident_id)
                    found = runs.runs_for_incident(conn, incident_id)
                return detail is not None and bool(found) and found[0].status != "pending"

            wait_for(run_started, 40, 0.2, what="the worker to start the run")
        finally:
            engine.dispose()
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
        time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    out = (tmp_path / "up.log").read_text()
    assert "backends (embedded default): store=SQLite" in out
    assert "Slack is not configured" in out
    assert "/v1/falco/up-token" in out


def test_up_stops_everything_when_one_process_dies(tmp_path: Path) -> None:
    port = free_port()
    env = base_env({"DRIFT_DATA_DIR": str(tmp_path / "data"),
                    "DRIFT_PLAYBOOKS_DIR": str(REPO / "playbooks"),
                    "DRIFT_INGEST_TOKEN": "up-token"})
    for key in ("DRIFT_DATABASE_URL", "DRIFT_REDIS_URL", "DRIFT_BROKER_URL"):
        env.pop(key, None)
    up = subprocess.Popen([*CLI, "up", "--port", str(port), "--no-agent"], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        children = wait_for(lambda: len(_children_of(up.pid)) == 3 and _children_of(up.pid),
                            40, 0.2, what="the children")
        os.kill(min(children), signal.SIGKILL)
        assert up.wait(40) == 1
        assert b"exited with -9; stopping the others" in (up.stdout.read() if up.stdout else b"")
        time.sleep(0.2)
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    finally:
        if up.poll() is None:
            up.kill()
