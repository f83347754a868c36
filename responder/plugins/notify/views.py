"""The state a notification shows, assembled from the store. Pure data, rendered elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ApprovalView:
    id: str
    status: str
    options: list[str]
    approvers: list[str]
    two_person: list[str]
    prompt: str
    expires: str
    decided_option: str | None = None
    decided_by: list[str] = field(default_factory=list)
    decided_at: str | None = None
    reason: str | None = None
    votes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class StepView:
    id: str
    uses: str
    status: str
    outcome: str | None = None  # e.g. an action's result status


@dataclass
class PromptView:
    incident_id: str
    priority: str
    rules: list[str]
    namespace: str | None
    pod: str | None
    node: str | None
    container_id: str | None
    image: str | None
    alert_count: int
    output: str
    approval: ApprovalView | None = None
    run_status: str | None = None
    playbook: str | None = None
    steps: list[StepView] = field(default_factory=list)
    channel: str | None = None
