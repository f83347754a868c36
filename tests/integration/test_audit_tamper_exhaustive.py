"""Every single-row tampering of a real audit trail is found by ``audit.verify``, at its seq.

tests/integration/test_audit_trail.py tampers with a few chosen rows of a six-record trail. Here
a trail of twenty records (several appends, with and without incidents, nested and non-ASCII
data) is tampered with at EVERY record, in every column (time, actor, kind, data, incident_id,
prev_hash, hash, and seq itself), by deletion, and by swapping with its neighbour, on SQLite and
PostgreSQL. Each case runs in one transaction that first lifts the append-only guard the way an
attacker with database access would (as the existing tamper tests do), and is rolled back, so
every case starts from the intact trail (checked before and after).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Connection, Engine, text

from responder.store import audit
from responder.store.engine import make_engine

RECORDS = 20


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    built = make_engine(store_url)
    _build_trail(built)
    yield built
    built.dispose()


def _build_trail(engine: Engine) -> None:
    """Twenty records from seven appends: like the intake and the workers write them."""
    batches = [3, 1, 4, 2, 5, 1, 4]
    assert sum(batches) == RECORDS
    n = 0
    for size in batches:
        entries = []
        for _ in range(size):
            n += 1
            entries.append(audit.AuditEntry(
                kind=("incident.opened", "step.started", "approval.decided", "note")[n % 4],
                actor=("intake", "worker", "slack:U024BE7LH", "cli:alice")[n % 4],
                incident_id=None if n % 3 == 0 else f"01INCIDENT{n:016d}",
                data={"n": n, "text": f"entry {n} \u00e9\u2028<!channel>", "nested": {"b": [1, n]},
                      "a": None}))
        with engine.begin() as conn:
            audit.append(conn, entries)


def _lift_guard(conn: Connection) -> None:
    """What an attacker with database access does first (and the existing tamper tests do)."""
    if conn.dialect.name == "sqlite":
        conn.execute(text("DROP TRIGGER audit_log_no_update"))
        conn.execute(text("DROP TRIGGER audit_log_no_delete"))
    else:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))


def _row(conn: Connection, seq: int) -> dict[str, object]:
    found = conn.execute(text("SELECT * FROM audit_log WHERE seq = :s"), {"s": seq}).mappings()
    return dict(found.one())


def _flip(hex_text: str) -> str:
    """The same hash with its last hex digit changed."""
    return hex_text[:-1] + ("0" if hex_text[-1] != "0" else "1")


def _edit(column: str, value: Callable[[dict[str, object]], object]) -> Callable[
        [Connection, int], None]:
    def tamper(conn: Connection, seq: int) -> None:
        row = _row(conn, seq)
        new = value(row)
        assert new != row[column], (column, new)
        conn.execute(text(f"UPDATE audit_log SET {column} = :v WHERE seq = :s"),
                     {"v": new, "s": seq})
    return tamper


def _other_time(row: dict[str, object]) -> str:
    stamp = str(row["time"])  # 2026-11-20T14:02:11.418220977Z: one nanosecond later
    digit = int(stamp[-2])
    return stamp[:-2] + str((digit + 1) % 10) + "Z"


def _other_data(row: dict[str, object]) -> str:
    # The same JSON, written differently (a space): the stored text is what is hashed.
    return str(row["data"]).replace(":", ": ", 1)


def _delete(conn: Connection, seq: int) -> None:
    conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": seq})


def _swap_with_next(conn: Connection, seq: int) -> None:
    # Through negative seqs: the primary key is checked row by row.
    conn.execute(text("UPDATE audit_log SET seq = -seq WHERE seq IN (:a, :b)"),
                 {"a": seq, "b": seq + 1})
    conn.execute(text("UPDATE audit_log SET seq = CASE seq WHEN :na THEN :b ELSE :a END "
                      "WHERE seq < 0"), {"na": -seq, "a": seq, "b": seq + 1})


def _renumber(conn: Connection, seq: int) -> None:
    conn.execute(text("UPDATE audit_log SET seq = :n WHERE seq = :s"),
                 {"n": 1000 + seq, "s": seq})


TAMPERS: dict[str, Callable[[Connection, int], None]] = {
    "edit-time": _edit("time", _other_time),
    "edit-actor": _edit("actor", lambda r: "mallory" if r["actor"] != "mallory" else "eve"),
    "edit-kind": _edit("kind", lambda r: "approval.decided" if r["kind"] != "approval.decided"
                       else "note"),
    "edit-data": _edit("data", lambda r: str(r["data"]).replace('"n":', '"n":1', 1)),
    "reformat-data": _edit("data", _other_data),
    "edit-incident": _edit("incident_id", lambda r: "01OTHERINCIDENT" if r["incident_id"]
                           is not None else "01INJECTEDINCIDENT"),
    "null-incident": _edit("incident_id", lambda r: None if r["incident_id"] is not None
                           else ""),
    "edit-prev-hash": _edit("prev_hash", lambda r: _flip(str(r["prev_hash"]))),
    "edit-hash": _edit("hash", lambda r: _flip(str(r["hash"]))),
    "delete": _delete,
    "swap-with-next": _swap_with_next,
    "renumber": _renumber,
}


def _verdict_after(engine: Engine, tamper: Callable[[Connection, int], None],
                   seq: int) -> audit.Verdict:
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            _lift_guard(conn)
            tamper(conn, seq)
            return audit.verify(conn)
        finally:
            transaction.rollback()


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampering_with_any_single_record_is_reported_at_that_records_seq(
    engine: Engine, name: str,
) -> None:
    tamper = TAMPERS[name]
    last = RECORDS - 1 if name == "swap-with-next" else RECORDS
    missed: list[str] = []
    for seq in range(1, last + 1):
        verdict = _verdict_after(engine, tamper, seq)
        if verdict.ok or verdict.first_bad_seq != seq or not verdict.reason:
            missed.append(f"{name} at seq {seq}: {verdict}")
    assert missed == [], "\n".join(missed)
    # Every case was rolled back: the trail is intact and still guarded.
    with engine.connect() as conn:
        assert audit.verify(conn) == audit.Verdict(True, RECORDS)
    with pytest.raises(Exception, match="append-only"), engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 1"))


def test_the_intact_trail_verifies_and_each_rolled_back_case_leaves_it_so(
    engine: Engine,
) -> None:
    with engine.connect() as conn:
        assert audit.verify(conn) == audit.Verdict(True, RECORDS)
        records = list(audit.iter_records(conn))
    assert [r.seq for r in records] == list(range(1, RECORDS + 1))
    assert {r.incident_id is None for r in records} == {True, False}
    assert len({r.time for r in records}) >= 2  # several appends, several times
    # A case that changes nothing is not reported: the check is on the tampering.
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            _lift_guard(conn)
            conn.execute(text("UPDATE audit_log SET actor = actor WHERE seq = 7"))
            assert audit.verify(conn).ok
        finally:
            transaction.rollback()
