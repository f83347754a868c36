"""Hostile playbooks: whatever is in a playbook file, ``lint_paths`` returns problems at
file:line:column and never raises; Jinja2 sandbox escapes in expressions are refused or inert.

tests/unit/test_playbook_lint.py has one example of each kind of problem (YAML syntax, tabs,
duplicate keys, non-UTF-8, merge keys, unknown tags, bad parameters, bad expressions). This file
generates documents and mutates the shipped playbooks (keys dropped, values of the wrong type,
random text in expressions, text spliced, lines duplicated, tabs), and tries the known YAML and
Jinja2 attacks: alias bombs, recursive anchors, invalid scalars behind implicit or explicit tags,
deep nesting, and the classic ``{{ ''.__class__.__mro__ }}`` family of sandbox escapes.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.conducting.rehearsing import Fixture, rehearse
from responder.models.alerts import parse_alert
from responder.playbooks import expressions
from responder.playbooks.inspecting import Catalog, Report, lint_paths
from responder.playbooks.loading import MAX_FILE_BYTES
from responder.plugins import registry
from responder.plugins.registry import Plugin
from tests.support.variants import fuzz_examples

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "playbooks").glob("*.yaml"))
SHIPPED_DATA = {p.name: yaml.safe_load(p.read_text()) for p in SHIPPED}
SHIPPED_TEXT = {p.name: p.read_text() for p in SHIPPED}

FUZZ = settings(max_examples=fuzz_examples(150), deadline=timedelta(seconds=3), database=None,
                derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return {p.name: p for p in registry.load_all()}


@pytest.fixture(scope="module")
def plugins() -> dict[str, Plugin]:
    return {p.name: p for p in registry.load_all()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzzed-playbooks")


def lint_file(workdir: Path, data: bytes | str, catalog: Catalog,
              name: str = "fuzzed.yaml") -> Report:
    """Write one playbook file and lint it; every problem must point into that file."""
    path = workdir / name
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    path.write_bytes(raw)
    report = lint_paths([path], catalog)
    lines = raw.count(b"\n") + 1
    for problem in report.problems:
        assert problem.file == str(path), problem
        assert 1 <= problem.line <= lines + 1, (problem, lines)
        assert problem.column >= 1, problem
        assert problem.message.strip(), problem
        assert str(problem).startswith(f"{path}:{problem.line}:{problem.column}: ")
    return report


# ------------------------------------------------------------------------------ strategies

TOP_KEYS = ["name", "description", "precedence", "enabled", "match", "correlation", "steps"]
STEP_KEYS = ["id", "uses", "with", "if", "timeout", "retries", "on_failure", "auto"]
PLUGIN_NAMES = sorted({"core.note", "core.log", "core.set", "core.approval",
                       "kubernetes.isolate", "kubernetes.evict", "kubernetes.delete",
                       "kubernetes.pod_context", "evidence.process_tree", "nope.nothing"})

#: Fragments that make Jinja2 (and a naive parser of it) work hard.
JINJA_BITS = [
    "{{", "}}", "{%", "%}", "{#", "#}", "(", ")", "[", "]", "{", "}", ".", ",", "|", "'", '"',
    " ", "\n", "\\", "~", "**", "*", "+", "-", "%", "==", "!=", "and", "or", "not", "in", "is",
    "if", "else", "for", "endfor", "set", "macro", "call", "import", "include", "extends",
    "raw", "endraw", "steps", "steps.ask.result.option", "alert", "alert.fields['proc.cmdline']",
    "incident", "__class__", "__mro__", "__subclasses__()", "__globals__", "__builtins__",
    "__import__('os')", "attr('__class__')", "self", "cycler", "joiner", "namespace", "lipsum",
    "range(10)", "format", "join", "1", "0", "x", "'a'", "none", "true", "$(id)", "`id`", ";",
]
EXPRESSIONS = st.lists(st.sampled_from(JINJA_BITS), max_size=25).map("".join) \
    | st.text(max_size=40)

SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | EXPRESSIONS | st.sampled_from(PLUGIN_NAMES))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=10) | st.sampled_from(TOP_KEYS + STEP_KEYS), inner,
                      max_size=4),
    max_leaves=15,
)


@st.composite
def steps(draw: st.DrawFn) -> dict[str, Any]:
    step: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(STEP_KEYS), unique=True, max_size=8)):
        if key == "uses":
            step[key] = draw(st.sampled_from(PLUGIN_NAMES) | SCALARS)
        elif key == "id":
            step[key] = draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True) | SCALARS)
        elif key == "if":
            step[key] = draw(EXPRESSIONS | SCALARS)
        elif key == "with":
            step[key] = draw(st.dictionaries(
                st.sampled_from(["message", "data", "options", "approvers", "namespace",
                                 "pod", "uid", "prompt", "two_person", "on_timeout"]),
                EXPRESSIONS.map(lambda e: "{{ " + e + " }}") | VALUES, max_size=4) | VALUES)
        else:
            step[key] = draw(VALUES)
    return step


@st.composite
def playbook_documents(draw: st.DrawFn) -> Any:
    """Playbook-shaped data with every key optional and any value possibly of the wrong type."""
    doc: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS), unique=True, max_size=7)):
        if key == "steps":
            doc[key] = draw(st.lists(steps(), max_size=4) | VALUES)
        elif key == "match":
            doc[key] = draw(st.dictionaries(
                st.sampled_from(["rules", "rules_regex", "priority", "tags", "namespaces",
                                 "output_fields", "other"]),
                VALUES | st.lists(EXPRESSIONS, max_size=3), max_size=4) | VALUES)
        else:
            doc[key] = draw(VALUES)
    return doc if draw(st.integers(0, 9)) else draw(VALUES)


def _dump(data: Any, flow: bool | None) -> str:
    return yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, sort_keys=False)


# -- mutations of the shipped playbooks (data level)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated_shipped(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(sorted(SHIPPED_DATA)))
    doc = copy.deepcopy(SHIPPED_DATA[name])
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, last = _parent(doc, path), path[-1]
        op = draw(st.sampled_from(["drop", "retype", "expression", "rename", "duplicate"]))
        if op == "drop":
            del parent[last]
        elif op == "retype":
            parent[last] = draw(VALUES)
        elif op == "expression":
            current = parent[last]
            bit = draw(EXPRESSIONS)
            parent[last] = (current[:len(current) // 2] + bit + current[len(current) // 2:]
                            if isinstance(current, str) else "{{ " + bit + " }}")
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(TOP_KEYS + STEP_KEYS))] = \
                parent.pop(last)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(parent[last]))
    return _dump(doc, draw(st.sampled_from([None, False, True])))


# -- mutations of the shipped playbooks (text level)

SPLICES = st.sampled_from([
    "\t", "\t- x", ":", ": :", "- ", "-", "&a", "*a", "*nope", "&a [*a]", "!!python/name:os.system",
    "!!binary", "!!int", "!!float", "!!bool", "<<: *a", "{", "}", "[", "]", "'", '"', "#", "%",
    "@", "`", "|", ">", "? ", "---", "...", "\x00", "\ufeff", "\u2028", "\r", "{{", "}}", "{%",
    "%YAML 1.1", "%TAG ! tag:x,2000:",
]) | st.text(max_size=12)


@st.composite
def spliced_shipped(draw: st.DrawFn) -> str:
    text = SHIPPED_TEXT[draw(st.sampled_from(sorted(SHIPPED_TEXT)))]
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["splice", "cut", "duplicate-line", "tab", "truncate"]))
        index = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "splice":
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            lines[index] = line[:at] + draw(SPLICES) + line[at:]
        elif op == "cut" and len(lines) > 1:
            end = draw(st.integers(index, min(len(lines), index + 5)))
            del lines[index:end]
        elif op == "duplicate-line":
            lines.insert(index, lines[index])  # in a mapping: a duplicate key
        elif op == "tab":
            lines[index] = lines[index].replace("  ", "\t", 1)
        elif op == "truncate":
            lines = lines[:index + 1]
            lines[-1] = lines[-1][:draw(st.integers(0, len(lines[-1])))]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the fuzz


@FUZZ
@given(doc=playbook_documents(), flow=st.sampled_from([None, False, True]))
def test_generated_playbook_documents_get_problems_never_an_exception(
    workdir: Path, catalog: Catalog, doc: Any, flow: bool | None,
) -> None:
    lint_file(workdir, _dump(doc, flow), catalog)


@FUZZ
@given(text=mutated_shipped())
def test_shipped_playbooks_with_keys_dropped_retyped_or_renamed_get_problems_never_an_exception(
    workdir: Path, catalog: Catalog, text: str,
) -> None:
    lint_file(workdir, text, catalog)


@FUZZ
@given(text=spliced_shipped())
def test_shipped_playbooks_with_text_spliced_cut_or_tabbed_get_problems_never_an_exception(
    workdir: Path, catalog: Catalog, text: str,
) -> None:
    lint_file(workdir, text, catalog)


@FUZZ
@given(condition=EXPRESSIONS, template=EXPRESSIONS, wrap=st.booleans())
def test_random_text_in_if_and_templates_gets_problems_never_an_exception(
    workdir: Path, catalog: Catalog, condition: str, template: str, wrap: bool,
) -> None:
    doc = {"name": "fuzzed", "match": {"rules": ["r"]},
           "steps": [{"id": "first", "uses": "core.note", "with": {"message": "hello"}},
                     {"id": "second", "uses": "core.note", "if": condition,
                      "with": {"message": "{{ " + template + " }}" if wrap else template,
                               "data": {"x": [template]}}}]}
    lint_file(workdir, _dump(doc, None), catalog)


@FUZZ
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_as_a_playbook_file_get_problems_never_an_exception(
    workdir: Path, catalog: Catalog, data: bytes,
) -> None:
    report = lint_file(workdir, data, catalog)
    assert report.problems or report.playbooks


# ------------------------------------------------------------------------------ known attacks

GOOD = """\
name: good
match:
  rules: [Terminal shell in container]
steps:
  - id: note
    uses: core.note
    with:
      message: "{{ alert.rule }} in {{ incident.namespace }}"
"""


def _with_extra(extra: str) -> str:
    return GOOD + extra


@pytest.mark.parametrize(("name", "text"), [
    ("non-utf8", b"name: x\xff\xfe\nmatch: {}\n"),
    ("utf16", GOOD.encode("utf-16")),
    ("nul", GOOD.encode() + b"\x00\n"),
    ("bom-and-tabs", b"\xef\xbb\xbf" + GOOD.replace("  ", "\t").encode()),
    ("duplicate keys", (GOOD + "name: again\nsteps: []\n").encode()),
    ("merge key", (GOOD + "base: &b {a: 1}\nother:\n  <<: *b\n").encode()),
    ("python tag", _with_extra("description: !!python/object/apply:os.system ['id']\n").encode()),
    ("recursive anchor", _with_extra("description: &a [*a]\n").encode()),
    ("deep flow", _with_extra("description: " + "[" * 3000 + "]" * 3000 + "\n").encode()),
    ("deep block", ("\n".join(" " * i + "- " for i in range(0, 4000, 2)) + "\n").encode()),
    ("too large", b"# " + b"x" * (MAX_FILE_BYTES + 1)),
    ("only a comment", b"# nothing\n"),
    ("many documents", (GOOD + "---\n" + GOOD).encode()),
    ("list document", b"- name: x\n"),
])
def test_a_known_hostile_file_gets_problems_at_file_line_never_an_exception(
    workdir: Path, catalog: Catalog, name: str, text: bytes,
) -> None:
    report = lint_file(workdir, text, catalog, name=f"known-{uuid.uuid4().hex[:6]}.yaml")
    assert report.problems, name
    assert report.playbooks == [], name


@pytest.mark.parametrize("extra", [
    "description: 2026-13-45\n", "description: 2026-02-30\n",
    "description: 2026-01-01T25:00:00Z\n", "precedence: !!int 0xZZ\n",
    "precedence: !!float abc\n", "enabled: !!bool maybe\n", "description: !!timestamp nope\n",
    "precedence: " + "9" * 5000 + "\n",
], ids=["month-13", "feb-30", "hour-25", "bad-int", "bad-float", "bad-bool", "bad-timestamp",
        "5000-digits"])
def test_an_invalid_scalar_behind_a_yaml_tag_is_a_problem_not_an_exception(
    workdir: Path, catalog: Catalog, extra: str,
) -> None:
    report = lint_file(workdir, _with_extra(extra), catalog, name="bad-scalar.yaml")
    assert [p for p in report.problems if p.line == GOOD.count("\n") + 1]


@pytest.mark.parametrize("where", ["if", "template"])
@pytest.mark.parametrize("nesting", ["(", "[", "not "])
def test_a_deeply_nested_expression_is_a_problem_not_an_exception(
    workdir: Path, catalog: Catalog, where: str, nesting: str,
) -> None:
    closing = {"(": ")", "[": "]", "not ": ""}[nesting]
    expression = nesting * 3000 + "1" + closing * 3000
    step = {"id": "deep", "uses": "core.note", "with": {"message": "hi"}}
    if where == "if":
        step["if"] = expression
    else:
        step["with"] = {"message": "{{ " + expression + " }}"}
    doc = {"name": "deep", "match": {"rules": ["r"]}, "steps": [step]}
    report = lint_file(workdir, _dump(doc, None), catalog, name="deep.yaml")
    assert report.problems


def _laughs(depth: int, width: int = 9) -> str:
    lines = ["description: x", "match: {rules: [r]}", "name: laughs",
             "steps: [{id: s, uses: core.note, with: {message: hi}}]", "bomb:",
             "  l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]"
              for i in range(1, depth)]
    return "\n".join(lines) + "\n"


def test_a_small_alias_fan_out_is_linted_quickly(workdir: Path, catalog: Catalog) -> None:
    started = time.monotonic()
    report = lint_file(workdir, _laughs(2), catalog, name="laughs-small.yaml")
    assert time.monotonic() - started < 2
    assert report.problems  # "bomb" is not a playbook key


def test_a_billion_laughs_document_is_refused_quickly_with_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(9))
    assert path.stat().st_size < 1000
    # Timed inside the child, around the lint alone: start-up and imports take seconds on a
    # loaded machine and are not what is measured. The address-space cap turns an expansion
    # into a MemoryError; the outer timeout only guards against a hang.
    code = textwrap.dedent(f"""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from pathlib import Path
        from responder.playbooks.inspecting import lint_paths
        from responder.plugins import registry
        catalog = {{p.name: p for p in registry.load_all()}}
        started = time.monotonic()
        report = lint_paths([Path({str(path)!r})], catalog)
        print(len(report.problems), time.monotonic() - started)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                              text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("linting a 600-byte alias bomb did not finish within 120 s")
    assert done.returncode == 0, done.stderr[-2000:]
    problems, seconds = done.stdout.split()
    assert int(problems) >= 1
    assert float(seconds) < 2, f"linting a 600-byte alias bomb took {float(seconds):.1f} s"


# ------------------------------------------------------------------------------ sandbox escapes

def _escapes(marker: Path) -> list[str]:
    touch = f"touch {marker}"
    return [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
        "{{ [].__class__.__base__.__subclasses__()[100:] }}",
        f"{{{{ cycler.__init__.__globals__.os.popen('{touch}').read() }}}}",
        f"{{{{ joiner.__init__.__globals__.os.system('{touch}') }}}}",
        f"{{{{ namespace.__init__.__globals__.os.popen('{touch}').read() }}}}",
        f"{{{{ lipsum.__globals__['os'].popen('{touch}').read() }}}}",
        f"{{{{ self.__init__.__globals__.__builtins__.__import__('os').system('{touch}') }}}}",
        "{{ self._TemplateReference__context }}",
        "{{ config.items() }}",
        "{{ request.application.__globals__ }}",
        "{{ ''|attr('__class__')|attr('__mro__') }}",
        "{{ alert|attr('__class__') }}",
        "{{ alert.fields.__class__.__init__.__globals__ }}",
        "{{ '{0.__class__.__mro__}'.format(alert) }}",
        "{{ '%s'|format(alert.__class__) }}",
        "{{ alert.fields.update({'rule': 'pwned'}) }}",
        "{{ alert.tags.append('pwned') }}",
        "{{ alert.tags.pop() }}",
        "{{ dict.mro() }}",
        "{{ range.__self__ }}",
        "{{ (1).__class__.__subclasses__() }}",
        "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
        "{% set x = ''.__class__ %}{{ x.__mro__ }}",
        "{{ steps.__class__ }}",
        f"{{% include '/etc/passwd' %}}{{{{ '{touch}' }}}}",
        "{% import 'os' as os %}{{ os }}",
        "{% extends '/etc/passwd' %}",
    ]


#: What a value that leaked an object (rather than data) would show.
LEAKS = ("<class", "<module", "<function", "<built-in", "<bound", "<method", "<slot",
         "__globals__", "__builtins__", "Popen", "root:x:0")


def _context() -> dict[str, Any]:
    alert = {"rule": "Drop and execute new binary in container", "tags": ["container"],
             "fields": {"proc.cmdline": "sh"}, "container_id": "4b1c9e7f2a3d"}
    return {"alert": alert, "incident": {"id": "INC", "namespace": "shop", "pod": "web-1"},
            "steps": {"ask": {"result": {"option": "isolate"}}}}


def test_every_sandbox_escape_lints_without_an_exception(
    workdir: Path, catalog: Catalog, tmp_path: Path,
) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    for escape in _escapes(marker):
        doc = {"name": "escape", "match": {"rules": ["r"]},
               "steps": [{"id": "note", "uses": "core.note",
                          "with": {"message": escape, "data": {"x": escape}}}]}
        lint_file(workdir, _dump(doc, None), catalog)
        # As an `if`, the part inside {{ }} is the expression.
        condition = escape.removeprefix("{{").removesuffix("}}").strip()
        doc["steps"][0]["if"] = condition
        lint_file(workdir, _dump(doc, None), catalog)
    assert not marker.exists()


def test_every_sandbox_escape_is_refused_or_inert_when_rendered(tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    context = _context()
    outcomes: dict[str, str] = {}
    for escape in _escapes(marker):
        try:
            value = expressions.render({"message": escape}, context)["message"]
        except expressions.ExpressionError as exc:
            outcomes[escape] = f"refused: {exc}"
            continue
        shown = repr(value)
        assert not any(leak in shown for leak in LEAKS), (escape, shown)
        outcomes[escape] = f"inert: {shown[:80]}"
    assert not marker.exists(), outcomes
    # The alert context was not changed by any of them.
    assert context == _context()
    # And at least the classic escapes are refused outright (not silently rendered empty).
    assert outcomes["{{ ''.__class__.__mro__ }}"].startswith("refused")
    assert outcomes["{{ alert.tags.append('pwned') }}"].startswith("refused")


def test_every_sandbox_escape_in_an_if_is_refused_or_inert_when_evaluated(tmp_path: Path) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    context = _context()
    for escape in _escapes(marker):
        if not escape.startswith("{{"):
            continue
        condition = escape.removeprefix("{{").removesuffix("}}").strip()
        try:
            value = expressions.evaluate(condition, context, condition=True)
        except expressions.ExpressionError:
            continue
        assert not any(leak in repr(value) for leak in LEAKS), (condition, repr(value))
    assert not marker.exists()
    assert context == _context()


def test_a_playbook_step_with_a_sandbox_escape_fails_the_step_and_runs_nothing(
    tmp_path: Path, plugins: dict[str, Plugin], catalog: Catalog,
) -> None:
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    escape = f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}"
    text = _dump({"name": "escape", "match": {"rules": ["r"]},
                  "steps": [{"id": "note", "uses": "core.note", "with": {"message": escape}},
                            {"id": "after", "uses": "core.log", "with": {"message": "after"}}]},
                 None)
    report = lint_file(tmp_path, text, catalog, name="escape.yaml")
    [playbook] = report.playbooks
    alert = {"rule": "r", "priority": "Critical", "time": "2026-11-20T14:02:11Z",
             "output_fields": {"container.id": "4b1c9e7f2a3d"}}
    fixture = Fixture(name="escape", playbook="escape", alert=alert,
                      expect={"steps": [], "status": "failed"})  # type: ignore[arg-type]
    result = rehearse(fixture, tmp_path / "fixture.yaml", {"escape": playbook}, plugins)
    # The parameters are rendered before the step starts: it fails without starting, and the
    # run stops there (on_failure defaults to fail), so the later step never runs either.
    assert result.ok, result.problems
    failed = [data for kind, data in result.audit if kind == "step.failed"]
    assert [f["step"] for f in failed] == ["note"]
    assert "unsafe" in failed[0]["error"], failed[0]["error"]
    assert not marker.exists()
    parse_alert(alert)  # the fixture's alert is a valid one: the failure is the template's
