"""Which playbook handles an alert: every ``match`` condition holds; highest precedence wins."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from responder.models.alerts import Alert
from responder.playbooks.schema import FieldCondition, Match, Playbook, parse_threshold

_MISSING = object()


@lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def matches(match: Match, alert: Alert) -> bool:
    if (match.rules or match.rules_regex) and alert.rule not in match.rules and not any(
            _regex(p).search(alert.rule) for p in match.rules_regex):
        return False
    if match.priority is not None and not _priority_ok(match.priority, alert):
        return False
    tags = set(alert.tags)
    if match.tags.any and not tags.intersection(match.tags.any):
        return False
    if match.tags.all and not tags.issuperset(match.tags.all):
        return False
    if match.namespaces.include and alert.namespace not in match.namespaces.include:
        return False
    if match.namespaces.exclude and alert.namespace in match.namespaces.exclude:
        return False
    return all(_condition(c, alert) for c in match.output_fields)


def _priority_ok(threshold: str, alert: Alert) -> bool:
    op, level = parse_threshold(threshold)
    # Ranks run the other way (Emergency is 0): ">=Error" means at least as severe as Error.
    severity, wanted = -int(alert.priority), -int(level)
    return {">=": severity >= wanted, ">": severity > wanted, "<=": severity <= wanted,
            "<": severity < wanted, "==": severity == wanted}[op]


def _condition(cond: FieldCondition, alert: Alert) -> bool:
    value = alert.fields.get(cond.field, _MISSING)
    present = value is not _MISSING and value is not None
    given = cond.model_fields_set
    if "exists" in given:
        return present == cond.exists
    if "equals" in given:
        return present and _same(value, cond.equals)
    if "not_equals" in given:
        return not present or not _same(value, cond.not_equals)
    if "in_" in given:
        return present and any(_same(value, v) for v in cond.in_ or [])
    if "not_in" in given:
        return not present or not any(_same(value, v) for v in cond.not_in or [])
    if "regex" in given:
        return present and isinstance(value, str) and bool(_regex(cond.regex or "").search(value))
    return False


def _same(a: object, b: object) -> bool:
    """Equality that keeps booleans apart from numbers (in Python, ``0 == False``)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def select(playbooks: Sequence[Playbook], alert: Alert) -> Playbook | None:
    """The enabled playbook for this alert: highest precedence, then name, for determinism."""
    candidates = [p for p in playbooks if p.enabled and matches(p.match, alert)]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (-p.precedence, p.name))
