"""What can happen to a run (events in) and what the conductor asks for (directives out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Start:
    now_ns: int


@dataclass(frozen=True)
class StepSucceeded:
    step_id: str
    attempt: int
    result: dict[str, Any]
    now_ns: int


@dataclass(frozen=True)
class StepFailed:
    step_id: str
    attempt: int
    error: str
    now_ns: int


@dataclass(frozen=True)
class StepTimedOut:
    step_id: str
    attempt: int
    now_ns: int


@dataclass(frozen=True)
class RetryDue:
    step_id: str
    attempt: int
    now_ns: int


@dataclass(frozen=True)
class ApprovalDecided:
    step_id: str
    option: str
    decided_by: list[str]
    now_ns: int
    reason: str | None = None


@dataclass(frozen=True)
class ApprovalExpired:
    step_id: str
    now_ns: int


Event = (Start | StepSucceeded | StepFailed | StepTimedOut | RetryDue | ApprovalDecided
         | ApprovalExpired)


@dataclass(frozen=True)
class RunStep:
    """Run attempt ``attempt`` of a step with these (rendered) parameters."""

    step_id: str
    attempt: int
    uses: str
    params: dict[str, Any]
    timeout_s: float


@dataclass(frozen=True)
class RequestApproval:
    step_id: str
    params: dict[str, Any]
    expires_ns: int


@dataclass(frozen=True)
class Audit:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finished:
    status: str


Directive = RunStep | RequestApproval | Audit | Finished
