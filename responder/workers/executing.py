"""The executor: everything a worker, the beat and the CLI do to runs, over the store.

Each change happens in one transaction: the run row is locked (PostgreSQL ``FOR UPDATE``; SQLite
has one writer), the conductor decides, and the new state, its audit records, leases and approval
requests are saved with a compare-and-set on the run's version. Work for other processes is
dispatched only after the commit; whatever a crash loses between the two, the beat's sweep finds
(pending runs, expired leases) and dispatches again. A step's plug-in runs outside the
transaction, and its own audit records are buffered and committed with its result, so that a
killed worker leaves no half-recorded effect; what it writes ahead of a cluster change (an
intent) is committed at once instead (see ``journaling``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import traceback
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy import Connection, Engine

from responder.conducting import events as ev
from responder.conducting.conductor import conduct
from responder.conducting.conductor import scope as conductor_scope
from responder.conducting.dispatching import Dispatcher
from responder.conducting.state import RETRY_WAIT, RUNNING, WAITING, RunState
from responder.models.identities import Identities
from responder.models.times import format_ns, now_ns
from responder.playbooks import expressions
from responder.playbooks.schema import Playbook
from responder.plugins.registry import Plugin, Registry
from responder.store import agents, artifacts, audit, runs
from responder.workers.journaling import CommittingContext

log = structlog.get_logger("drift.worker")
NS = 1_000_000_000
#: How long a dispatched attempt may wait for a worker before the beat sends it again.
DISPATCH_GRACE_S = 10.0
#: Deliveries of one attempt before the beat gives up and times the attempt out.
MAX_DISPATCHES = 3


@dataclass
class Applied:
    """What an applied event leaves to do once its transaction has committed."""

    steps: list[ev.RunStep]
    notify: str | None = None
    #: step id -> the queue of the node agent that runs it (absent: the run queue).
    queues: dict[str, str] = field(default_factory=dict)


@dataclass
class DecisionOutcome:
    ok: bool
    message: str
    approval_id: str | None = None
    decided: bool = False


def worker_identity() -> str:
    """host:pid:unique — one per execution, so that two threads (or two deliveries) of one
    process never both hold an attempt's lease."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Executor:
    def __init__(self, engine: Engine, registry: Registry, dispatcher: Dispatcher, *,
                 owner: str | None = None, grace_s: float = DISPATCH_GRACE_S,
                 agent_stale_s: float = 20.0, identities: Identities | None = None) -> None:
        self.grace_ns = int(grace_s * NS)
        self.agent_stale_ns = int(agent_stale_s * NS)
        self.engine = engine
        self.registry = registry
        self.dispatcher = dispatcher
        self.identities = identities or Identities()
        self._owner = owner
        self._specs: dict[str, Playbook] = {}

    @property
    def owner(self) -> str:
        # Computed per call: prefork children inherit this object but each has its own pid.
        return self._owner or worker_identity()

    # -- the core transaction -------------------------------------------------------------
    def apply(self, run_id: str, event: ev.Event, *,
              effects: list[tuple[str, dict[str, Any]]] | None = None,
              actor: str = "worker") -> bool:
        """Apply an event to a run in its own transaction. False when it was stale."""
        with self.engine.begin() as conn:
            dispatches = self.apply_in(conn, run_id, event, effects=effects, actor=actor)
        if dispatches is None:
            return False
        self.dispatch(run_id, dispatches)
        return True

    #: Audit kinds that change what the incident's message shows.
    NOTIFY_ON = frozenset({"approval.requested", "approval.decided", "approval.expired",
                           "approval.vote", "run.finished", "step.succeeded", "step.failed"})

    def apply_in(self, conn: Connection, run_id: str, event: ev.Event, *,
                 effects: list[tuple[str, dict[str, Any]]] | None = None,
                 actor: str = "worker") -> Applied | None:
        """Apply an event inside the caller's transaction. Returns what to dispatch after the
        commit (never before: other processes must see committed state), or None when the
        event was stale."""
        effects = effects or []
        record = runs.load_run(conn, run_id, for_update=True)
        if record is None:
            return None
        playbook = self._spec(record)
        state = RunState.from_json(record.state)
        decision = conduct(playbook, self.registry_kinds(), state, event, record.context)
        if decision.stale:
            log.info("run.stale_event", run=run_id, event_type=type(event).__name__)
            return None
        new = decision.state
        now = event.now_ns
        entries = [audit.AuditEntry(kind=k, actor=actor, incident_id=record.incident_id,
                                    data={"run": run_id, **d}) for k, d in effects]
        for kind, data in effects:
            if kind == "evidence.collected":  # indexed with its audit record, atomically
                artifacts.record(conn, artifacts.ArtifactRow(
                    incident_id=record.incident_id, sha256=data["sha256"],
                    name=str(data.get("name", ""))[:256],
                    media_type=str(data.get("media_type", "application/octet-stream")),
                    size=int(data["size"]), collector=str(data.get("collector", "")),
                    method=str(data.get("method", "")), node=data.get("node"), run_id=run_id,
                    step_id=data.get("step"), created_ns=now))
        out: list[ev.RunStep] = []  # dispatched after the commit
        queues: dict[str, str] = {}
        for directive in decision.directives:
            if isinstance(directive, ev.Audit):
                entries.append(audit.AuditEntry(
                    kind=directive.kind, actor=actor, incident_id=record.incident_id,
                    data={"run": run_id, "playbook": record.playbook, **directive.data}))
            elif isinstance(directive, ev.RunStep):
                runs.put_lease(conn, run_id=run_id, step_id=directive.step_id,
                               attempt=directive.attempt, timeout_s=directive.timeout_s,
                               deadline_ns=now + self.grace_ns)
                out.append(directive)
                queue = self._route(conn, record, new, directive.step_id, now)
                if queue is not None:
                    queues[directive.step_id] = queue
            elif isinstance(directive, ev.RequestApproval):
                approval_id = runs.create_approval(
                    conn, run_id=run_id, step_id=directive.step_id,
                    incident_id=record.incident_id, params=directive.params,
                    expires_ns=directive.expires_ns, now_ns=now)
                entries.append(audit.AuditEntry(
                    kind="approval.requested", actor=actor, incident_id=record.incident_id,
                    data={"run": run_id, "step": directive.step_id, "approval": approval_id,
                          "options": directive.params.get("options"),
                          "approvers": directive.params.get("approvers"),
                          "two_person": directive.params.get("two_person", []),
                          "expires": format_ns(directive.expires_ns)}))
        if isinstance(event, ev.StepSucceeded | ev.StepFailed | ev.StepTimedOut) and \
                new.steps[event.step_id].status != RUNNING:
            runs.drop_lease(conn, run_id=run_id, step_id=event.step_id)
        dues = [s.due_ns for s in new.steps.values()
                if s.due_ns is not None and s.status in (RETRY_WAIT, WAITING)]
        runs.save_run(conn, record, new.to_json(), status=new.status,
                      next_due_ns=min(dues) if dues else None, now_ns=now)
        audit.append(conn, entries)
        notify = record.incident_id if any(e.kind in self.NOTIFY_ON for e in entries) else None
        return Applied(out, notify, queues)

    def dispatch(self, run_id: str, applied: Applied | None) -> None:
        if applied is None:
            return
        for directive in applied.steps:
            try:
                self._send_step(run_id, directive.step_id, directive.attempt,
                                directive.timeout_s, applied.queues.get(directive.step_id))
            except Exception as exc:  # committed already: the beat re-sends unclaimed steps
                log.warning("step.dispatch_failed", run=run_id, step=directive.step_id,
                            error=repr(exc))
        if applied.notify is not None:
            try:
                self.dispatcher.notify(applied.notify)
            except Exception as exc:  # the next change notifies again; never fail the run
                log.warning("notify.dispatch_failed", incident=applied.notify, error=repr(exc))

    def _send_step(self, run_id: str, step_id: str, attempt: int, timeout_s: float,
                   queue: str | None) -> None:
        if queue is None:
            self.dispatcher.run_step(run_id, step_id, attempt, timeout_s)
        else:
            self.dispatcher.run_step(run_id, step_id, attempt, timeout_s, queue=queue)

    def _route(self, conn: Connection, record: runs.RunRecord, state: RunState, step_id: str,
               now: int) -> str | None:
        """The node agent's queue for a node-routed step whose agent is alive, else None (the
        run queue: there the plug-in falls back, or fails saying why)."""
        step = self._spec(record).step(step_id)
        plugin = self.registry.get(step.uses)
        if plugin is None or not plugin.node_routed:
            return None
        try:
            params = expressions.render(step.with_, conductor_scope(state, record.context))
        except Exception:  # the step itself reports the bad parameters
            return None
        node = params.get("node") if isinstance(params, dict) else None
        if not isinstance(node, str) or not node or params.get("via") == "exec":
            return None
        if agents.live(conn, node, now_ns=now, stale_ns=self.agent_stale_ns):
            return agent_queue(node)
        return None

    def _route_now(self, run_id: str, step_id: str) -> str | None:
        with self.engine.connect() as conn:
            record = runs.load_run(conn, run_id)
            if record is None:
                return None
            return self._route(conn, record, RunState.from_json(record.state), step_id,
                               now_ns())

    def registry_kinds(self) -> dict[str, Plugin]:
        return {p.name: p for p in self.registry}

    def _spec(self, record: runs.RunRecord) -> Playbook:
        key = hashlib.sha256(repr(sorted(record.spec.items())).encode()).hexdigest()
        spec = self._specs.get(key)
        if spec is None:
            spec = Playbook.model_validate(record.spec)
            self._specs[key] = spec
        return spec

    # -- tasks ----------------------------------------------------------------------------
    def start(self, run_id: str) -> bool:
        return self.apply(run_id, ev.Start(now_ns()))

    def run_step(self, run_id: str, step_id: str, attempt: int) -> str:
        """Run one attempt: claim its lease, run the plug-in, record the outcome. Idempotent."""
        now = now_ns()
        with self.engine.begin() as conn:
            record = runs.load_run(conn, run_id)
            if record is None:
                return "unknown run"
            step_state = RunState.from_json(record.state).steps.get(step_id)
            if step_state is None or step_state.status != RUNNING or \
                    step_state.attempt != attempt:
                return "already done"
            playbook = self._spec(record)
            step = playbook.step(step_id)
            plugin = self.registry.get(step.uses)
            timeout = step.timeout or (plugin.default_timeout if plugin else 60.0)
            owner = self.owner
            if not runs.claim_lease(conn, run_id=run_id, step_id=step_id, attempt=attempt,
                                    owner=owner, now_ns=now,
                                    deadline_ns=now + int(timeout * NS) + self.grace_ns):
                return "held elsewhere"
        scope = conductor_scope(RunState.from_json(record.state), record.context)
        # Written-ahead entries (intents) are stamped like the effects below, and name the
        # delivery: two deliveries of one attempt are told apart by their worker.
        ctx = CommittingContext(
            run_id, step_id, attempt, record.context.get("incident", {}),
            record.context.get("alert", {}), engine=self.engine, actor="worker",
            incident_id=record.incident_id,
            stamp={"run": run_id, "step": step_id, "attempt": attempt, "worker": owner})
        event: ev.Event
        try:
            if plugin is None:
                raise LookupError(f"unknown plug-in {step.uses!r}")
            params = plugin.params.model_validate(expressions.render(step.with_, scope))
            result = plugin.run(ctx, params)
            event = ev.StepSucceeded(step_id, attempt, result.model_dump(mode="json"), now_ns())
        except ValidationError as exc:
            event = ev.StepFailed(step_id, attempt, f"bad parameters: {exc}", now_ns())
        except Exception as exc:  # a plug-in's failure is the step's failure, recorded
            log.warning("step.failed", run=run_id, step=step_id, error=repr(exc),
                        trace=traceback.format_exc(limit=5))
            event = ev.StepFailed(step_id, attempt, f"{type(exc).__name__}: {exc}"[:2000],
                                  now_ns())
        # What the plug-in recorded happened, whatever became of the attempt: a failed attempt
        # may have changed the cluster before it failed.
        effects = [(kind, {**data, "step": step_id, "attempt": attempt,
                           **({} if isinstance(event, ev.StepSucceeded)
                              else {"attempt_failed": True})})
                   for kind, data in ctx.records]
        if self.apply(run_id, event, effects=effects):
            return "recorded"
        if effects:  # a late result (the attempt timed out meanwhile): keep its record anyway
            with self.engine.begin() as conn:
                audit.append(conn, [audit.AuditEntry(
                    kind=kind, actor="worker", incident_id=record.incident_id,
                    data={"run": run_id, **data, "stale": True}) for kind, data in effects])
        return "stale"

    # -- decisions ------------------------------------------------------------------------
    def decide(self, *, incident_id: str | None = None, approval_id: str | None = None,
               option: str, actor: str, reason: str | None = None,
               groups: Collection[str] = (), principal: str | None = None) -> DecisionOutcome:
        """A person's decision on a pending approval: authorised, two-person where asked,
        first valid decision wins. Refusals are audited too. ``groups`` are the chat user
        groups (handles) the transport found the actor to belong to. ``principal`` is who is
        really acting when the transport knows better than ``actor`` (the CLI's OS user behind
        any ``--as`` name): the two-person rule counts principals, not names."""
        now = now_ns()
        try:
            return self._decide(now, incident_id, approval_id, option=option, actor=actor,
                                reason=reason, groups=groups, principal=principal or actor)
        except _RolledBack as exc:
            return DecisionOutcome(False, str(exc))

    def _decide(self, now: int, incident_id: str | None, approval_id: str | None, *, option: str,
                actor: str, reason: str | None, groups: Collection[str],
                principal: str) -> DecisionOutcome:
        dispatches: Applied | None = None
        with self.engine.begin() as conn:
            approval = self._find_approval(conn, incident_id, approval_id)
            if approval is None:
                return DecisionOutcome(False, "no approval is waiting for a decision here")
            if approval.status != "pending":
                when = format_ns(approval.decided_ns) if approval.decided_ns else "?"
                return DecisionOutcome(
                    False, f"already {approval.status}: {approval.decided_option} by "
                    f"{', '.join(approval.decided_by)} at {when}", approval.id)
            if approval.expires_ns <= now:
                return DecisionOutcome(False, f"expired at {format_ns(approval.expires_ns)}; "
                                       "its on_timeout applies", approval.id)
            params = approval.params
            refusal = None
            if option not in params.get("options", []):
                refusal = f"{option!r} is not an option ({', '.join(params.get('options', []))})"
            elif not authorised(actor, params.get("approvers", []), groups):
                refusal = f"{actor} is not an approver of this step"
            if refusal is not None:
                audit.append(conn, [audit.AuditEntry(
                    kind="approval.refused", actor=actor, incident_id=approval.incident_id,
                    data={"run": approval.run_id, "step": approval.step_id,
                          "approval": approval.id, "option": option, "reason": refusal})])
                return DecisionOutcome(False, refusal, approval.id)
            deciders = [actor]
            first_vote = False
            if option in params.get("two_person", []):
                earlier = [v["by"] for v in approval.votes if v["option"] == option]
                person = self.identities.person
                same_person = any(person(v.get("principal", v["by"])) == person(principal)
                                  for v in approval.votes if v["option"] == option)
                if actor in earlier or same_person:
                    return DecisionOutcome(False, f"{actor} already voted for {option}; "
                                           "a second, different approver is needed",
                                           approval.id)
                if not earlier:
                    votes = [*approval.votes, {"by": actor, "principal": principal,
                                               "option": option, "at": format_ns(now)}]
                    if not runs.cas_vote(conn, approval, votes):
                        return DecisionOutcome(False, "the approval changed; try again",
                                               approval.id)
                    audit.append(conn, [audit.AuditEntry(
                        kind="approval.vote", actor=actor, incident_id=approval.incident_id,
                        data={"run": approval.run_id, "step": approval.step_id,
                              "approval": approval.id, "option": option})])
                    first_vote = True
                else:
                    deciders = [earlier[0], actor]
            if not first_vote:
                if not runs.cas_decide(conn, approval, option=option, decided_by=deciders,
                                       reason=reason, now_ns=now):
                    return DecisionOutcome(False, "someone else decided first", approval.id)
                dispatches = self.apply_in(
                    conn, approval.run_id,
                    ev.ApprovalDecided(approval.step_id, option, deciders, now, reason),
                    actor=actor)
                if dispatches is None:  # the run no longer waits for this: undo the CAS
                    raise _RolledBack("the run is no longer waiting for this decision")
        # Committed: now other processes may act on it.
        if first_vote:
            self.dispatch(approval.run_id, Applied([], approval.incident_id))
            return DecisionOutcome(True, f"{option}: first of two approvals recorded; waiting "
                                   "for a second approver", approval.id)
        self.dispatch(approval.run_id, dispatches)
        return DecisionOutcome(True, f"{option} decided by {', '.join(deciders)}", approval.id,
                               decided=True)

    @staticmethod
    def _find_approval(conn: Connection, incident_id: str | None,
                       approval_id: str | None) -> runs.ApprovalRecord | None:
        if approval_id is not None:
            return runs.get_approval(conn, approval_id)
        assert incident_id is not None
        found = runs.approvals_for_incident(conn, incident_id)
        pending = [a for a in found if a.status == "pending"]
        if pending:
            return pending[-1]
        return found[-1] if found else None

    # -- the beat's sweep -----------------------------------------------------------------
    def sweep(self) -> dict[str, int]:
        """Deadlines kept in the store, not in broker countdowns: lost starts, expired leases,
        due retries and expired approvals."""
        now = now_ns()
        counts = {"started": 0, "redispatched": 0, "timed_out": 0, "retried": 0, "expired": 0,
                  "dropped": 0}
        # A start still pending after two grace periods was probably lost; re-sent after 2, 4,
        # 8... periods (the touch), so that a backlog in the queue is not multiplied by the beat.
        quiet_ns = 2 * self.grace_ns
        with self.engine.connect() as conn:
            pending = runs.pending_runs(conn, untouched_since_ns=now - quiet_ns, now_ns=now)
            leases = runs.expired_leases(conn, now_ns=now)
            due = runs.due_runs(conn, now_ns=now)
            approvals = runs.expired_approvals(conn, now_ns=now)
        for run_id in pending:
            with self.engine.begin() as conn:
                touched = runs.touch_pending(conn, run_id, now_ns=now)
            if touched and self._guarded("start", run_id, self._send_start, run_id):
                counts["started"] += 1
        for lease in leases:
            outcome = self._guarded("lease", lease.run_id, self._sweep_lease, lease, now)
            if outcome:
                counts[outcome] += 1
        for approval in approvals:
            if self._guarded("expiry", approval.run_id, self._expire, approval, now):
                counts["expired"] += 1
        for run_id in due:
            counts["retried"] += self._guarded("retry", run_id, self._retry_due, run_id,
                                               now) or 0
        return counts

    def _guarded(self, what: str, run_id: str, fn: Any, *args: Any) -> Any:
        """One item's failure (a broker outage, a broken stored run) must not stop the sweep:
        the others still have deadlines, and the next sweep tries this one again."""
        try:
            return fn(*args)
        except Exception as exc:
            log.error("sweep.item_failed", what=what, run=run_id, error=repr(exc))
            return None

    def _send_start(self, run_id: str) -> bool:
        self.dispatcher.start(run_id)
        return True

    def _expire(self, approval: runs.ApprovalRecord, now: int) -> bool:
        with self.engine.begin() as conn:
            fresh = runs.get_approval(conn, approval.id)
            if fresh is None or not runs.cas_decide(
                    conn, fresh, option="", decided_by=["system:expiry"], reason="expired",
                    now_ns=now, status="expired"):
                return False
            dispatches = self.apply_in(conn, approval.run_id,
                                       ev.ApprovalExpired(approval.step_id, now),
                                       actor="system:expiry")
        self.dispatch(approval.run_id, dispatches)
        return True

    def _retry_due(self, run_id: str, now: int) -> int:
        with self.engine.connect() as conn:
            record = runs.load_run(conn, run_id)
        if record is None:
            return 0
        retried = 0
        for step_id, st in RunState.from_json(record.state).steps.items():
            if st.status == RETRY_WAIT and st.due_ns is not None and st.due_ns <= now and \
                    self.apply(run_id, ev.RetryDue(step_id, st.attempt + 1, now)):
                retried += 1
        return retried

    def _sweep_lease(self, lease: runs.Lease, now: int) -> str:
        with self.engine.begin() as conn:
            record = runs.load_run(conn, lease.run_id)
            step = RunState.from_json(record.state).steps.get(lease.step_id) if record else None
            if step is None or step.status != RUNNING or step.attempt != lease.attempt:
                runs.drop_lease(conn, run_id=lease.run_id, step_id=lease.step_id)
                return "dropped"
        if lease.owner is None:
            # Sent but never claimed: the message is queued behind others, or no worker runs.
            # Send again, less and less often; an attempt that never ran is never timed out.
            backoff = self.grace_ns * 2 ** min(lease.dispatches, 5)
            with self.engine.begin() as conn:
                renewed = runs.renew_dispatch(conn, lease, deadline_ns=now + backoff)
            if renewed:  # routed afresh: the node's agent may have come or gone meanwhile
                self._send_step(lease.run_id, lease.step_id, lease.attempt, lease.timeout_s,
                                self._route_now(lease.run_id, lease.step_id))
            return "redispatched"
        if lease.dispatches < MAX_DISPATCHES:
            # Claimed, then silent past its timeout: the worker died (or hangs). Send again.
            with self.engine.begin() as conn:
                renewed = runs.renew_dispatch(conn, lease,
                                              deadline_ns=now + self.grace_ns)
            if renewed:
                log.warning("lease.expired", run=lease.run_id, step=lease.step_id,
                            attempt=lease.attempt, owner=lease.owner,
                            dispatch=lease.dispatches + 1)
                self._send_step(lease.run_id, lease.step_id, lease.attempt, lease.timeout_s,
                                self._route_now(lease.run_id, lease.step_id))
                return "redispatched"
            return "redispatched"
        self.apply(lease.run_id, ev.StepTimedOut(lease.step_id, lease.attempt, now),
                   actor="system:lease")
        return "timed_out"


def agent_queue(node: str) -> str:
    return f"evidence.{node}"


class _RolledBack(Exception):
    pass


def authorised(actor: str, approvers: list[str], groups: Collection[str] = ()) -> bool:
    """``cli:alice`` is allowed by ``cli:alice`` or ``cli:*``; ``slack:U1`` also by
    ``slack-group:<handle>`` when the transport resolved U1 into that group."""
    kind = actor.split(":", 1)[0]
    if actor in approvers or f"{kind}:*" in approvers:
        return True
    return any(f"{kind}-group:{group}" in approvers for group in groups)
