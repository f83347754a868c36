"""Processes started together on a fresh embedded store (as `drift-responder up` and the demo
start theirs) each migrate it on start: SQLite has no migration lock, so they must not race to
create the same tables, nor fail to open the file while another one sets it up."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from sqlalchemy import inspect, text

from responder.store import migrating
from responder.store.engine import make_engine

PROCESSES = 6
ROUNDS = 20


def _migrate(url: str, barrier: Barrier, outcomes: Queue[str]) -> None:
    engine = make_engine(url)
    try:
        barrier.wait(30)  # all at once, as far as the machine allows
        migrating.upgrade(engine)
        outcomes.put("ok")
    except Exception:
        outcomes.put(traceback.format_exc())
    finally:
        engine.dispose()


def test_processes_migrating_a_fresh_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    # Forked after the imports, the processes reach the barrier within milliseconds.
    context = multiprocessing.get_context("fork")
    for round_ in range(ROUNDS):
        url = f"sqlite:///{tmp_path / f'round-{round_}' / 'drift.db'}"
        barrier = context.Barrier(PROCESSES)
        outcomes: Queue[str] = context.Queue()
        processes = [context.Process(target=_migrate, args=(url, barrier, outcomes))
                     for _ in range(PROCESSES)]
        for process in processes:
            process.start()
        results = [outcomes.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(30)
        assert [r for r in results if r != "ok"] == [], f"round {round_}"
        engine = make_engine(url)
        try:
            assert migrating.current_revision(engine) == migrating.head_revision()
            with engine.connect() as conn:
                assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
                assert "incidents" in inspect(conn).get_table_names()
        finally:
            engine.dispose()


def test_a_migration_waits_for_a_fresh_file_that_another_connection_is_writing(
    tmp_path: Path,
) -> None:
    # A fresh file is not in WAL mode yet; while another connection holds its write lock,
    # SQLite refuses the switch to WAL that opening the store makes at once, without waiting.
    path = tmp_path / "drift.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other (a)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO other VALUES (1)")
    commit = threading.Timer(0.5, other.execute, ["COMMIT"])
    commit.start()
    engine = make_engine(f"sqlite:///{path}")
    try:
        started = time.monotonic()
        migrating.upgrade(engine)
        assert time.monotonic() - started >= 0.4  # it did wait for the other one
        assert migrating.current_revision(engine) == migrating.head_revision()
    finally:
        engine.dispose()
        commit.join()
        other.close()
