"""The plug-in registry.

A plug-in is a frozen description plus a ``run`` function. Built-ins register at import time with
``@plugin(...)``; third parties add theirs through the ``drift_responder.plugins`` entry point
group (each entry point names a module to import) or ``DRIFT_PLUGIN_MODULES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

ENTRY_POINT_GROUP = "drift_responder.plugins"


@dataclass(frozen=True, slots=True)
class RbacRule:
    """One Kubernetes RBAC rule the plug-in needs (what `drift-responder rbac` will print)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]


class StepContext(Protocol):
    """What a running step may see and do. Provided by the worker (or a rehearsal)."""

    run_id: str
    step_id: str
    attempt: int
    incident: Mapping[str, Any]
    alert: Mapping[str, Any]

    def audit(self, kind: str, data: dict[str, Any]) -> None:
        """Record an audit entry in the same transaction as the step's result."""

    def intend(self, kind: str, data: dict[str, Any]) -> int:
        """Write ahead: append an audit entry now, committed in its own transaction, before
        an effect a crash could otherwise leave unrecorded (a request about to change the
        cluster). Returns the entry's reference (its ``seq`` in the audit trail)."""

    def recall(self, kinds: Collection[str]) -> list[Recalled]:
        """Committed audit entries of these kinds recorded by this step of this run (any
        attempt, any delivery, this one's written-ahead entries included), oldest first."""


@dataclass(frozen=True, slots=True)
class Recalled:
    """An audit entry a step recorded earlier: its reference (``seq``), kind and data."""

    seq: int
    kind: str
    data: Mapping[str, Any]


@dataclass
class RecordingContext:
    """A StepContext that keeps the audit entries a plug-in records, for the caller to commit
    together with the step's result (or to show, in a rehearsal). Written-ahead entries are
    kept apart, in ``intended``, numbered from 1: the caller commits nothing ahead, so
    ``recall`` knows only those."""

    run_id: str
    step_id: str
    attempt: int
    incident: Mapping[str, Any]
    alert: Mapping[str, Any]
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    intended: list[Recalled] = field(default_factory=list)

    def audit(self, kind: str, data: dict[str, Any]) -> None:
        self.records.append((kind, data))

    def intend(self, kind: str, data: dict[str, Any]) -> int:
        entry = Recalled(len(self.intended) + 1, kind, data)
        self.intended.append(entry)
        return entry.seq

    def recall(self, kinds: Collection[str]) -> list[Recalled]:
        return [e for e in self.intended if e.kind in kinds]


P = TypeVar("P", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
Runner = Callable[[StepContext, Any], BaseModel]


@dataclass(frozen=True, slots=True)
class Plugin:
    name: str
    description: str
    params: type[BaseModel]
    result: type[BaseModel]
    run: Runner
    changes_cluster: bool = False
    is_approval: bool = False
    rbac: tuple[RbacRule, ...] = ()
    example: Mapping[str, Any] = field(default_factory=dict)
    default_timeout: float = 60.0
    #: Needs approval before it in a playbook even when other cluster-changing steps would not
    #: (e.g. a force delete): lint asks for an approval step that names it.
    needs_own_approval: bool = False
    #: Runs on the node agent of the step's ``node`` parameter (queue ``evidence.<node>``)
    #: when that agent is alive; otherwise on a worker, which falls back or fails clearly.
    node_routed: bool = False


class Registry:
    def __init__(self) -> None:
        self._plugins: dict[str, Plugin] = {}

    def add(self, plugin: Plugin) -> Plugin:
        if plugin.name in self._plugins and self._plugins[plugin.name] is not plugin:
            raise ValueError(f"plug-in {plugin.name!r} is registered twice")
        self._plugins[plugin.name] = plugin
        return plugin

    def get(self, name: str) -> Plugin | None:
        return self._plugins.get(name)

    def __getitem__(self, name: str) -> Plugin:
        return self._plugins[name]

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[Plugin]:
        return iter(sorted(self._plugins.values(), key=lambda p: p.name))

    def names(self) -> list[str]:
        return sorted(self._plugins)


#: The process-wide registry the built-ins register into.
REGISTRY = Registry()


def plugin(
    name: str, *, description: str, params: type[P], result: type[R],
    changes_cluster: bool = False, is_approval: bool = False, rbac: tuple[RbacRule, ...] = (),
    example: Mapping[str, Any] | None = None, default_timeout: float = 60.0,
    needs_own_approval: bool = False, node_routed: bool = False,
    registry: Registry = REGISTRY,
) -> Callable[[Callable[[StepContext, P], R]], Callable[[StepContext, P], R]]:
    """Register the decorated function as the plug-in ``name``."""

    def decorate(run: Callable[[StepContext, P], R]) -> Callable[[StepContext, P], R]:
        registry.add(Plugin(name=name, description=description, params=params, result=result,
                            run=run, changes_cluster=changes_cluster, is_approval=is_approval,
                            rbac=rbac, example=dict(example or {}),
                            default_timeout=default_timeout,
                            needs_own_approval=needs_own_approval,
                            node_routed=node_routed))
        return run

    return decorate


_loaded: set[str] = set()


def load_all(extra_modules: Iterable[str] = ()) -> Registry:
    """Import the built-ins, every entry point, and ``extra_modules``; idempotent."""
    if "builtins" not in _loaded:
        importlib.import_module("responder.plugins.core")
        importlib.import_module("responder.plugins.kubernetes")
        importlib.import_module("responder.plugins.evidence")
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            entry.load()
        _loaded.add("builtins")
    for module in extra_modules:
        importlib.import_module(module)
    return REGISTRY
