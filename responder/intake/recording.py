"""The Recorder: validated alerts -> correlated incidents in the store, in one transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from sqlalchemy import Engine

from responder.conducting.dispatching import Dispatcher
from responder.intake.correlating import Correlator
from responder.intake.planning import RunPlanner
from responder.intake.suppressing import SuppressionCache
from responder.models.alerts import Alert
from responder.models.incidents import KeySpec, incident_key, new_incident_ids
from responder.models.times import now_ns
from responder.store import recording

log = structlog.get_logger("drift.intake")

#: The incident id given to an alert an active suppression swallowed (it is in no incident).
SUPPRESSED = ""


@dataclass(frozen=True, slots=True)
class Recorded:
    """What happened to a batch: the incident of each alert (:data:`SUPPRESSED` for an alert
    a suppression swallowed), and which incidents it opened."""

    incident_ids: list[str]
    opened: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    duplicate_batch: bool = False
    suppressed: int = 0

    @property
    def incidents(self) -> list[str]:
        """Distinct incident ids, in order of first appearance."""
        ids = dict.fromkeys(self.incident_ids)
        if self.suppressed:
            ids.pop(SUPPRESSED, None)
        return list(ids)


class Recorder:
    def __init__(self, engine: Engine, correlator: Correlator, key_spec: KeySpec,
                 policy: recording.RecordingPolicy, *, planner: RunPlanner | None = None,
                 dispatcher: Dispatcher | None = None,
                 suppressions: SuppressionCache | None = None) -> None:
        self.engine = engine
        self.correlator = correlator
        self.key_spec = key_spec
        self.policy = policy
        self.planner = planner
        self.dispatcher = dispatcher
        self.suppressions = suppressions
        #: Incidents whose first-N sample is full, as of committed writes (counts only grow).
        self._past_first: set[str] = set()

    def record(self, alerts: Sequence[Alert], *, batch_id: str | None = None) -> Recorded:
        """Record alerts; with ``batch_id``, a batch seen before is acknowledged and skipped.
        Alerts an active suppression covers are counted for it and recorded nowhere else."""
        if not alerts:
            return Recorded([])
        cache = self.suppressions
        if cache is not None:
            if cache.due(2.0):  # the intake's background refresh normally came first
                cache.refresh()
            if cache.matcher:
                received = now_ns()
                marks = cache.screen(alerts, received)
                if marks is not None:
                    return self._record_some(alerts, marks, cache, batch_id, received)
        return self._record(alerts, batch_id)

    def _record_some(self, alerts: Sequence[Alert], marks: list[str | None],
                     cache: SuppressionCache, batch_id: str | None, received: int) -> Recorded:
        kept = [a for a, mark in zip(alerts, marks, strict=True) if mark is None]
        hits = Counter(mark for mark in marks if mark is not None)
        if kept:
            done = self._record(kept, batch_id, total=len(alerts))
        elif batch_id is not None:
            with self.engine.begin() as conn:
                duplicate = recording.batch_already_recorded(conn, batch_id)
                if not duplicate:
                    recording.mark_batch(conn, batch_id, len(alerts), received)
            done = Recorded([], duplicate_batch=duplicate)
        else:
            done = Recorded([])
        if done.duplicate_batch:
            return done
        cache.count(hits, received)
        ids = iter(done.incident_ids)
        return Recorded([SUPPRESSED if mark is not None else next(ids) for mark in marks],
                        opened=done.opened, runs=done.runs, suppressed=len(alerts) - len(kept))

    def _record(self, alerts: Sequence[Alert], batch_id: str | None, *,
                total: int | None = None) -> Recorded:
        windows: dict[str, int] = {}
        keys: list[str] = []
        overrides = self.planner.correlation_for if self.planner is not None and \
            self.planner.has_correlation else None
        for alert in alerts:
            override = overrides(alert) if overrides is not None else None
            if override is None:
                keys.append(incident_key(alert, self.key_spec))
                continue
            spec, window = override
            key = incident_key(alert, spec or self.key_spec)
            keys.append(key)
            if window is not None:
                windows[key] = window
        distinct = dict.fromkeys(keys)
        candidates = dict(zip(distinct, new_incident_ids(len(distinct)), strict=True))
        received = now_ns()
        with self.engine.begin() as conn:
            if batch_id is not None and recording.batch_already_recorded(conn, batch_id):
                return Recorded([], duplicate_batch=True)
            by_key = self.correlator.assign(conn, candidates, now_ns=received,
                                            windows=windows or None)
            members: dict[str, list[Alert]] = {}
            for key, alert in zip(keys, alerts, strict=True):
                members.setdefault(key, []).append(alert)
            groups = [recording.AlertGroup(by_key[k], k, a) for k, a in members.items()]
            outcomes = recording.record_groups(conn, groups, received_ns=received,
                                               policy=self.policy, past_first=self._past_first)
            opened = [o.incident_id for o in outcomes if o.opened]
            started: list[str] = []
            # A rule new to an incident may belong to another playbook (a shell, then a dropped
            # binary): each playbook gets its run, once per incident (create_run is idempotent).
            fresh = {o.incident_id: set(o.new_rules) for o in outcomes if o.new_rules}
            if self.planner is not None and fresh:
                started = self.planner.plan(conn, [
                    recording.AlertGroup(g.incident_id, g.key,
                                         [a for a in g.alerts if a.rule in fresh[g.incident_id]])
                    for g in groups if g.incident_id in fresh], now_ns=received)
            if batch_id is not None:
                recording.mark_batch(conn, batch_id, total or len(alerts), received)
        past_first = self._past_first
        if len(past_first) > 100_000:  # bounded: forgetting only costs a few more sample rows
            past_first.clear()
        past_first.update(o.incident_id for o in outcomes
                          if o.alert_count >= self.policy.sample_first)
        self._dispatch(started)
        return Recorded([by_key[k] for k in keys], opened=opened, runs=started)

    def _dispatch(self, run_ids: list[str]) -> None:
        if self.dispatcher is None:
            return
        for run_id in run_ids:
            try:
                self.dispatcher.start(run_id)
            except Exception as exc:  # the beat starts runs whose dispatch was lost
                log.warning("run.dispatch_failed", run=run_id, error=repr(exc))

    def flush_suppressions(self) -> None:
        """Write the suppression hits counted so far (on shutdown)."""
        if self.suppressions is not None:
            self.suppressions.flush()

    def flush_audit(self) -> int:
        """Owed ``alerts.received`` records for quiet incidents (called periodically)."""
        with self.engine.begin() as conn:
            return recording.flush_received(conn, now_ns=now_ns(), policy=self.policy)
