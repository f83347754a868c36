"""Incidents: one per correlation key (by default one per container) and time window."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import orjson

from responder.models.alerts import Alert
from responder.models.priorities import Priority
from responder.models.times import format_ns

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Two digits (10 bits) per lookup: the intake draws a candidate id per key in every batch.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = range(120, -1, -10)


def new_incident_id() -> str:
    """A ULID: sortable by creation time, unique without coordination, safe in URLs and Slack."""
    return new_incident_ids(1)[0]


def new_incident_ids(count: int) -> list[str]:
    """``count`` ULIDs of this millisecond from one read of the random source (the intake draws
    a candidate per key in every batch: one system call per id showed in its profile)."""
    stamp = (time.time_ns() // 1_000_000) << 80
    noise = os.urandom(10 * count)
    pairs, shifts = _PAIRS, _SHIFTS
    ids = []
    for start in range(0, 10 * count, 10):
        value = stamp | int.from_bytes(noise[start:start + 10], "big")
        ids.append("".join([pairs[(value >> shift) & 1023] for shift in shifts]))
    return ids


@dataclass(frozen=True, slots=True)
class KeySpec:
    """How alerts are grouped: ``container`` (default), ``pod``, or a list of output fields."""

    kind: str
    fields: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        text = text.strip()
        if text in ("container", "pod"):
            return cls(kind=text)
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        if not names:
            raise ValueError(f"correlation key {text!r} names no fields")
        return cls(kind="fields", fields=names)


def incident_key(alert: Alert, spec: KeySpec) -> str:
    """The correlation key of an alert. Structured fields only, never the output text."""
    if spec.kind == "pod" and alert.namespace and alert.pod:
        return f"pod:{alert.namespace}/{alert.pod}"
    if spec.kind == "fields":
        # Typed JSON, not joined text: no separator or "None" text can make two keys collide.
        values = [[name, alert.fields.get(name)] for name in spec.fields]
        digest = hashlib.sha256(orjson.dumps(values)).hexdigest()[:32]
        return f"fields:{digest}"
    if alert.container_full_id:
        return f"container:{alert.container_full_id}"
    if alert.container_id:
        return f"container:{alert.node or '-'}:{alert.container_id}"
    # Not in a container (Falco's "host"): one incident per node and rule.
    rule_digest = hashlib.sha256(alert.rule.encode()).hexdigest()[:16]
    return f"host:{alert.node or '-'}:{rule_digest}"


@dataclass(frozen=True, slots=True)
class IncidentView:
    """An incident as the CLI and API show it."""

    id: str
    key: str
    status: str
    alert_count: int
    rules: list[str]
    priority: Priority
    namespace: str | None
    pod: str | None
    node: str | None
    container_id: str | None
    container_full_id: str | None
    image: str | None
    first_seen_ns: int
    last_seen_ns: int
    opened_at_ns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "status": self.status,
            "alert_count": self.alert_count,
            "rules": self.rules,
            "priority": self.priority.label,
            "namespace": self.namespace,
            "pod": self.pod,
            "node": self.node,
            "container_id": self.container_id,
            "container_full_id": self.container_full_id,
            "image": self.image,
            "first_seen": format_ns(self.first_seen_ns),
            "last_seen": format_ns(self.last_seen_ns),
            "opened_at": format_ns(self.opened_at_ns),
        }
