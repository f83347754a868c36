"""The drift-responder command, as a user runs it: a real process, real backends (on the embedded
default in `make test`, on PostgreSQL + Redis under `make soak`; the store, the intake and the
migrations are covered on both in `make test` by their own tests)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from responder.store import migrating
from responder.store.engine import make_engine
from tests.conftest import REDIS_URL
from tests.support.samples import samples_dir

CLI = [sys.executable, "-m", "responder"]
SAMPLES = [*sorted(str(p) for p in samples_dir().glob("*.json")),
           str(samples_dir() / "batch.ndjson")]


@pytest.fixture(params=["embedded", pytest.param("production", marks=pytest.mark.soak)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    values["DRIFT_DATA_DIR"] = str(tmp_path / "data")
    # As in tests/support/stack.py: an existing data directory (a missing one costs the
    # embedded broker's queue declaration two seconds of retries).
    (tmp_path / "data").mkdir()
    values["DRIFT_INGEST_TOKEN"] = "cli-token"
    if request.param == "production":
        values["DRIFT_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        values["DRIFT_REDIS_URL"] = REDIS_URL
        values["DRIFT_REDIS_PREFIX"] = request.getfixturevalue("redis_prefix")
    return values


def run(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ingest(env: dict[str, str]) -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([*CLI, "ingest", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError(proc.communicate()[1]) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_replay_in_process_then_list_and_show_incidents(env: dict[str, str]) -> None:
    replayed = run(env, "replay", *SAMPLES)
    assert "batch.ndjson: 3 alerts" in replayed.stdout
    listed = json.loads(run(env, "incidents", "list", "--json").stdout)
    assert len(listed) == 5
    assert sum(i["alert_count"] for i in listed) == 8
    required = {"id", "key", "status", "alert_count", "rules", "priority", "namespace", "pod",
                "node", "container_id", "image", "first_seen", "last_seen"}
    assert all(required <= set(i) for i in listed)
    shop = next(i for i in listed if i["namespace"] == "shop")
    assert shop["alert_count"] == 2
    assert shop["priority"] == "Critical"
    assert shop["rules"] == ["Drop and execute new binary in container"]
    assert shop["first_seen"] == "2026-11-20T14:02:11.418220977Z"
    shown = json.loads(run(env, "incidents", "show", shop["id"], "--json").stdout)
    assert shown["rule_counts"] == {"Drop and execute new binary in container": 2}
    assert [s["ordinal"] for s in shown["samples"]] == [1, 2]
    human = run(env, "incidents", "show", shop["id"]).stdout
    assert "web-7d9f8b6c5-x2x4q" in human
    assert run(env, "incidents", "list").returncode == 0


def test_show_of_an_unknown_incident_fails_clearly(env: dict[str, str]) -> None:
    done = run(env, "incidents", "show", "NOPE", check=False)
    assert done.returncode == 1
    assert "no incident 'NOPE'" in done.stderr


def test_replay_reports_bad_files_and_exits_1(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"rule": "x", "priority": "Critical", "time": "yesterday"}]))
    done = run(env, "replay", str(bad), check=False)
    assert done.returncode == 1
    assert "item 0: time" in done.stderr


def test_replay_to_a_running_ingest_and_export_the_audit(env: dict[str, str],
                                                         ingest: str) -> None:
    done = run(env, "replay", *SAMPLES, "--url", ingest)
    assert done.stdout.count(" 202 ") == len(SAMPLES)
    records = [json.loads(line) for line in
               run(env, "audit", "export", "--format", "jsonl").stdout.splitlines()]
    assert [r["kind"] for r in records] == ["incident.opened"] * 5
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5]
    one = records[2]["incident_id"]
    mine = run(env, "audit", "export", "--incident", one).stdout.splitlines()
    assert [json.loads(line)["incident_id"] for line in mine] == [one]
    assert "audit OK: 5 records" in run(env, "audit", "verify").stdout


def test_the_ingest_accepts_the_token_in_the_path_as_falco_sends_it(
    env: dict[str, str], ingest: str,
) -> None:
    body = (samples_dir() / "falco-http-output-drop-and-execute.json").read_bytes()
    response = httpx.post(f"{ingest}/v1/falco/cli-token", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 202
    assert httpx.post(f"{ingest}/v1/falco", content=body).status_code == 401
    assert httpx.get(f"{ingest}/readyz").json()["ready"] is True


def test_ingest_refuses_to_start_without_a_token(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "DRIFT_INGEST_TOKEN"}
    done = run(env, "ingest", "--port", str(_free_port()), check=False)
    assert done.returncode == 2
    assert "DRIFT_INGEST_TOKEN is not set" in done.stderr


def test_audit_verify_exits_1_naming_the_first_bad_seq(env: dict[str, str]) -> None:
    run(env, "replay", *SAMPLES)
    url = env.get("DRIFT_DATABASE_URL") or f"sqlite:///{env['DRIFT_DATA_DIR']}/drift.db"
    engine = make_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
        else:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        conn.execute(text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3"))
    engine.dispose()
    done = run(env, "audit", "verify", check=False)
    assert done.returncode == 1
    assert "BROKEN at seq 3" in done.stderr


def test_db_upgrade_reports_the_head_revision(env: dict[str, str]) -> None:
    assert f"schema at {migrating.head_revision()}" in run(env, "db", "upgrade").stdout


def test_bad_settings_are_a_usage_error(env: dict[str, str]) -> None:
    env = env | {"DRIFT_CORRELATION_WINDOW_SECONDS": "-1"}
    done = run(env, "incidents", "list", check=False)
    assert done.returncode == 2
    assert "correlation_window_seconds" in done.stderr


