"""Label selectors evaluated locally (Services, NetworkPolicies, budgets against one pod)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions). An empty selector selects everything;
    ``None`` (absent) selects nothing, as for a PodDisruptionBudget without one."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and (not present or labels[key] not in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def service_selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service's plain map selector; a Service without one selects no pods."""
    if not selector:
        return False
    return all(labels.get(k) == v for k, v in selector.items())


def keys_of(selector: Mapping[str, Any] | None) -> set[str]:
    if not selector:
        return set()
    keys = set((selector.get("matchLabels") or {}).keys())
    keys.update(e.get("key") for e in selector.get("matchExpressions") or [] if e.get("key"))
    return keys
