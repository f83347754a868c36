"""Run state: JSON-serialisable, so that any worker can pick a run up where another left it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Step statuses.
PENDING, RUNNING, WAITING, RETRY_WAIT = "pending", "running", "waiting", "retry_wait"
SUCCEEDED, FAILED, SKIPPED = "succeeded", "failed", "skipped"
STEP_DONE = frozenset({SUCCEEDED, FAILED, SKIPPED})
# Run statuses (RUNNING, WAITING, SUCCEEDED, FAILED are shared with steps).
RUN_DONE = frozenset({SUCCEEDED, FAILED})


@dataclass
class StepState:
    status: str = PENDING
    attempt: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    started_ns: int | None = None
    finished_ns: int | None = None
    #: When the current attempt times out (running), is retried (retry_wait) or expires (waiting).
    due_ns: int | None = None
    #: The rendered parameters of an approval step, as the approvers were asked.
    params: dict[str, Any] | None = None


@dataclass
class RunState:
    run_id: str
    playbook: str
    status: str = "pending"
    cursor: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        steps = {k: StepState(**v) for k, v in data.get("steps", {}).items()}
        return cls(run_id=data["run_id"], playbook=data["playbook"], status=data["status"],
                   cursor=data["cursor"], steps=steps, error=data.get("error"))

    @classmethod
    def new(cls, run_id: str, playbook: str, step_ids: list[str]) -> RunState:
        return cls(run_id=run_id, playbook=playbook, steps={s: StepState() for s in step_ids})
