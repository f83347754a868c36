"""The conductor decides; it never acts.

``conduct(playbook, kinds, state, event, context)`` returns the next state and the directives
that the caller (a Celery task, a rehearsal) must carry out: run a step, request an approval,
write audit records, finish the run. Events that do not fit the state (a redelivered message, a
late result of a timed-out attempt) change nothing and are reported as stale, which is what makes
every worker task idempotent.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from pydantic import BaseModel, ValidationError

from responder.conducting import events as ev
from responder.conducting.state import (
    FAILED,
    PENDING,
    RETRY_WAIT,
    RUN_DONE,
    RUNNING,
    SKIPPED,
    STEP_DONE,
    SUCCEEDED,
    WAITING,
    RunState,
    StepState,
)
from responder.playbooks import expressions
from responder.playbooks.schema import Playbook, Step

NS = 1_000_000_000


class Kind(Protocol):
    @property
    def params(self) -> type[BaseModel]: ...
    @property
    def is_approval(self) -> bool: ...
    @property
    def default_timeout(self) -> float: ...


@dataclass
class Decision:
    state: RunState
    directives: list[ev.Directive] = field(default_factory=list)
    stale: bool = False


def scope(state: RunState, context: Mapping[str, Any]) -> dict[str, Any]:
    """What expressions see: the run's context plus ``steps.<id>`` (status, result, error,
    attempt). The conductor and the worker render with this one function."""
    steps = {sid: {"status": s.status, "result": s.result, "error": s.error,
                   "attempt": s.attempt} for sid, s in state.steps.items()}
    return {**context, "steps": steps}


def digest(value: Any) -> str:
    try:
        canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # integers beyond 64 bits: the standard library has no such limit
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"),
                               default=str).encode()
    return hashlib.sha256(canonical).hexdigest()


class _Conducting:
    def __init__(self, playbook: Playbook, kinds: Mapping[str, Kind], state: RunState,
                 context: Mapping[str, Any], now_ns: int) -> None:
        self.playbook = playbook
        self.kinds = kinds
        self.state = state
        self.context = context
        self.now = now_ns
        self.out: list[ev.Directive] = []

    # -- helpers ---------------------------------------------------------------------------
    def audit(self, kind: str, **data: Any) -> None:
        self.out.append(ev.Audit(kind, data))

    def scope(self) -> dict[str, Any]:
        return scope(self.state, self.context)

    def finish(self, status: str, error: str | None = None) -> None:
        self.state.status = status
        self.state.error = error
        for step_state in self.state.steps.values():
            if step_state.status == PENDING:
                step_state.status = SKIPPED
        self.audit("run.finished", status=status, **({"error": error} if error else {}))
        self.out.append(ev.Finished(status))

    # -- moving forward --------------------------------------------------------------------
    def advance(self, start: int) -> None:
        steps = self.playbook.steps
        index = start
        while index < len(steps):
            step = steps[index]
            st = self.state.steps[step.id]
            self.state.cursor = index
            if st.status in STEP_DONE:
                index += 1
                continue
            if step.if_ is not None:
                try:
                    wanted = expressions.evaluate(step.if_, self.scope(), condition=True)
                except expressions.ExpressionError as exc:
                    if self.fail_step(step, st, f"if: {exc}", retryable=False):
                        return
                    index = self.after_failure_index(step)
                    continue
                if not wanted:
                    st.status = SKIPPED
                    st.finished_ns = self.now
                    self.audit("step.skipped", step=step.id, uses=step.uses)
                    index += 1
                    continue
            if self.begin(step, st, attempt=1):
                return
            index = self.after_failure_index(step)
        self.state.cursor = len(steps)
        self.finish(SUCCEEDED)

    def begin(self, step: Step, st: StepState, attempt: int) -> bool:
        """Start an attempt. True when the run now waits (for a worker or a person)."""
        try:
            params = expressions.render(step.with_, self.scope())
        except expressions.ExpressionError as exc:
            return self.fail_step(step, st, f"with: {exc}", retryable=False)
        kind = self.kinds.get(step.uses)
        if kind is None:
            return self.fail_step(step, st, f"unknown plug-in {step.uses!r}", retryable=False)
        try:
            validated = kind.params.model_validate(params)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'with'}: {e['msg']}"
                                 for e in exc.errors(include_url=False))
            return self.fail_step(step, st, f"with: {problems}", retryable=False)
        st.attempt = attempt
        st.started_ns = st.started_ns or self.now
        st.error = None
        if kind.is_approval:
            expires = self.now + int(float(getattr(validated, "expires_after_seconds",
                                                   1800)) * NS)
            st.params = params
            st.status = WAITING
            st.due_ns = expires
            self.state.status = WAITING
            self.audit("step.started", step=step.id, uses=step.uses, attempt=attempt)
            self.out.append(ev.RequestApproval(step.id, params, expires))
            return True
        timeout = step.timeout or kind.default_timeout
        st.status = RUNNING
        st.due_ns = self.now + int(timeout * NS)
        self.state.status = RUNNING
        self.audit("step.started", step=step.id, uses=step.uses, attempt=attempt)
        self.out.append(ev.RunStep(step.id, attempt, step.uses, params, timeout))
        return True

    def fail_step(self, step: Step, st: StepState, error: str, *, retryable: bool) -> bool:
        """Record a failed attempt. True when the run now waits (a retry, or it finished)."""
        st.error = error
        attempt = max(st.attempt, 1)
        if retryable and attempt <= step.retries.count:
            st.status = RETRY_WAIT
            st.due_ns = self.now + int(step.retries.delay(attempt) * NS)
            self.state.status = RUNNING
            self.audit("step.failed", step=step.id, uses=step.uses, attempt=attempt,
                       error=error, retry_at_ns=st.due_ns)
            return True
        st.status = FAILED
        st.due_ns = None
        st.finished_ns = self.now
        self.audit("step.failed", step=step.id, uses=step.uses, attempt=attempt, error=error)
        if step.on_failure == "fail":
            self.finish(FAILED, f"step {step.id} failed: {error}")
            return True
        return False

    def after_failure_index(self, step: Step) -> int:
        """Where a run goes on after ``step`` failed with on_failure continue or a step id."""
        if step.on_failure == "continue":
            return self.playbook.index(step.id) + 1
        target = self.playbook.index(step.on_failure)
        for skipped in self.playbook.steps[self.playbook.index(step.id) + 1:target]:
            sst = self.state.steps[skipped.id]
            if sst.status == PENDING:
                sst.status = SKIPPED
                self.audit("step.skipped", step=skipped.id, uses=skipped.uses,
                           reason=f"on_failure of {step.id}")
        return target

    def continue_after(self, step: Step) -> None:
        self.advance(self.playbook.index(step.id) + 1)

    def failed_and_go_on(self, step: Step, st: StepState, error: str, *,
                         retryable: bool) -> None:
        if not self.fail_step(step, st, error, retryable=retryable):
            self.advance(self.after_failure_index(step))


def conduct(playbook: Playbook, kinds: Mapping[str, Kind], state: RunState, event: ev.Event,
            context: Mapping[str, Any]) -> Decision:
    """Apply one event. The input state is not modified."""
    new = copy.deepcopy(state)
    c = _Conducting(playbook, kinds, new, context, event.now_ns)
    stale = Decision(state, [], stale=True)
    if new.status in RUN_DONE:
        return stale

    if isinstance(event, ev.Start):
        if new.status != "pending":
            return stale
        c.audit("run.started", playbook=playbook.name, steps=[s.id for s in playbook.steps])
        c.advance(0)
        return Decision(new, c.out)

    step_id = event.step_id
    if step_id not in new.steps:
        return stale
    step = playbook.step(step_id)
    st = new.steps[step_id]

    if isinstance(event, ev.StepSucceeded):
        if st.status != RUNNING or st.attempt != event.attempt:
            return stale
        st.status, st.result, st.error = SUCCEEDED, event.result, None
        st.finished_ns, st.due_ns = event.now_ns, None
        c.audit("step.succeeded", step=step_id, uses=step.uses, attempt=event.attempt,
                result_sha256=digest(event.result))
        c.continue_after(step)
    elif isinstance(event, ev.StepFailed | ev.StepTimedOut):
        if st.status != RUNNING or st.attempt != event.attempt:
            return stale
        error = event.error if isinstance(event, ev.StepFailed) else \
            f"timed out (attempt {event.attempt})"
        c.failed_and_go_on(step, st, error, retryable=True)
    elif isinstance(event, ev.RetryDue):
        if st.status != RETRY_WAIT or event.attempt != st.attempt + 1 or \
                (st.due_ns is not None and event.now_ns < st.due_ns):
            return stale
        if not c.begin(step, st, attempt=event.attempt):
            c.advance(c.after_failure_index(step))
    elif isinstance(event, ev.ApprovalDecided):
        if st.status != WAITING or (st.due_ns is not None and event.now_ns >= st.due_ns):
            return stale  # too late: the approval has expired, on_timeout will apply
        result = {"option": event.option, "decided_by": list(event.decided_by),
                  "expired": False, "reason": event.reason}
        st.status, st.result, st.finished_ns, st.due_ns = SUCCEEDED, result, event.now_ns, None
        c.audit("approval.decided", step=step_id, option=event.option,
                decided_by=list(event.decided_by), **({"reason": event.reason}
                                                       if event.reason else {}))
        c.audit("step.succeeded", step=step_id, uses=step.uses, attempt=st.attempt,
                result_sha256=digest(result))
        c.continue_after(step)
    elif isinstance(event, ev.ApprovalExpired):
        if st.status != WAITING or (st.due_ns is not None and event.now_ns < st.due_ns):
            return stale
        on_timeout = (st.params or {}).get("on_timeout")
        c.audit("approval.expired", step=step_id, on_timeout=on_timeout)
        if on_timeout:
            result = {"option": on_timeout, "decided_by": ["system:expiry"], "expired": True,
                      "reason": None}
            st.status, st.result, st.finished_ns, st.due_ns = (SUCCEEDED, result, event.now_ns,
                                                               None)
            c.audit("step.succeeded", step=step_id, uses=step.uses, attempt=st.attempt,
                    result_sha256=digest(result))
            c.continue_after(step)
        else:
            c.failed_and_go_on(step, st, "approval expired with no on_timeout option",
                               retryable=False)
    else:  # pragma: no cover - exhaustive over Event
        return stale
    return Decision(new, c.out)
