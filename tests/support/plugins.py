"""Plug-ins for tests, loaded by workers through DRIFT_PLUGIN_MODULES=tests.support.plugins."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from responder.plugins.registry import StepContext, plugin


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0, le=60)
    label: str


class SleepResult(BaseModel):
    label: str
    slept: float


@plugin("test.sleep", description="Sleep, then record one test.effect audit record.",
        params=SleepParams, result=SleepResult, example={"seconds": 1, "label": "a"})
def sleep(ctx: StepContext, params: SleepParams) -> SleepResult:
    time.sleep(params.seconds)
    ctx.audit("test.effect", {"label": params.label, "step": ctx.step_id})
    return SleepResult(label=params.label, slept=params.seconds)


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: int = Field(ge=0, description="Fail the first N attempts.")


class FailResult(BaseModel):
    attempt: int


@plugin("test.flaky", description="Fail the first `times` attempts, then succeed.",
        params=FailParams, result=FailResult, example={"times": 1})
def flaky(ctx: StepContext, params: FailParams) -> FailResult:
    if ctx.attempt <= params.times:
        raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
    return FailResult(attempt=ctx.attempt)
