"""Rehearsals: run a playbook against an alert with mocked plug-in results and decisions, and
compare the steps it takes with the ones expected. No broker, no cluster, no database.

A fixture (YAML)::

    name: isolates when an analyst approves
    playbook: drop-and-execute            # a playbook name in the playbooks directory
    alert_file: ../samples/drop.json      # or `alert:` inline
    results:                              # by step id: a result, a failure, or a list per attempt
      evidence: {result: {processes: 3}}
      flaky: [{fail: "timeout"}, {result: {}}]
    decisions:
      ask: {option: isolate, by: ["cli:alice"]}   # or {expire: true}
    expect:
      steps: [note, ask, isolate]         # the steps started, in order (retries repeat an id)
      status: succeeded
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from responder.conducting import events as ev
from responder.conducting.conductor import Kind, conduct
from responder.conducting.context import alert_context
from responder.conducting.state import RunState
from responder.models.alerts import InvalidAlert, parse_alert
from responder.playbooks.loading import parse_yaml
from responder.playbooks.schema import Playbook
from responder.plugins.registry import Plugin, RecordingContext

NS = 1_000_000_000
#: Plug-ins that compute without side effects run for real in rehearsals when not mocked.
PURE = frozenset({"core.set", "core.note", "core.log"})
MAX_EVENTS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Outcome(_Strict):
    result: dict[str, Any] | None = None
    fail: str | None = None
    timeout: bool = False


class DecisionSpec(_Strict):
    option: str | None = None
    by: list[str] = Field(default_factory=lambda: ["cli:rehearsal"])
    expire: bool = False


class Expectation(_Strict):
    steps: list[str]
    status: str
    skipped: list[str] | None = None


class Fixture(_Strict):
    name: str
    playbook: str
    alert: dict[str, Any] | None = None
    alert_file: str | None = None
    incident: dict[str, Any] = Field(default_factory=dict)
    results: dict[str, Outcome | list[Outcome]] = Field(default_factory=dict)
    decisions: dict[str, DecisionSpec] = Field(default_factory=dict)
    expect: Expectation


@dataclass
class Rehearsal:
    file: str
    name: str
    ok: bool
    problems: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    status: str | None = None
    audit: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def load_fixture(path: Path) -> tuple[Fixture | None, list[str]]:
    source, problems = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if source is None or problems:
        return None, [str(p) for p in problems]
    try:
        return Fixture.model_validate(source.data), []
    except ValidationError as exc:
        return None, [str(source.problem(tuple(e["loc"]), f"{'.'.join(map(str, e['loc']))}: "
                                         f"{e['msg']}")) for e in exc.errors(include_url=False)]


def rehearse(fixture: Fixture, file: Path, playbooks: Mapping[str, Playbook],
             plugins: Mapping[str, Plugin]) -> Rehearsal:
    report = Rehearsal(str(file), fixture.name, ok=False)
    playbook = playbooks.get(fixture.playbook)
    if playbook is None:
        report.problems.append(f"no playbook named {fixture.playbook!r}")
        return report
    raw = fixture.alert
    if fixture.alert_file:
        try:
            raw = orjson.loads((file.parent / fixture.alert_file).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            report.problems.append(f"cannot read alert_file {fixture.alert_file!r}: {exc}")
            return report
    if raw is None:
        report.problems.append("give alert or alert_file")
        return report
    try:
        alert = parse_alert(raw)
    except InvalidAlert as exc:
        report.problems.append(f"the fixture's alert is invalid: {exc}")
        return report
    context = {"alert": alert_context(alert),
               "incident": {"id": "REHEARSAL", "namespace": alert.namespace, "pod": alert.pod,
                            "node": alert.node, "image": alert.image, "alert_count": 1,
                            "rules": [alert.rule], "priority": alert.priority.label,
                            **fixture.incident}}
    kinds: Mapping[str, Kind] = plugins
    state = RunState.new("rehearsal", playbook.name, [s.id for s in playbook.steps])
    attempts: dict[str, int] = {}
    now = 1_000 * NS
    queue: list[ev.Event] = [ev.Start(now)]
    for _ in range(MAX_EVENTS):
        if not queue:
            break
        event = queue.pop(0)
        decision = conduct(playbook, kinds, state, event, context)
        state = decision.state
        for directive in decision.directives:
            now += NS
            if isinstance(directive, ev.Audit):
                report.audit.append((directive.kind, directive.data))
                if directive.kind == "step.started":
                    report.started.append(directive.data["step"])
                elif directive.kind == "step.failed" and "retry_at_ns" in directive.data:
                    queue.append(ev.RetryDue(directive.data["step"],
                                             directive.data["attempt"] + 1,
                                             directive.data["retry_at_ns"]))
            elif isinstance(directive, ev.RunStep):
                queue.append(_run(directive, fixture, attempts, plugins=plugins,
                                  context=context, report=report, now=now))
            elif isinstance(directive, ev.RequestApproval):
                spec = fixture.decisions.get(directive.step_id)
                if spec is None:
                    report.problems.append(f"no decision given for approval step "
                                           f"{directive.step_id!r}")
                    return report
                if spec.expire:
                    queue.append(ev.ApprovalExpired(directive.step_id, directive.expires_ns))
                else:
                    queue.append(ev.ApprovalDecided(directive.step_id, spec.option or "",
                                                    spec.by, now))
    report.status = state.status
    if report.started != fixture.expect.steps:
        report.problems.append(f"steps started {report.started}, expected "
                               f"{fixture.expect.steps}")
    if state.status != fixture.expect.status:
        report.problems.append(f"run {state.status}, expected {fixture.expect.status}"
                               + (f" ({state.error})" if state.error else ""))
    if fixture.expect.skipped is not None:
        skipped = [sid for sid, s in state.steps.items() if s.status == "skipped"]
        if skipped != fixture.expect.skipped:
            report.problems.append(f"steps skipped {skipped}, expected "
                                   f"{fixture.expect.skipped}")
    report.ok = not report.problems
    return report


def _run(directive: ev.RunStep, fixture: Fixture, attempts: dict[str, int], *,
         plugins: Mapping[str, Plugin], context: Mapping[str, Any], report: Rehearsal,
         now: int) -> ev.Event:
    sid = directive.step_id
    attempts[sid] = attempts.get(sid, 0) + 1
    mocked = fixture.results.get(sid)
    outcome: Outcome | None
    if isinstance(mocked, list):
        outcome = mocked[min(attempts[sid], len(mocked)) - 1] if mocked else None
    else:
        outcome = mocked
    if outcome is not None:
        if outcome.timeout:
            return ev.StepTimedOut(sid, directive.attempt, now)
        if outcome.fail is not None:
            return ev.StepFailed(sid, directive.attempt, outcome.fail, now)
        return ev.StepSucceeded(sid, directive.attempt, outcome.result or {}, now)
    plugin = plugins[directive.uses]
    if directive.uses not in PURE:
        return ev.StepSucceeded(sid, directive.attempt, {}, now)
    try:
        params = plugin.params.model_validate(directive.params)
        ctx = RecordingContext("rehearsal", sid, directive.attempt, context["incident"],
                               context["alert"], report.audit)
        return ev.StepSucceeded(sid, directive.attempt, plugin.run(ctx, params).model_dump(),
                                now)
    except (ValidationError, ValueError) as exc:
        return ev.StepFailed(sid, directive.attempt, str(exc), now)


def fixture_files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(path.rglob("*.yaml")) + sorted(path.rglob("*.yml")))
        else:
            found.append(path)
    return found
