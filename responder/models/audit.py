"""Audit records and their hash chain. Pure: the store appends, this module says what a record's
hash is, so ``audit verify`` and the writer can never disagree about the canonical form."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    time: str
    incident_id: str | None
    actor: str
    kind: str
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "incident_id": self.incident_id,
            "actor": self.actor,
            "kind": self.kind,
            "data": self.data,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical_data(data: dict[str, Any]) -> str:
    """The one serialisation of ``data`` that is stored and hashed (sorted keys, compact)."""
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def record_hash(
    *, seq: int, time: str, incident_id: str | None, actor: str, kind: str, data_json: str,
    prev_hash: str,
) -> str:
    """sha256 over the canonical record including the previous hash."""
    body = orjson.dumps(
        [seq, time, incident_id, actor, kind, data_json, prev_hash]
    )
    return hashlib.sha256(body).hexdigest()
