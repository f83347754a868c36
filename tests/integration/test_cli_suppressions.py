"""``drift-responder suppressions`` as a user runs it: a real process, real backends (on
PostgreSQL + Redis under `make soak`; test_suppressions.py covers the store on both)."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from responder import cli
from responder.models.audit import AuditRecord
from responder.store import audit
from responder.store.engine import make_engine
from tests.conftest import REDIS_URL
from tests.support.variants import production_in_soak

RULE = "Drop and execute new binary in container"
# Through `drift-responder` once the group is registered there; the group alone until then.
COMMAND = [sys.executable, "-m", "responder", "suppressions"] \
    if "suppressions" in cli.main.commands else [sys.executable, "-m", "responder.cli_suppressions"]


@pytest.fixture(params=["embedded", "production"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    values["DRIFT_DATA_DIR"] = str(tmp_path / "data")
    if request.param == "production":
        values["DRIFT_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        values["DRIFT_REDIS_URL"] = REDIS_URL
        values["DRIFT_REDIS_PREFIX"] = request.getfixturevalue("redis_prefix")
    return values


def run(env: dict[str, str], *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*COMMAND, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == expect, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def audit_records(env: dict[str, str]) -> list[AuditRecord]:
    url = env.get("DRIFT_DATABASE_URL") or f"sqlite:///{env['DRIFT_DATA_DIR']}/drift.db"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert audit.verify(conn).ok
            return list(audit.iter_records(conn))
    finally:
        engine.dispose()


@production_in_soak("env")
def test_add_list_and_lift_a_suppression_as_the_os_user(env: dict[str, str]) -> None:
    added = json.loads(run(env, "add", "--rule", RULE, "--namespace", "shop", "--pod", "web-*",
                           "--image", "registry.example.com/shop/web", "--for", "2h",
                           "--reason", "nightly build drops a binary", "--json").stdout)
    me = f"cli:{getpass.getuser()}"
    assert added["created_by"] == me
    assert added["match"] == {"rule": RULE, "namespace": "shop", "pod_prefix": "web-",
                              "image": "registry.example.com/shop/web"}
    assert added["max_priority"] == "Critical"
    sid = added["id"]

    listed = json.loads(run(env, "list", "--json").stdout)
    assert [(s["id"], s["status"], s["hits"]) for s in listed] == [(sid, "active", 0)]
    assert sid in run(env, "list").stdout

    lifted = run(env, "lift", sid, "--reason", "the build is fixed")
    assert f"suppression {sid} lifted" in lifted.stdout
    assert json.loads(run(env, "list", "--json").stdout) == []
    everything = json.loads(run(env, "list", "--all", "--json").stdout)
    assert [(s["id"], s["status"], s["lifted_by"]) for s in everything] == [
        (sid, "lifted", me)]
    again = run(env, "lift", sid, "--reason", "the build is fixed", expect=1)
    assert "already lifted" in again.stderr

    mine = [(r.kind, r.actor, r.data["suppression"], r.data["reason"])
            for r in audit_records(env) if r.kind.startswith("suppression.")]
    assert mine == [("suppression.created", me, sid, "nightly build drops a binary"),
                    ("suppression.lifted", me, sid, "the build is fixed")]


BAD = [
    (["add", "--rule", RULE, "--namespace", "shop"], "Missing option '--reason'"),
    (["add", "--rule", RULE, "--namespace", "*", "--reason", "noise"], "not a namespace name"),
    (["add", "--rule", "", "--namespace", "shop", "--reason", "noise"], "a rule is required"),
    (["add", "--rule", RULE, "--namespace", "shop", "--reason", "noise", "--for", "31d"],
     "at most 30 days"),
    (["add", "--rule", RULE, "--namespace", "shop", "--reason", "noise", "--for", "soon"],
     "not a duration"),
    (["add", "--rule", RULE, "--namespace", "shop", "--reason", "no"], "a reason is required"),
    (["add", "--rule", RULE, "--namespace", "shop", "--reason", "noise",
      "--max-priority", "Urgent"], "unknown priority"),
    (["add", "--rule", RULE, "--namespace", "shop", "--reason", "noise", "--pod", "w*b"],
     "only a trailing *"),
    (["lift", "01NOSUCHSUPPRESSION", "--reason", "done"], "no suppression"),
]


def test_bad_input_exits_2_with_the_reason_and_changes_nothing(tmp_path: Path) -> None:
    # Validation does not depend on the store: the embedded one is enough. The cases are
    # separate processes that change nothing: they run side by side.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env["DRIFT_DATA_DIR"] = str(tmp_path / "data")
    with ThreadPoolExecutor(max_workers=3) as pool:
        refusals = list(pool.map(lambda args: run(env, *args, expect=2), [a for a, _ in BAD]))
    for (args, says), refused in zip(BAD, refusals, strict=True):
        assert says in refused.stderr, (args, refused.stderr)
    assert json.loads(run(env, "list", "--all", "--json").stdout) == []
