"""``playbooks lint``: every problem in a set of playbooks, each at its file:line:column.

Checks what the schema cannot: plug-ins exist and accept the parameters; step ids are unique and
every reference (``on_failure`` targets, ``steps.<id>`` in expressions) points at an earlier or,
for ``on_failure``, a later step; expressions parse; cluster-changing steps follow an approval
(unless ``auto: true``); playbooks that can match the same alert have distinct precedence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from responder.playbooks import expressions
from responder.playbooks.loading import Loaded, Problem, load_file, playbook_files
from responder.playbooks.schema import Playbook


class StepKind(Protocol):
    """What lint needs to know of a plug-in (the registry's Plugin satisfies it)."""

    @property
    def params(self) -> type[BaseModel]: ...
    @property
    def changes_cluster(self) -> bool: ...
    @property
    def is_approval(self) -> bool: ...
    @property
    def needs_own_approval(self) -> bool: ...


Catalog = Mapping[str, StepKind]


@dataclass
class Report:
    loaded: list[Loaded]
    problems: list[Problem]

    @property
    def playbooks(self) -> list[Playbook]:
        return [item.playbook for item in self.loaded if item.playbook is not None]


def lint_paths(paths: Iterable[Path], catalog: Catalog) -> Report:
    loaded = [load_file(p) for p in playbook_files(paths)]
    return lint_loaded(loaded, catalog)


def lint_loaded(loaded: Sequence[Loaded], catalog: Catalog) -> Report:
    problems: list[Problem] = []
    for item in loaded:
        problems.extend(item.problems)
        if item.playbook is not None:
            problems.extend(_lint_playbook(item, item.playbook, catalog))
    problems.extend(_overlaps(loaded))
    problems.sort(key=lambda p: (p.file, p.line, p.column))
    return Report(list(loaded), problems)


def _lint_playbook(item: Loaded, playbook: Playbook, catalog: Catalog) -> list[Problem]:
    src = item.source
    out: list[Problem] = []
    seen: dict[str, int] = {}
    for index, step in enumerate(playbook.steps):
        at = ("steps", index)
        if step.id in seen:
            out.append(src.problem((*at, "id"), f"duplicate step id {step.id!r}"))
        seen.setdefault(step.id, index)
        kind = catalog.get(step.uses)
        if kind is None:
            known = ", ".join(sorted(catalog))
            out.append(src.problem((*at, "uses"),
                                   f"unknown plug-in {step.uses!r} (known: {known})"))
        else:
            out.extend(_check_params(src, at, step.with_, kind.params))
            if kind.changes_cluster and not step.auto:
                approvals = [s for s in playbook.steps[:index]
                             if (k := catalog.get(s.uses)) is not None and k.is_approval]
                if not approvals:
                    out.append(src.problem((*at, "uses"),
                                           f"{step.uses} changes the cluster: put a "
                                           "core.approval step before it, or set auto: true"))
                elif kind.needs_own_approval and not _named_by_approval(step, approvals):
                    out.append(src.problem((*at, "if"),
                                           f"{step.uses} needs its own approval: its `if` must "
                                           "read an approval step's chosen option"))
        if step.on_failure not in ("fail", "continue"):
            target = next((i for i, s in enumerate(playbook.steps) if s.id == step.on_failure),
                          None)
            if target is None:
                out.append(src.problem((*at, "on_failure"),
                                       f"on_failure names unknown step {step.on_failure!r}"))
            elif target <= index:
                out.append(src.problem((*at, "on_failure"),
                                       "on_failure may only jump forward (to a later step)"))
        earlier = {s.id for s in playbook.steps[:index]}
        if step.if_ is not None:
            out.extend(_check_expression(src, (*at, "if"), step.if_, earlier, is_template=False))
        for path, template in _templates(step.with_, (*at, "with")):
            out.extend(_check_expression(src, path, template, earlier, is_template=True))
    return out


def _named_by_approval(step: Any, approvals: list[Any]) -> bool:
    if step.if_ is None:
        return False
    try:
        refs = set(expressions.step_references(expressions.check_expression(step.if_)))
    except expressions.ExpressionError:
        return True  # the expression check reports it; one problem is enough
    return any(a.id in refs for a in approvals)


def _check_params(src: Any, at: tuple[Any, ...], params: dict[str, Any],
                  model: type[BaseModel]) -> list[Problem]:
    """Validate parameters; values that are templates are only known at run time."""
    try:
        model.model_validate(params)
    except ValidationError as exc:
        out = []
        templated = any(True for _ in expressions.templates_in(params))
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            if not loc and templated:
                continue  # a check across parameters, some of which are only known at run time
            value: Any = params
            for part in loc:
                value = value.get(part) if isinstance(value, dict) else \
                    value[part] if isinstance(value, list) and isinstance(part, int) and \
                    part < len(value) else None
            if expressions.is_template(value):
                continue
            message = str(err["msg"]).removeprefix("Value error, ")
            where = ".".join(str(p) for p in loc)
            out.append(src.problem((*at, "with", *loc),
                                   f"with.{where}: {message}" if where else message))
        return out
    return []


def _check_expression(src: Any, path: tuple[Any, ...], source: str, earlier: set[str], *,
                      is_template: bool) -> list[Problem]:
    try:
        tree = (expressions.check_template(source) if is_template
                else expressions.check_expression(source))
    except expressions.ExpressionError as exc:
        return [src.problem(path, str(exc))]
    return [src.problem(path, f"reads steps.{ref}, which is not an earlier step")
            for ref in expressions.step_references(tree) if ref not in earlier]


def _templates(value: Any, path: tuple[Any, ...]) -> Iterable[tuple[tuple[Any, ...], str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _templates(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _templates(v, (*path, i))
    elif expressions.is_template(value):
        yield path, value


def _overlaps(loaded: Sequence[Loaded]) -> list[Problem]:
    """Enabled playbooks of equal precedence whose rule filters can select the same alert."""
    items = [(i, i.playbook) for i in loaded if i.playbook is not None and i.playbook.enabled]
    out: list[Problem] = []
    for a_index, (a_item, a) in enumerate(items):
        for b_item, b in items[a_index + 1:]:
            if a.precedence != b.precedence or not _may_overlap(a, b):
                continue
            for item, mine, other, other_item in ((a_item, a, b, b_item), (b_item, b, a, a_item)):
                out.append(item.source.problem(
                    ("precedence",) if "precedence" in item.source.data else ("name",),
                    f"playbook {mine.name!r} can match the same alerts as {other.name!r} "
                    f"({other_item.source.file}) with the same precedence {mine.precedence}: "
                    "give one a higher precedence"))
    return out


def _may_overlap(a: Playbook, b: Playbook) -> bool:
    if a.name == b.name:
        return True
    if a.match.rules_regex or b.match.rules_regex:
        return True  # regexes: assume they can meet
    if not a.match.rules or not b.match.rules:
        return True  # no rule filter matches every rule
    return bool(set(a.match.rules) & set(b.match.rules))
