"""Sandboxed expressions and templates (Jinja2 ``SandboxedEnvironment``).

Only playbook authors write expression source. Alert values, incident fields and step results
reach an expression as *data* in its context, never as source, so an alert cannot inject code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

_WHOLE = re.compile(r"^\s*\{\{(.*)\}\}\s*$", re.DOTALL)
MAX_RENDERED = 64 * 1024


class ExpressionError(ValueError):
    pass


@lru_cache(maxsize=1)
def environment() -> ImmutableSandboxedEnvironment:
    """For parameter templates: a missing value is an error, not an empty string."""
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=1)
def condition_environment() -> ImmutableSandboxedEnvironment:
    """For ``if``: reading what a skipped step never produced is simply false."""
    return ImmutableSandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def check_expression(source: str) -> nodes.Expr:
    """Parse an expression (the ``if`` of a step) or raise :class:`ExpressionError`."""
    if not source.strip():
        # Parsed as-is it would be "()", always false: a step that silently never runs.
        raise ExpressionError("empty expression: write a condition, or leave out 'if'")
    try:
        parsed = environment().parse("{{ (" + source + ") }}")
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad expression {source!r}: {exc.message}") from None
    except RecursionError:
        raise ExpressionError(f"expression nested too deeply: {source[:60]!r}...") from None
    output = parsed.body[0]
    assert isinstance(output, nodes.Output)
    first = output.nodes[0]
    assert isinstance(first, nodes.Expr)
    return first


def check_template(source: str) -> nodes.Template:
    try:
        return environment().parse(source)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad template {source!r}: {exc.message}") from None
    except RecursionError:
        raise ExpressionError(f"template nested too deeply: {source[:60]!r}...") from None


def step_references(tree: nodes.Node) -> Iterator[str]:
    """The step ids an expression reads through ``steps.<id>`` or ``steps['<id>']``."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = getattr(node, "node", None)
        if not (isinstance(target, nodes.Name) and target.name == "steps"):
            continue
        if isinstance(node, nodes.Getattr):
            yield node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and isinstance(node.arg.value, str):
            yield node.arg.value


def evaluate(source: str, context: Mapping[str, Any], *, condition: bool = False) -> Any:
    env = condition_environment() if condition else environment()
    try:
        compiled = env.compile_expression(source, undefined_to_none=condition)
        value = compiled(**context)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad expression {source!r}: {exc.message}") from None
    except Exception as exc:
        raise ExpressionError(f"expression {source!r} failed: {exc}") from None
    if isinstance(value, Undefined):  # a whole-value template naming something missing
        raise ExpressionError(f"expression {source!r} is undefined")
    return value


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render templates inside a parameter value. A string that is one ``{{ expr }}`` keeps the
    expression's type (a list stays a list); other templated strings become text."""
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    if not is_template(value):
        return value
    assert isinstance(value, str)
    whole = _WHOLE.match(value)
    if whole and "}}" not in whole.group(1) and "{{" not in whole.group(1):
        return evaluate(whole.group(1), context)
    try:
        text = environment().from_string(value).render(**context)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"bad template {value!r}: {exc.message}") from None
    except Exception as exc:
        raise ExpressionError(f"template {value!r} failed: {exc}") from None
    return text[:MAX_RENDERED]


def templates_in(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from templates_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from templates_in(v)
    elif is_template(value):
        yield value
