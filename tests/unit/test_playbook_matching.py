"""Which playbook handles an alert: every ``match`` condition must hold; precedence decides."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from responder.models.alerts import Alert, parse_alert
from responder.playbooks.matching import matches, select
from responder.playbooks.schema import Match, Playbook
from tests.support import samples

DROP = "Drop and execute new binary in container"


def alert(name: str = "sidekick-drop-and-execute.json", **changes: Any) -> Alert:
    raw = copy.deepcopy(samples.load(name))
    fields = changes.pop("output_fields", {})
    raw.update(changes)
    raw["output_fields"].update(fields)
    return parse_alert(raw)


def m(**spec: Any) -> Match:
    return Match.model_validate(spec)


def playbook(name: str, precedence: int = 100, enabled: bool = True, **match: Any) -> Playbook:
    return Playbook.model_validate({
        "name": name, "precedence": precedence, "enabled": enabled, "match": match,
        "steps": [{"id": "note", "uses": "core.note", "with": {"message": "hi"}}]})


# -- rules --------------------------------------------------------------------------------------

def test_match_without_conditions_matches_every_alert() -> None:
    for raw in samples.json_samples().values():
        assert matches(m(), parse_alert(raw))


def test_exact_rule_matches_only_that_rule() -> None:
    assert matches(m(rules=[DROP]), alert())
    assert not matches(m(rules=[DROP]), alert("falco-terminal-shell.json"))


def test_exact_rule_is_not_a_prefix_or_case_insensitive_match() -> None:
    assert not matches(m(rules=["Drop and execute"]), alert())
    assert not matches(m(rules=[DROP.lower()]), alert())


def test_any_listed_rule_matches() -> None:
    spec = m(rules=["Terminal shell in container", DROP])
    assert matches(spec, alert())
    assert matches(spec, alert("falco-terminal-shell.json"))
    assert not matches(spec, alert("sidekick-memfd-fileless.json"))


def test_rule_regex_searches_the_rule_name() -> None:
    spec = m(rules_regex=[r"^Container Drift Detected \("])
    assert matches(spec, alert("legacy-chmod-drift.json"))
    assert not matches(spec, alert())
    assert matches(m(rules_regex=["memfd"]), alert("sidekick-memfd-fileless.json"))


def test_rule_matches_when_either_exact_or_regex_does() -> None:
    spec = m(rules=[DROP], rules_regex=["Drift Detected"])
    assert matches(spec, alert())
    assert matches(spec, alert("legacy-chmod-drift.json"))
    assert not matches(spec, alert("falco-terminal-shell.json"))


BAD_REGEX_BUG = ("product bug: responder/playbooks/schema.py:43 and :64 call re.compile in "
                 "validators; re.error is not a ValueError, so pydantic lets it escape instead "
                 "of raising a ValidationError (and load_text/lint crash)")




# -- priority -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("threshold", "priority", "expected"), [
    (">=Error", "Emergency", True),
    (">=Error", "Critical", True),
    (">=Error", "Error", True),
    (">=Error", "Warning", False),
    (">=Error", "Notice", False),
    (">Error", "Error", False),
    (">Error", "Critical", True),
    ("<=Notice", "Notice", True),
    ("<=Notice", "Debug", True),
    ("<=Notice", "Warning", False),
    ("<Warning", "Warning", False),
    ("<Warning", "Notice", True),
    ("==Critical", "Critical", True),
    ("==Critical", "Alert", False),
    ("Critical", "Critical", True),
    ("Critical", "Error", False),
    (">= err", "Error", True),
    (">=warn", "Error", True),
])
def test_priority_threshold(threshold: str, priority: str, expected: bool) -> None:
    assert matches(m(priority=threshold), alert(priority=priority)) is expected


@pytest.mark.parametrize("threshold", ["at least Error", ">=Severe", "=>Error", ""])
def test_bad_priority_threshold_is_refused_by_the_schema(threshold: str) -> None:
    with pytest.raises(ValidationError, match="priority"):
        m(priority=threshold)


# -- tags ---------------------------------------------------------------------------------------

def test_tags_any_needs_one_of_them() -> None:
    assert matches(m(tags={"any": ["shell", "mitre_persistence"]}), alert())
    assert not matches(m(tags={"any": ["shell", "network"]}), alert())


def test_tags_all_needs_every_one_of_them() -> None:
    assert matches(m(tags={"all": ["container", "process"]}), alert())
    assert not matches(m(tags={"all": ["container", "shell"]}), alert())


def test_tags_any_and_all_must_both_hold() -> None:
    spec = m(tags={"any": ["shell", "process"], "all": ["container", "maturity_stable"]})
    assert matches(spec, alert())
    assert matches(spec, alert("falco-terminal-shell.json"))
    assert not matches(spec, alert(tags=["process", "container"]))


def test_alert_without_tags_fails_any_tag_condition() -> None:
    legacy = alert("legacy-chmod-drift.json")
    assert legacy.tags == ()
    assert not matches(m(tags={"any": ["container"]}), legacy)
    assert not matches(m(tags={"all": ["container"]}), legacy)
    assert matches(m(tags={"any": [], "all": []}), legacy)


# -- output fields ------------------------------------------------------------------------------

def cond(**spec: Any) -> Match:
    return m(output_fields=[spec])


def test_equals_compares_the_value() -> None:
    assert matches(cond(field="user.name", equals="www-data"), alert())
    assert not matches(cond(field="user.name", equals="root"), alert())
    assert matches(cond(field="user.uid", equals=33), alert())
    assert not matches(cond(field="user.uid", equals="33"), alert())


def test_equals_does_not_match_a_missing_or_null_field() -> None:
    assert not matches(cond(field="no.such.field", equals="x"), alert())
    legacy = alert("legacy-chmod-drift.json")  # <NA> is read as null
    assert legacy.fields["k8s.ns.name"] is None
    assert not matches(cond(field="k8s.ns.name", equals="<NA>"), legacy)


def test_not_equals_matches_other_missing_and_null_values() -> None:
    assert matches(cond(field="user.name", not_equals="root"), alert())
    assert not matches(cond(field="user.name", not_equals="www-data"), alert())
    assert matches(cond(field="no.such.field", not_equals="x"), alert())
    assert matches(cond(field="proc.name", not_equals="x"),
                   alert(output_fields={"proc.name": None}))


def test_in_matches_one_of_the_values() -> None:
    assert matches(cond(field="proc.name", **{"in": ["kworkerd", "xmrig"]}), alert())
    assert not matches(cond(field="proc.name", **{"in": ["xmrig"]}), alert())
    assert not matches(cond(field="no.such.field", **{"in": ["x", None]}), alert())
    assert not matches(cond(field="proc.name", **{"in": [None]}),
                       alert(output_fields={"proc.name": None}))


def test_not_in_matches_other_missing_and_null_values() -> None:
    assert matches(cond(field="proc.name", not_in=["xmrig"]), alert())
    assert not matches(cond(field="proc.name", not_in=["kworkerd"]), alert())
    assert matches(cond(field="no.such.field", not_in=["x"]), alert())
    assert matches(cond(field="proc.name", not_in=["kworkerd"]),
                   alert(output_fields={"proc.name": None}))


def test_regex_searches_text_values_only() -> None:
    assert matches(cond(field="proc.exepath", regex=r"^/tmp/"), alert())
    assert matches(cond(field="proc.cmdline", regex=r"stratum\+tcp://"), alert())
    assert not matches(cond(field="proc.exepath", regex=r"^/usr/"), alert())
    assert not matches(cond(field="user.uid", regex="33"), alert())  # a number, not text
    assert not matches(cond(field="no.such.field", regex=".*"), alert())
    assert not matches(cond(field="proc.exepath", regex=".*"),
                       alert(output_fields={"proc.exepath": None}))


def test_regex_matches_a_memfd_exepath() -> None:
    spec = cond(field="proc.exepath", regex=r"^memfd:")
    assert matches(spec, alert("sidekick-memfd-fileless.json"))
    assert not matches(spec, alert())


def test_exists_tells_present_from_missing_and_null() -> None:
    assert matches(cond(field="container.full_id", exists=True), alert())
    assert not matches(cond(field="container.full_id", exists=False), alert())
    other = alert("falco-http-output-drop-and-execute.json")  # has no container.full_id
    assert not matches(cond(field="container.full_id", exists=True), other)
    assert matches(cond(field="container.full_id", exists=False), other)
    legacy = alert("legacy-chmod-drift.json")  # "<NA>" counts as missing
    assert not matches(cond(field="k8s.pod.name", exists=True), legacy)
    assert matches(cond(field="k8s.pod.name", exists=False), legacy)


def test_a_zero_or_false_value_exists() -> None:
    assert matches(cond(field="proc.tty", exists=True), alert())
    assert alert().fields["proc.tty"] == 0


def test_every_field_condition_must_hold() -> None:
    spec = m(output_fields=[{"field": "proc.exepath", "regex": "^/tmp/"},
                            {"field": "user.uid", "equals": 0}])
    assert not matches(spec, alert())
    assert matches(spec, alert(output_fields={"user.uid": 0}))


@pytest.mark.parametrize("spec", [
    {"field": "proc.name"},
    {"field": "proc.name", "equals": "a", "regex": "b"},
    {"field": "proc.name", "exists": True, "not_in": []},
    {"field": "", "exists": True},
])
def test_field_condition_needs_exactly_one_valid_operator(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="output_fields"):
        m(output_fields=[spec])




# -- namespaces ---------------------------------------------------------------------------------

def test_namespace_include_matches_only_listed_namespaces() -> None:
    assert matches(m(namespaces={"include": ["shop", "payments"]}), alert())
    assert not matches(m(namespaces={"include": ["payments"]}), alert())


def test_namespace_include_does_not_match_an_alert_without_namespace() -> None:
    legacy = alert("legacy-chmod-drift.json")
    assert legacy.namespace is None
    assert not matches(m(namespaces={"include": ["shop"]}), legacy)


def test_namespace_exclude_drops_listed_namespaces() -> None:
    assert not matches(m(namespaces={"exclude": ["shop"]}), alert())
    assert matches(m(namespaces={"exclude": ["kube-system"]}), alert())
    kube = alert(output_fields={"k8s.ns.name": "kube-system"})
    assert not matches(m(namespaces={"exclude": ["kube-system"]}), kube)


def test_namespace_exclude_keeps_an_alert_without_namespace() -> None:
    assert matches(m(namespaces={"exclude": ["kube-system"]}),
                   alert("legacy-chmod-drift.json"))


def test_every_kind_of_condition_must_hold_together() -> None:
    spec = m(rules=[DROP], priority=">=Error", tags={"any": ["mitre_persistence"]},
             namespaces={"exclude": ["kube-system"]},
             output_fields=[{"field": "proc.exepath", "regex": "^/tmp/"}])
    assert matches(spec, alert())
    assert not matches(spec, alert(priority="Warning"))
    assert not matches(spec, alert(tags=["container"]))
    assert not matches(spec, alert(output_fields={"k8s.ns.name": "kube-system"}))
    assert not matches(spec, alert(output_fields={"proc.exepath": "/usr/bin/x"}))


# -- select ------------------------------------------------------------------------------------

def test_select_returns_none_when_nothing_matches() -> None:
    assert select([playbook("shell", rules=["Terminal shell in container"])], alert()) is None
    assert select([], alert()) is None


def test_select_prefers_the_higher_precedence() -> None:
    broad = playbook("broad", precedence=100, rules_regex=[".*"])
    narrow = playbook("narrow", precedence=300, rules=[DROP])
    assert select([broad, narrow], alert()) is narrow
    assert select([narrow, broad], alert()) is narrow
    assert select([broad, narrow], alert("falco-terminal-shell.json")) is broad


def test_select_breaks_precedence_ties_by_name() -> None:
    first = playbook("alpha", rules=[DROP])
    second = playbook("beta", rules=[DROP])
    assert select([second, first], alert()) is first
    assert select([first, second], alert()) is first


def test_select_skips_disabled_playbooks() -> None:
    off = playbook("off", precedence=900, enabled=False, rules=[DROP])
    on = playbook("on", precedence=100, rules=[DROP])
    assert select([off, on], alert()) is on
    assert select([off], alert()) is None


def test_select_skips_a_higher_precedence_playbook_that_does_not_match() -> None:
    system = playbook("system", precedence=500, rules=[DROP],
                      namespaces={"include": ["kube-system"]})
    drift = playbook("drift", precedence=300, rules=[DROP],
                     namespaces={"exclude": ["kube-system"]})
    assert select([system, drift], alert()) is drift
    kube = alert(output_fields={"k8s.ns.name": "kube-system"})
    assert select([system, drift], kube) is system
