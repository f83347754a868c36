"""Core steps: approval requests, audit notes, computed values."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from responder.plugins.registry import StepContext, plugin


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApprovalParams(_Params):
    prompt: str = Field(default="", max_length=4000, description="What is being decided.")
    options: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{1,40}$")]] = Field(
        default=["isolate", "evict", "dismiss"], min_length=1, max_length=10,
        description="Lowercase names (letters, digits, _ . -): they become button ids.")
    approvers: list[str] = Field(
        min_length=1, description="Who may decide: cli:<name>, slack:<user id>, "
        "slack-group:<handle>; '*' after the colon allows anyone of that kind.")
    two_person: list[str] = Field(
        default_factory=list, description="Options that need two distinct approvers.")
    expires_after_seconds: float = Field(default=1800, gt=0, le=7 * 86400)
    on_timeout: str | None = Field(default=None, description="Option taken when it expires; "
                                   "none means the step fails when it expires.")
    channel: str | None = Field(default=None, max_length=80, description="Chat channel for "
                                "the prompt (default: per-namespace route, then "
                                "DRIFT_SLACK_CHANNEL).")

    @model_validator(mode="after")
    def _known_options(self) -> ApprovalParams:
        unknown = [o for o in [*self.two_person, self.on_timeout] if o and o not in self.options]
        if unknown:
            raise ValueError(f"not among the options: {', '.join(unknown)}")
        if len(set(self.options)) != len(self.options):
            raise ValueError("options repeat")
        return self


class ApprovalResult(BaseModel):
    option: str
    decided_by: list[str]
    expired: bool = False
    reason: str | None = None


@plugin(
    "core.approval",
    description="Ask people to choose an option (isolate, evict, dismiss...). The run waits "
    "without holding a worker; the first valid decision wins; expiry takes on_timeout.",
    params=ApprovalParams, result=ApprovalResult, is_approval=True,
    example={"options": ["isolate", "dismiss"], "approvers": ["cli:*", "slack-group:secops"],
             "expires_after_seconds": 1800, "on_timeout": "dismiss"},
)
def approval(_: StepContext, params: ApprovalParams) -> ApprovalResult:
    # The conductor suspends on approval steps; this runs only in rehearsals without a decision.
    raise RuntimeError("core.approval is decided by people, not run")


# The same request, named for where it is answered: the prompt goes to Slack (the notifier
# picks Slack whenever a bot token is configured, for either name).
plugin("slack.prompt",
       description="An approval asked in Slack: the incident message with one button per "
                   "option, in `channel` (or the namespace's route, or DRIFT_SLACK_CHANNEL).",
       params=ApprovalParams, result=ApprovalResult, is_approval=True,
       example={"channel": "#secops", "options": ["isolate", "evict", "dismiss"],
                "approvers": ["slack-group:secops"], "two_person": ["evict"],
                "on_timeout": "isolate"})(approval)


class NoteParams(_Params):
    message: str = Field(min_length=1, max_length=8000)
    data: dict[str, Any] = Field(default_factory=dict)


class NoteResult(BaseModel):
    message: str


def _note(kind: str) -> Any:
    def run(ctx: StepContext, params: NoteParams) -> NoteResult:
        ctx.audit(kind, {"message": params.message, **({"data": params.data} if params.data
                                                        else {})})
        return NoteResult(message=params.message)

    return run


plugin("core.note", description="Record a note about the incident in the audit trail.",
       params=NoteParams, result=NoteResult,
       example={"message": "Drift in {{ incident.namespace }}/{{ incident.pod }}"},
       default_timeout=10)(_note("note"))
plugin("core.log", description="Record a log line in the audit trail (kind 'log').",
       params=NoteParams, result=NoteResult, example={"message": "decided {{ steps.ask.result."
                                                      "option }}"},
       default_timeout=10)(_note("log"))


class SetParams(_Params):
    model_config = ConfigDict(extra="allow")


class SetResult(BaseModel):
    model_config = ConfigDict(extra="allow")


@plugin("core.set", description="Compute values for later steps (steps.<id>.result.<name>).",
        params=SetParams, result=SetResult,
        example={"target": "{{ incident.namespace }}/{{ incident.pod }}"}, default_timeout=10)
def set_values(_: StepContext, params: SetParams) -> SetResult:
    return SetResult(**(params.model_extra or {}))
