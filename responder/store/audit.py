"""The tamper-evident audit trail: append, export, verify.

Appends are serialised (a PostgreSQL advisory lock; SQLite has one writer) and ``seq`` is the
primary key, so the chain cannot fork under concurrent writers: a second writer either waits for
the lock or fails on the key and retries. Nothing here updates or deletes an audit row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, text, update

from responder.models.audit import GENESIS_HASH, AuditRecord, canonical_data, record_hash
from responder.models.times import format_ns, now_ns
from responder.store.schema import audit_head, audit_log

_PG_AUDIT_LOCK = 0x617564697400


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What a caller wants recorded; seq, time and hashes are the store's to assign."""

    kind: str
    actor: str
    incident_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


def append(conn: Connection, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
    """Append entries in order inside the caller's transaction."""
    if not entries:
        return []
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_AUDIT_LOCK})
    last = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last.seq, last.hash) if last else (0, GENESIS_HASH)
    stamp = format_ns(now_ns())
    records: list[AuditRecord] = []
    for entry in entries:
        seq += 1
        data_json = canonical_data(entry.data)
        digest = record_hash(seq=seq, time=stamp, incident_id=entry.incident_id,
                             actor=entry.actor, kind=entry.kind, data_json=data_json,
                             prev_hash=prev)
        records.append(AuditRecord(seq, stamp, entry.incident_id, entry.actor, entry.kind,
                                   entry.data, prev, digest))
        prev = digest
    conn.execute(insert(audit_log), [
        {"seq": r.seq, "time": r.time, "incident_id": r.incident_id, "actor": r.actor,
         "kind": r.kind, "data": canonical_data(r.data), "prev_hash": r.prev_hash,
         "hash": r.hash}
        for r in records
    ])
    head = {"seq": seq, "hash": prev}
    if conn.execute(update(audit_head).where(audit_head.c.id == 1).values(**head)).rowcount == 0:
        conn.execute(insert(audit_head).values(id=1, **head))
    return records


def iter_records(conn: Connection, incident_id: str | None = None,
                 batch: int = 1000, *, kinds: Collection[str] | None = None
                 ) -> Iterator[AuditRecord]:
    """Records oldest first: all, or an incident's; only of ``kinds`` when given."""
    query = select(audit_log).order_by(audit_log.c.seq)
    if incident_id is not None:
        query = query.where(audit_log.c.incident_id == incident_id)
    if kinds is not None:
        query = query.where(audit_log.c.kind.in_(list(kinds)))
    result = conn.execution_options(yield_per=batch).execute(query)
    for row in result:
        yield AuditRecord(row.seq, row.time, row.incident_id, row.actor, row.kind,
                          orjson.loads(row.data), row.prev_hash, row.hash)


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify(conn: Connection) -> Verdict:
    """Walk the chain from seq 1: contiguous seqs, linked hashes, recomputed hashes, and the head.

    Reports the first seq at which the stored chain stops being the one that was written.
    """
    expected_seq = 1
    prev = GENESIS_HASH
    count = 0
    rows = conn.execution_options(yield_per=2000).execute(select(audit_log).order_by(
        audit_log.c.seq))
    for row in rows:
        if row.seq != expected_seq:
            return Verdict(False, count, expected_seq,
                           f"seq {expected_seq} is missing (next stored seq is {row.seq})")
        if row.prev_hash != prev:
            return Verdict(False, count, row.seq,
                           "prev_hash does not match the previous record's hash")
        digest = record_hash(seq=row.seq, time=row.time, incident_id=row.incident_id,
                             actor=row.actor, kind=row.kind, data_json=row.data,
                             prev_hash=row.prev_hash)
        if digest != row.hash:
            return Verdict(False, count, row.seq, "content does not match its hash")
        prev = row.hash
        expected_seq += 1
        count += 1
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).first()
    head_seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS_HASH)
    if head_seq != count or head_hash != prev:
        if head_seq > count:
            return Verdict(False, count, count + 1,
                           f"records {count + 1}..{head_seq} were removed from the end")
        return Verdict(False, count, min(head_seq + 1, count) or 1,
                       "the chain head does not match the last record")
    return Verdict(True, count)
