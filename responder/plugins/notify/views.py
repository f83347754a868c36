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
    on_timeout: str | None = None  # the option an expiry takes (none: the step fails)


@dataclass
class StepView:
    id: str
    uses: str
    status: str
    outcome: str | None = None  # e.g. an action's result status


@dataclass
class ProcessTreeView:
    """An ``evidence.process_tree`` step's result (responder.agent.models.ProcessTreeResult)."""

    step_id: str
    method: str  # node-agent | exec
    assurance: str  # high | low
    node: str | None
    container_id: str
    processes_total: int
    excerpt: str  # rendered lines around the flagged process; ``>>`` marks it
    flagged: list[str] = field(default_factory=list)  # one line per flagged process
    truncated: bool = False


@dataclass
class DiffEntryView:
    kind: str  # A | C | D
    path: str
    type: str | None = None
    sha256: str | None = None
    executable: bool = False
    elf: bool = False
    script: bool = False
    flagged: bool = False
    quarantined: bool = False


@dataclass
class FilesystemDiffView:
    """An ``evidence.filesystem_diff`` step's result (FilesystemDiffResult)."""

    step_id: str
    method: str
    assurance: str
    node: str | None
    added: int
    changed: int
    deleted: int
    executables_added: int
    notable: list[DiffEntryView] = field(default_factory=list)  # flagged first
    quarantined: int = 0
    truncated: bool = False


@dataclass
class DigestEntry:
    """One line of a channel's digest of waiting prompts."""

    incident_id: str
    priority: str
    rules: list[str]
    namespace: str | None
    pod: str | None


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
    process_trees: list[ProcessTreeView] = field(default_factory=list)
    diffs: list[FilesystemDiffView] = field(default_factory=list)
