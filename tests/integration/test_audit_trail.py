"""The audit chain on SQLite and PostgreSQL: appends link, tampering is found, no fork."""

from __future__ import annotations

import itertools
import threading

import pytest
from sqlalchemy import Engine, text

from responder.store import audit
from responder.store.engine import make_engine


@pytest.fixture
def engine(store_url: str) -> Engine:
    built = make_engine(store_url)
    yield built
    built.dispose()


def _append(engine: Engine, n: int, actor: str = "test") -> None:
    with engine.begin() as conn:
        audit.append(conn, [audit.AuditEntry(kind="note", actor=actor, incident_id=None,
                                             data={"i": i, "text": f"entry {i}"})
                            for i in range(n)])


def _verify(engine: Engine) -> audit.Verdict:
    with engine.connect() as conn:
        return audit.verify(conn)


def _tamper(engine: Engine, sql: str) -> None:
    """An attacker with database access: drop the append-only guard first, then edit."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        else:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
        for statement in sql.split("; "):
            conn.exec_driver_sql(statement)


def test_appended_records_link_into_a_chain_that_verifies(engine: Engine) -> None:
    _append(engine, 3)
    _append(engine, 2)
    with engine.connect() as conn:
        records = list(audit.iter_records(conn))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(records))
    assert _verify(engine) == audit.Verdict(True, 5)


def test_an_empty_trail_verifies(engine: Engine) -> None:
    assert _verify(engine).ok


def test_the_database_refuses_updates_and_deletes_of_audit_rows(engine: Engine) -> None:
    _append(engine, 2)
    for sql in ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1",
                "DELETE FROM audit_log WHERE seq = 2"):
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.execute(text(sql))
    assert _verify(engine).ok


@pytest.mark.parametrize(
    ("sql", "bad_seq"),
    [
        ("UPDATE audit_log SET data = '{\"i\":99}' WHERE seq = 3", 3),
        ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1", 1),
        ("UPDATE audit_log SET kind = 'other' WHERE seq = 5", 5),
        ("UPDATE audit_log SET time = '2020-01-01T00:00:00.000000000Z' WHERE seq = 4", 4),
        ("UPDATE audit_log SET incident_id = 'X' WHERE seq = 2", 2),
        ("DELETE FROM audit_log WHERE seq = 3", 3),
        ("DELETE FROM audit_log WHERE seq = 1", 1),
        ("DELETE FROM audit_log WHERE seq = 6", 6),
        # Swap records 2 and 3 (through negative seqs: the primary key is checked row by row).
        ("UPDATE audit_log SET seq = -seq WHERE seq IN (2, 3); "
         "UPDATE audit_log SET seq = CASE seq WHEN -2 THEN 3 ELSE 2 END WHERE seq < 0", 2),
    ],
    ids=["edit-data", "edit-actor", "edit-kind", "edit-time", "edit-incident", "delete-middle",
         "delete-first", "delete-last", "reorder"],
)
def test_any_single_row_edit_deletion_or_reordering_is_reported_at_its_seq(
    engine: Engine, sql: str, bad_seq: int,
) -> None:
    _append(engine, 6)
    _tamper(engine, sql)
    verdict = _verify(engine)
    assert not verdict.ok
    assert verdict.first_bad_seq == bad_seq
    assert verdict.reason


def test_a_rewritten_chain_still_fails_against_its_head(engine: Engine) -> None:
    _append(engine, 4)
    # Deleting the newest record and leaving a shorter, internally valid chain is caught.
    _tamper(engine, "DELETE FROM audit_log WHERE seq = 4")
    verdict = _verify(engine)
    assert (verdict.ok, verdict.first_bad_seq) == (False, 4)
    assert "removed from the end" in (verdict.reason or "")


def test_concurrent_writers_never_fork_the_chain(engine: Engine) -> None:
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            for _ in range(15):
                _append(engine, 2, actor=name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    verdict = _verify(engine)
    assert verdict == audit.Verdict(True, 6 * 15 * 2)


def test_the_database_refuses_to_truncate_the_trail_or_drop_its_head(engine: Engine) -> None:
    _append(engine, 2)
    statements = ["DELETE FROM audit_head"]
    if engine.dialect.name == "postgresql":
        statements += ["TRUNCATE audit_log", "TRUNCATE audit_head"]
    for sql in statements:
        with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert _verify(engine) == audit.Verdict(True, 2)
