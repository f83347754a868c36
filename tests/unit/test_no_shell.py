"""No shell anywhere: alert fields are data, never shell.

Static: every module under responder/ and bots/ is read with ``ast``: no ``shell=`` other than a
literal False, no ``os.system``/``os.popen``/``subprocess.getoutput``/``getstatusoutput``/
``asyncio.create_subprocess_shell``, no ``commands`` module, every process-starting call gets an
argv (not a string, an f-string or a formatted string), and the only ``sh -c`` allowed is one
whose script is a literal constant (responder/images/listing.py has one, for busybox images).

Dynamic: an alert whose every field is full of shell metacharacters goes through the HTTP intake
and is rehearsed through every shipped playbook (every approval option and expiry): the marker
file its payload would create never appears, and the rendered step parameters carry the payload
as inert text (a template in an alert field is not evaluated either).
"""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from responder.conducting import rehearsing
from responder.conducting.events import RequestApproval, RunStep
from responder.intake.app import create_app
from responder.intake.backends import open_backends
from responder.intake.planning import RunPlanner
from responder.playbooks.inspecting import lint_paths
from responder.plugins import registry
from responder.settings import Settings
from responder.store import audit
from responder.store.schema import incident_alerts, runs

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("responder", "bots")

# ------------------------------------------------------------------------------ static checks

FORBIDDEN_CALLS = {
    "os.system": "runs a shell", "os.popen": "runs a shell",
    "subprocess.getoutput": "runs a shell", "subprocess.getstatusoutput": "runs a shell",
    "asyncio.create_subprocess_shell": "runs a shell", "commands.getoutput": "runs a shell",
    "commands.getstatusoutput": "runs a shell", "pty.spawn": "spawns a terminal",
}
FORBIDDEN_ATTRIBUTES = {"subprocess_shell": "runs a shell (asyncio loop.subprocess_shell)"}
#: Calls whose argv is their first argument (or ``args=``).
ARGV_FIRST = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
              "subprocess.check_output", "asyncio.create_subprocess_exec"}
#: Calls whose argv is their second argument (the first is the program).
ARGV_SECOND = {"os.execv", "os.execve", "os.execvp", "os.execvpe", "os.spawnv", "os.spawnve",
               "os.spawnvp", "os.spawnvpe", "os.posix_spawn", "os.posix_spawnp"}
#: Our own wrappers that hand an argv to a container (pods/exec) or a process.
ARGV_WRAPPERS = {"exec_in": 2, "exec": None, "k8s_stream": None}
SHELLS = {"sh", "bash", "dash", "zsh", "ash", "ksh", "busybox", "/bin/sh", "/bin/bash",
          "/usr/bin/sh", "/usr/bin/bash", "/bin/busybox", "/bin/dash", "cmd", "powershell"}
FORBIDDEN_MODULES = {"commands": "the commands module runs a shell"}


@dataclass(frozen=True)
class Offence:
    file: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}"


class _Scopes(ast.NodeVisitor):
    """Names assigned in each function (and the module), for resolving an argv variable."""

    def __init__(self) -> None:
        self.module: dict[str, list[ast.expr]] = {}
        self.functions: dict[ast.AST, dict[str, list[ast.expr]]] = {}
        self._stack: list[dict[str, list[ast.expr]]] = [self.module]

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        names: dict[str, list[ast.expr]] = {}
        self.functions[node] = names
        self._stack.append(names)
        self.generic_visit(node)
        self._stack.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _assign(self, targets: list[ast.expr], value: ast.expr | None) -> None:
        if value is None:
            return
        for target in targets:
            if isinstance(target, ast.Name):
                self._stack[-1].setdefault(target.id, []).append(value)

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assign(node.targets, node.value)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assign([node.target], node.value)
        self.generic_visit(node)


class ShellFinder(ast.NodeVisitor):
    def __init__(self, file: str, tree: ast.Module) -> None:
        self.file = file
        self.offences: list[Offence] = []
        self.aliases: dict[str, str] = {}
        self.scopes = _Scopes()
        self.scopes.visit(tree)
        self._function: list[ast.AST] = []

    # -- names ------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name.split(".")[0]] = (
                alias.name if alias.asname else alias.name.split(".")[0])
            if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                self._offend(node, f"imports {alias.name}: "
                                   f"{FORBIDDEN_MODULES[alias.name.split('.')[0]]}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] in FORBIDDEN_MODULES:
            self._offend(node, f"imports from {module}: {FORBIDDEN_MODULES[module.split('.')[0]]}")
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"

    def _qualified(self, func: ast.expr) -> str:
        parts: list[str] = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            parts.append(self.aliases.get(func.id, func.id))
        else:
            parts.append("?")
        return ".".join(reversed(parts))

    # -- scopes -----------------------------------------------------------------------------
    def _enter(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._function.append(node)
        self.generic_visit(node)
        self._function.pop()

    visit_FunctionDef = _enter
    visit_AsyncFunctionDef = _enter

    def _bindings(self, name: str) -> list[ast.expr]:
        found: list[ast.expr] = []
        if self._function:
            found += self.scopes.functions.get(self._function[-1], {}).get(name, [])
        return found + self.scopes.module.get(name, [])

    # -- what a string is -------------------------------------------------------------------
    def _stringy(self, node: ast.expr, depth: int = 0) -> bool:
        """Could this expression be a command *string* (rather than an argv)?"""
        if depth > 5:
            return False
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str | bytes)
        if isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
            return self._stringy(node.left, depth + 1) or self._stringy(node.right, depth + 1)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("format", "format_map", "join", "replace", "strip", "decode",
                                   "lower", "upper"):
            return node.func.attr != "join" or self._stringy(node.func.value, depth + 1)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("str", "repr", "format"):
            return True
        if isinstance(node, ast.Name):
            return any(self._stringy(v, depth + 1) for v in self._bindings(node.id))
        return False

    def _constant_script(self, node: ast.expr) -> bool:
        """A literal script: a constant, or a name bound only to constants at module level."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.Name):
            bound = self.scopes.module.get(node.id, [])
            return bool(bound) and all(isinstance(b, ast.Constant) and isinstance(b.value, str)
                                       for b in bound)
        return False

    # -- the checks -------------------------------------------------------------------------
    def _offend(self, node: ast.AST, what: str) -> None:
        self.offences.append(Offence(self.file, getattr(node, "lineno", 0), what))

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualified(node.func)
        short = name.rsplit(".", 1)[-1]
        if name in FORBIDDEN_CALLS:
            self._offend(node, f"calls {name}: {FORBIDDEN_CALLS[name]}")
        if short in FORBIDDEN_ATTRIBUTES:
            self._offend(node, f"calls {name}: {FORBIDDEN_ATTRIBUTES[short]}")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                               and keyword.value.value is False):
                self._offend(node, f"{name}(shell={ast.unparse(keyword.value)})")
        argv: ast.expr | None = None
        if name in ARGV_FIRST or (short in ("Popen", "run", "check_output", "check_call")
                                  and name.startswith("subprocess")):
            argv = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "args"), None)
        elif name in ARGV_SECOND and len(node.args) > 1:
            argv = node.args[1]
        elif short in ARGV_WRAPPERS:
            position = ARGV_WRAPPERS[short]
            argv = next((k.value for k in node.keywords if k.arg in ("command", "argv")), None)
            if argv is None and position is not None and len(node.args) > position:
                argv = node.args[position]
        if argv is not None and self._stringy(argv):
            self._offend(node, f"{name}() gets a command string, not an argv: "
                               f"{ast.unparse(argv)[:80]}")
        self.generic_visit(node)

    def _argv_literal(self, node: ast.List | ast.Tuple) -> None:
        elements = node.elts
        words = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None
                 for e in elements]
        if not words or not ({words[0], words[1] if len(words) > 1 else None} & SHELLS):
            return
        flag = next((i for i, w in enumerate(words)
                     if w is not None and w.startswith("-") and "c" in w.lstrip("-")
                     and len(w) <= 4), None)
        if flag is None:
            return
        if flag + 1 >= len(elements):
            self._offend(node, "a shell -c argv without a literal script")
            return
        script = elements[flag + 1]
        if not self._constant_script(script):
            self._offend(node, f"a shell -c argv whose script is built at run time: "
                               f"{ast.unparse(script)[:80]}")

    def visit_List(self, node: ast.List) -> None:
        self._argv_literal(node)
        self.generic_visit(node)

    def visit_Tuple(self, node: ast.Tuple) -> None:
        self._argv_literal(node)
        self.generic_visit(node)


def find_shell_use(source: str, file: str) -> list[Offence]:
    tree = ast.parse(source, file)
    finder = ShellFinder(file, tree)
    finder.visit(tree)
    return finder.offences


def _modules() -> list[Path]:
    return sorted(p for root in SOURCES for p in (REPO / root).rglob("*.py"))


def test_the_static_check_reads_every_module_of_responder_and_bots() -> None:
    modules = _modules()
    assert len(modules) > 40
    assert REPO / "responder" / "images" / "listing.py" in modules
    assert REPO / "bots" / "slack" / "app.py" in modules


def test_no_module_uses_a_shell_or_hands_a_command_string_to_a_process() -> None:
    offences = [o for path in _modules()
                for o in find_shell_use(path.read_text(encoding="utf-8"),
                                        str(path.relative_to(REPO)))]
    assert offences == [], "\n".join(map(str, offences))


@pytest.mark.parametrize(("source", "expected"), [
    ("import subprocess\nsubprocess.run('ls -l', shell=True)\n", "shell=True"),
    ("import subprocess\nsubprocess.run(['ls'], shell=flag)\n", "shell=flag"),
    ("import subprocess\nsubprocess.Popen(f'ls {path}')\n", "command string"),
    ("from subprocess import check_output as co\nco('ls ' + path)\n", "command string"),
    ("import subprocess\ncmd = 'ls %s' % path\nsubprocess.call(cmd)\n", "command string"),
    ("import subprocess\nsubprocess.run(args='ls {}'.format(p))\n", "command string"),
    ("import os\nos.system('id')\n", "os.system"),
    ("from os import popen\npopen('id')\n", "os.popen"),
    ("import subprocess as sp\nsp.getoutput('id')\n", "subprocess.getoutput"),
    ("import subprocess\nsubprocess.getstatusoutput('id')\n", "subprocess.getstatusoutput"),
    ("import asyncio\nasyncio.create_subprocess_shell('id')\n", "create_subprocess_shell"),
    ("async def f(loop):\n    await loop.subprocess_shell(p, 'id')\n", "subprocess_shell"),
    ("import commands\n", "commands"),
    ("import subprocess\nsubprocess.run(['sh', '-c', f'echo {alert}'])\n", "built at run time"),
    ("ARGV = ('bash', '-lc', 'echo ' + name)\n", "built at run time"),
    ("def f(pod):\n    exec_in(cluster, ref, f'cat {pod}')\n", "command string"),
    ("def f(x):\n    client.exec(pod, ns, command='sh -c ' + x)\n", "command string"),
    ("import os\nos.execv('/bin/sh', '/bin/sh -c id')\n", "command string"),
])
def test_the_static_check_finds_each_kind_of_shell_use(source: str, expected: str) -> None:
    offences = find_shell_use(source, "example.py")
    assert offences, source
    assert any(expected in o.what for o in offences), [str(o) for o in offences]
    assert all(o.file == "example.py" and o.line >= 1 for o in offences)


@pytest.mark.parametrize("source", [
    "import subprocess\nsubprocess.run(['ls', path], check=True, shell=False)\n",
    "import subprocess\nargv = [exe, '-m', 'x']\nsubprocess.Popen(argv)\n",
    "SCRIPT = 'for d in /proc/*; do echo $d; done'\nARGV = ('sh', '-c', SCRIPT)\n",
    "import sys, subprocess\nsubprocess.run([sys.executable, '-c', code])\n",
    "def f(cluster, ref, argv):\n    exec_in(cluster, ref, list(argv))\n",
])
def test_the_static_check_accepts_argv_lists_and_literal_scripts(source: str) -> None:
    assert find_shell_use(source, "example.py") == []


# ------------------------------------------------------------------------------ dynamic checks


@dataclass(frozen=True)
class Hostile:
    marker: Path

    @property
    def payload(self) -> str:
        """Every way a shell would run `touch MARKER`, plus a template and Slack markup."""
        m = self.marker
        return (f"$(touch {m})`touch {m}`;touch {m}|touch {m}&&touch {m}\n"
                f"touch {m}'\"${{IFS}}{{{{ 7*1234567 }}}}<!channel>")

    @property
    def evaluated(self) -> str:
        return str(7 * 1234567)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    marker = Path("/tmp") / f"pwned-{uuid.uuid4().hex[:16]}"
    yield Hostile(marker)
    assert not marker.exists(), f"{marker} was created: a shell ran an alert field"
    marker.unlink(missing_ok=True)


def hostile_alert(h: Hostile, rule: str | None = None) -> dict[str, Any]:
    p = h.payload
    assert len(p) < 253
    fields: dict[str, Any] = dict.fromkeys((
        "proc.cmdline", "proc.exepath", "proc.name", "proc.pname", "proc.pcmdline",
        "proc.aname[2]", "evt.arg.filename", "evt.arg.flags", "fd.name", "user.name",
        "user.loginname", "group.name", "container.name", "container.image.repository",
        "container.image.tag", "container.image.digest", "k8s.ns.name", "k8s.pod.name",
        "k8s.deployment.name", "evt.hostname", "proc.tty", "proc.cwd"), p)
    fields.update({"k8s.pod.uid": p[:64], "container.id": "4b1c9e7f2a3d",
                   "container.full_id": "4b1c9e7f2a3d" + "ab" * 26, "proc.pid": 4242,
                   "proc.ppid": 1, "evt.time": 1_795_356_131_418_220_977,
                   "proc.is_exe_upper_layer": True})
    return {
        "uuid": f"{uuid.uuid4()}", "rule": rule or p, "priority": "Critical",
        "time": "2026-11-20T14:02:11.418220977Z", "output": f"{p} {p}", "source": p,
        "hostname": p, "tags": [p, "container"], "output_fields": fields, "message": p,
    }


def test_a_hostile_alert_goes_through_the_intake_as_data(
    hostile: Hostile, tmp_path: Path,
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/drift.db", data_dir=tmp_path,
                        ingest_token="t")  # type: ignore[arg-type]
    # The shipped playbooks plan runs as `drift-responder ingest` does (no broker: not sent).
    backends = open_backends(settings, planner=RunPlanner(list(SHIPPED.values())))
    try:
        with TestClient(create_app(backends)) as client:
            routed = hostile_alert(hostile, rule="Drop and execute new binary in container")
            answer = client.post("/v1/falco", content=json.dumps([routed, hostile_alert(hostile)]),
                                 headers={"Authorization": "Bearer t"})
            assert answer.status_code == 202, answer.text
        with backends.engine.connect() as conn:
            payloads = [orjson.loads(p) for p in conn.execute(select(incident_alerts.c.payload))
                        .scalars()]
            contexts = [orjson.loads(c) for c in conn.execute(select(runs.c.context)).scalars()]
            records = list(audit.iter_records(conn))
            assert audit.verify(conn).ok
    finally:
        backends.close()
    assert any(p["output_fields"]["proc.cmdline"] == hostile.payload for p in payloads)
    assert all(p["hostname"] == hostile.payload for p in payloads)
    # The routed alert planned a run: its context holds the payload verbatim, as data.
    assert contexts, "the drop-and-execute playbook should have planned a run"
    assert any(hostile.payload in text for text in _strings(contexts))
    assert any(hostile.payload in text for r in records for text in _strings(r.data))
    assert not hostile.marker.exists()


def _shipped() -> dict[str, Any]:
    report = lint_paths([REPO / "playbooks"], {p.name: p for p in registry.load_all()})
    assert not report.problems, report.problems
    return {p.name: p for p in report.playbooks}


SHIPPED = _shipped()


def _mocked_results(playbook: Any, h: Hostile) -> dict[str, Any]:
    """What the cluster and evidence steps 'return': found, and full of the payload too."""
    p = h.payload
    results: dict[str, Any] = {}
    for step in playbook.steps:
        if step.uses == "kubernetes.pod_context":
            results[step.id] = {"result": {"found": True, "uid": p[:64], "context": {
                "namespace": p, "pod": p, "uid": p[:64], "node": p, "labels": {p: p},
                "owners": [{"kind": "ReplicaSet", "name": p}, {"kind": p, "name": p}],
                "services": [p], "network_policies": [p], "disruption_budgets": [p]}}}
        elif step.uses.startswith("kubernetes."):
            results[step.id] = {"result": {"status": "isolated", "detail": {
                "removed_labels": {p: p}, "still_allowed_by": [p], "selected_by_services": [p],
                "budget": p, "error": p, "found_uid": p[:64]}}}
        elif step.uses.startswith("evidence."):
            results[step.id] = {"result": {"summary": p, "flagged": [p]}}
    return results


def _decisions(playbook: Any) -> list[dict[str, Any]]:
    asks = [s for s in playbook.steps if s.uses == "core.approval"]
    if not asks:
        return [{}]
    options = asks[0].with_.get("options", ["isolate", "evict", "dismiss"])
    out: list[dict[str, Any]] = [
        {s.id: {"option": option, "by": ["slack:U024BE7LH", "cli:alice"]} for s in asks}
        for option in options]
    out.append({s.id: {"expire": True} for s in asks})
    return out


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_hostile_alert_rehearsed_through_a_shipped_playbook_stays_inert_data(
    name: str, hostile: Hostile, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    playbook = SHIPPED[name]
    plugins = {p.name: p for p in registry.load_all()}
    rendered: list[tuple[str, dict[str, Any]]] = []
    real_conduct = rehearsing.conduct

    def recording_conduct(*args: Any, **kwargs: Any) -> Any:
        decision = real_conduct(*args, **kwargs)
        for directive in decision.directives:
            if isinstance(directive, RunStep | RequestApproval):
                rendered.append((directive.step_id, directive.params))
        return decision

    monkeypatch.setattr(rehearsing, "conduct", recording_conduct)
    rule = next(iter(playbook.match.rules), "Terminal shell in container")
    notes: list[dict[str, Any]] = []
    for decisions in _decisions(playbook):
        for alert in (hostile_alert(hostile), hostile_alert(hostile, rule=rule)):
            fixture = rehearsing.Fixture.model_validate({
                "name": "hostile", "playbook": name, "alert": alert,
                "results": _mocked_results(playbook, hostile), "decisions": decisions,
                "expect": {"steps": [], "status": "succeeded"}})
            report = rehearsing.rehearse(fixture, tmp_path / "f.yaml", SHIPPED, plugins)
            # Only the list of steps (which we do not spell out) may differ from the fixture's
            # expectation: no missing decision, no invalid alert, and the hostile text breaks
            # neither a template nor a step's parameters.
            assert all(p.startswith("steps started") for p in report.problems), report.problems
            assert report.status == "succeeded"
            failed = [d for kind, d in report.audit if kind == "step.failed"]
            assert failed == [], failed
            notes += [d for kind, d in report.audit if kind in ("note", "log")]
    assert not hostile.marker.exists()
    dumped = json.dumps(rendered)
    assert rendered, "nothing was rendered"
    # The payload reached the steps whole, as text: no shell, no template evaluation.
    texts = [text for _, params in rendered for text in _strings(params)]
    assert any(hostile.payload in text for text in texts)
    assert "{{ 7*1234567 }}" in dumped
    assert hostile.evaluated not in dumped
    # And the pure steps that ran for real recorded it the same way.
    assert notes
    assert any(hostile.payload in text for text in _strings(notes))
    assert hostile.evaluated not in json.dumps(notes)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
