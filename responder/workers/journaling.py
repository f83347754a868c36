"""Step contexts whose written-ahead audit entries reach the store before the step goes on.

A plug-in's ordinary audit entries are buffered and committed with its result, so that a killed
worker leaves no half-recorded effect. That leaves one gap: an effect that happened (a pod PATCH
the API server applied) while its record died with the worker. ``intend`` closes it: the entry
is appended in its own transaction and committed before the plug-in makes the request, and
``recall`` lets the step's next delivery read back what earlier ones wrote, so that it can record
the change they made instead of finding it done and saying nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from responder.plugins.registry import Recalled, RecordingContext
from responder.store import audit


@dataclass
class CommittingContext(RecordingContext):
    """A RecordingContext whose ``intend`` commits at once, as ``actor``, with ``stamp`` added
    to the entry's data (who wrote it: run, step, attempt, worker). With ``look_back``,
    ``recall`` reads this run's step from the audit trail of ``incident_id``; without it (a
    manual action, which no later delivery repeats), only what this context wrote ahead."""

    engine: Engine | None = None
    actor: str = "worker"
    incident_id: str | None = None
    stamp: dict[str, Any] = field(default_factory=dict)
    look_back: bool = True

    def intend(self, kind: str, data: dict[str, Any]) -> int:
        if self.engine is None:
            return super().intend(kind, data)
        with self.engine.begin() as conn:
            [record] = audit.append(conn, [audit.AuditEntry(
                kind=kind, actor=self.actor, incident_id=self.incident_id,
                data={**self.stamp, **data})])
        self.intended.append(Recalled(record.seq, kind, record.data))
        return record.seq

    def recall(self, kinds: Collection[str]) -> list[Recalled]:
        if self.engine is None or not self.look_back or self.incident_id is None:
            return super().recall(kinds)
        with self.engine.connect() as conn:
            found = audit.iter_records(conn, self.incident_id, kinds=kinds)
            return [Recalled(r.seq, r.kind, r.data) for r in found
                    if r.data.get("run") == self.run_id and r.data.get("step") == self.step_id]
