"""The playbooks we ship: they lint, they route every drift rule, and each one is rehearsed."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from responder.conducting.rehearsing import fixture_files, load_fixture
from responder.models.alerts import parse_alert
from responder.playbooks.inspecting import lint_paths
from responder.playbooks.matching import select
from responder.playbooks.schema import Playbook
from responder.plugins import registry
from tests.support import samples

SHIPPED = Path(__file__).resolve().parents[2] / "playbooks"
REHEARSALS = SHIPPED / "rehearsals"

#: The drift rules of GUIDE.md section 4, at Falco's default priority, and where each goes.
DRIFT_RULES = {
    "Drop and execute new binary in container": ("Critical", "drop-and-execute"),
    "Container Drift Detected (chmod)": ("Error", "container-drift"),
    "Container Drift Detected (open+create)": ("Error", "container-drift"),
    "Fileless execution via memfd_create": ("Critical", "fileless-memfd"),
    "Execution from /dev/shm": ("Warning", "dev-shm-execution"),
    "Launch Package Management Process in Container": ("Error", "package-management"),
    "Terminal shell in container": ("Notice", "terminal-shell"),
}

#: Every sample in shared/samples/falco and the playbook that must handle it.
SAMPLE_ROUTES = {
    "sidekick-drop-and-execute.json": "drop-and-execute",
    "falco-http-output-drop-and-execute.json": "drop-and-execute",
    "legacy-chmod-drift.json": "container-drift",
    "sidekick-memfd-fileless.json": "fileless-memfd",
    "falco-terminal-shell.json": "terminal-shell",
}


@pytest.fixture(scope="module")
def shipped() -> list[Playbook]:
    catalog = {p.name: p for p in registry.load_all()}
    report = lint_paths([SHIPPED], catalog)
    assert report.problems == [], "\n".join(map(str, report.problems))
    assert len(report.playbooks) == len(report.loaded)
    return report.playbooks


def routed(playbooks: list[Playbook], raw: dict[str, Any]) -> str | None:
    chosen = select(playbooks, parse_alert(raw))
    return None if chosen is None else chosen.name


def synthetic(rule: str, priority: str, namespace: str = "shop") -> dict[str, Any]:
    raw = copy.deepcopy(samples.load("sidekick-drop-and-execute.json"))
    raw.update(rule=rule, priority=priority)
    raw["output_fields"]["k8s.ns.name"] = namespace
    return raw


def test_shipped_playbooks_lint_clean_and_have_unique_names(shipped: list[Playbook]) -> None:
    names = [p.name for p in shipped]
    assert len(names) == len(set(names))
    assert set(names) >= {route for _, route in DRIFT_RULES.values()}


def test_every_sample_is_covered_by_a_routing_expectation() -> None:
    assert set(samples.json_samples()) == set(SAMPLE_ROUTES)


@pytest.mark.parametrize(("sample", "expected"), sorted(SAMPLE_ROUTES.items()))
def test_every_sample_alert_is_routed_to_its_playbook(shipped: list[Playbook], sample: str,
                                                      expected: str) -> None:
    assert routed(shipped, samples.load(sample)) == expected


def test_every_alert_of_the_sample_batch_is_routed_by_its_rule(shipped: list[Playbook]) -> None:
    lines = (samples.samples_dir() / "batch.ndjson").read_text().splitlines()
    items = [json.loads(line) for line in lines if line.strip()]
    assert items
    for raw in items:
        assert routed(shipped, raw) == DRIFT_RULES[raw["rule"]][1], raw["rule"]


@pytest.mark.parametrize(("rule", "priority", "expected"),
                         [(rule, *spec) for rule, spec in DRIFT_RULES.items()])
def test_every_drift_rule_at_its_default_priority_is_routed(
        shipped: list[Playbook], rule: str, priority: str, expected: str) -> None:
    assert routed(shipped, synthetic(rule, priority)) == expected


@pytest.mark.parametrize("rule", [r for r in DRIFT_RULES if r != "Terminal shell in container"])
def test_drift_in_kube_system_is_only_observed(shipped: list[Playbook], rule: str) -> None:
    assert routed(shipped, synthetic(rule, DRIFT_RULES[rule][0], "kube-system")) == \
        "system-namespace-drift"


def test_terminal_shell_in_kube_system_is_still_observed(shipped: list[Playbook]) -> None:
    raw = synthetic("Terminal shell in container", "Notice", "kube-system")
    assert routed(shipped, raw) == "terminal-shell"


def test_drift_alerts_below_the_threshold_are_not_routed(shipped: list[Playbook]) -> None:
    assert routed(shipped, synthetic("Drop and execute new binary in container", "Warning")) \
        is None
    assert routed(shipped, synthetic("Execution from /dev/shm", "Notice")) is None
    assert routed(shipped, synthetic("Terminal shell in container", "Informational")) is None


def test_other_rules_are_not_routed(shipped: list[Playbook]) -> None:
    assert routed(shipped, synthetic("Read sensitive file untrusted", "Critical")) is None


def test_no_two_shipped_playbooks_share_precedence_and_a_rule(shipped: list[Playbook]) -> None:
    seen: dict[tuple[int, str], str] = {}
    for playbook in shipped:
        assert not playbook.match.rules_regex, playbook.name
        for rule in playbook.match.rules:
            other = seen.setdefault((playbook.precedence, rule), playbook.name)
            assert other == playbook.name, (rule, other, playbook.name)


def test_terminal_shell_playbook_observes_without_approval(shipped: list[Playbook]) -> None:
    terminal = next(p for p in shipped if p.name == "terminal-shell")
    assert {s.uses for s in terminal.steps} <= {"core.note", "core.log", "core.set"}


def test_system_namespace_playbook_only_observes(shipped: list[Playbook]) -> None:
    system = next(p for p in shipped if p.name == "system-namespace-drift")
    assert {s.uses for s in system.steps} <= {"core.note", "core.log", "core.set",
                                              "evidence.process_tree",
                                              "evidence.filesystem_diff"}
    # Evidence there comes from the node agent only: no exec into control-plane pods.
    assert all(s.with_.get("via") == "node" for s in system.steps
               if s.uses.startswith("evidence."))
    assert system.match.namespaces.include == ["kube-system", "kube-public", "kube-node-lease"]


def test_every_approval_is_bounded_and_makes_eviction_two_person(
        shipped: list[Playbook]) -> None:
    approvals = [(p, s) for p in shipped for s in p.steps if s.uses == "core.approval"]
    assert {p.name for p, _ in approvals} == {
        "drop-and-execute", "container-drift", "fileless-memfd", "dev-shm-execution",
        "package-management"}
    for playbook, step in approvals:
        params = step.with_
        assert params["options"] == ["isolate", "evict", "dismiss"], playbook.name
        assert params["two_person"] == ["evict"], playbook.name
        assert params["on_timeout"] in ("isolate", "dismiss"), playbook.name
        assert 0 < params["expires_after_seconds"] <= 3600, playbook.name
        assert "slack-group:secops" in params["approvers"], playbook.name
        assert "kube-system" in playbook.match.namespaces.exclude, playbook.name


def test_every_option_of_every_approval_is_recorded(shipped: list[Playbook]) -> None:
    for playbook in shipped:
        for step in playbook.steps:
            if step.uses != "core.approval":
                continue
            conditions = [s.if_ or "" for s in playbook.steps]
            for option in step.with_["options"]:
                wanted = f"steps.{step.id}.result.option == '{option}'"
                assert wanted in conditions, (playbook.name, option)


def _fixtures() -> list[tuple[Path, Any]]:
    out = []
    for path in fixture_files([REHEARSALS]):
        fixture, problems = load_fixture(path)
        assert fixture is not None, problems
        out.append((path, fixture))
    return out


def test_every_shipped_playbook_has_at_least_two_rehearsals(shipped: list[Playbook]) -> None:
    counts = Counter(fixture.playbook for _, fixture in _fixtures())
    assert set(counts) == {p.name for p in shipped}
    assert {name: n for name, n in counts.items() if n < 2} == {}


def test_every_rehearsal_alert_is_routed_to_the_rehearsed_playbook(
        shipped: list[Playbook]) -> None:
    for path, fixture in _fixtures():
        if fixture.alert_file is not None:
            raw = json.loads((path.parent / fixture.alert_file).read_text())
        else:
            raw = fixture.alert
        assert routed(shipped, raw) == fixture.playbook, path.name


def test_every_approval_playbook_is_rehearsed_through_expiry(shipped: list[Playbook]) -> None:
    expiring = {fixture.playbook for _, fixture in _fixtures()
                if any(d.expire for d in fixture.decisions.values())}
    with_approval = {p.name for p in shipped if any(s.uses == "core.approval" for s in p.steps)}
    assert with_approval <= expiring
