"""Secrets are compared in constant time: the intake's token and Slack request signatures.

Not a timing test (those are flaky and prove little on a shared CI box). Instead:
- statically, the code paths that compare a secret call ``hmac.compare_digest`` (or
  ``secrets.compare_digest``) and no module of responder/ or bots/ compares a secret, signature or
  password with ``==``/``!=``/``in``;
- behaviourally, the decision to let a request in is the answer of ``compare_digest``: with it
  spied on, every presented token is handed to it (equal length or not), and with it forced to
  say "different", the right token is refused too.
"""

from __future__ import annotations

import ast
import hmac
import inspect
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_bolt import App
from slack_bolt.middleware.request_verification import request_verification
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier
from starlette.testclient import TestClient

import bots.slack.app as slack_app
import responder.intake.app as intake_app
from bots.slack.replay import MemorySeen, ReplayGuard
from responder.intake.app import create_app
from responder.intake.backends import open_backends
from responder.settings import Settings
from tests.fakes.slack_api import FakeSlack, signed_request_headers, slash_command_body

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-ingest-token-0123456789"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
COMPARE_DIGEST = {"hmac.compare_digest", "secrets.compare_digest", "compare_digest"}
SECRET_NAMES = re.compile(r"secret|signature|passw|ingest_token|api_key|bearer", re.I)

# ------------------------------------------------------------------------------ static


def _calls(node: ast.AST) -> set[str]:
    return {ast.unparse(n.func) for n in ast.walk(node) if isinstance(n, ast.Call)}


def _function(tree: ast.AST, name: str) -> ast.FunctionDef:
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(found) == 1, f"expected one function {name!r}, found {len(found)}"
    return found[0]


def _equality_on(node: ast.AST, names: re.Pattern[str]) -> list[str]:
    """``==``/``!=``/``in`` comparisons with an operand whose names match ``names``."""
    out = []
    for compare in (n for n in ast.walk(node) if isinstance(n, ast.Compare)):
        if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn)
                   for op in compare.ops):
            continue
        operands = [compare.left, *compare.comparators]
        identifiers = [i for o in operands for i in _identifiers(o)]
        if any(names.search(i) for i in identifiers) and not all(
                isinstance(o, ast.Constant) and o.value is None for o in operands[1:]):
            out.append(f"line {compare.lineno}: {ast.unparse(compare)}")
    return out


def _identifiers(node: ast.AST) -> Iterator[str]:
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            yield n.id
        elif isinstance(n, ast.Attribute):
            yield n.attr
        elif isinstance(n, ast.arg):
            yield n.arg


def test_the_intakes_token_check_calls_compare_digest_and_compares_nothing_else() -> None:
    tree = ast.parse(inspect.getsource(intake_app))
    authorised = _function(tree, "authorised")
    assert _calls(authorised) & COMPARE_DIGEST, ast.unparse(authorised)
    assert _equality_on(authorised, re.compile(r"token|presented|value")) == []


def test_the_slack_signature_check_of_the_replay_guard_and_of_bolt_is_compare_digest() -> None:
    # The replay guard and bolt's request verification both decide with SignatureVerifier.
    guard = ast.parse(inspect.getsource(ReplayGuard))
    assert "self.verifier.is_valid" in _calls(guard)
    assert _equality_on(guard, re.compile(r"signature|secret")) == []
    bolt = ast.parse(inspect.getsource(request_verification))
    assert "self.verifier.is_valid" in _calls(bolt)
    verifier = ast.parse(textwrap.dedent(inspect.getsource(SignatureVerifier.is_valid)))
    assert _calls(verifier) & COMPARE_DIGEST
    assert _equality_on(verifier, re.compile(r"signature")) == []
    # And the bot does not switch bolt's verification off.
    source = inspect.getsource(slack_app)
    assert "request_verification_enabled" not in source
    assert "signing_secret=secret" in source


def test_no_module_compares_a_secret_signature_or_password_with_equality() -> None:
    offenders = []
    for path in sorted(p for root in ("responder", "bots") for p in (REPO / root).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(REPO)}: {o}" for o in _equality_on(tree, SECRET_NAMES)]
    assert offenders == [], "\n".join(offenders)


def test_the_equality_scan_finds_a_plain_comparison_of_a_secret() -> None:
    tree = ast.parse("def check(given, settings):\n"
                     "    return given == settings.signing_secret or sig != signature\n"
                     "def fine(secret):\n    return secret is None or secret == None\n")
    found = _equality_on(tree, SECRET_NAMES)
    assert found == ["line 2: given == settings.signing_secret", "line 2: sig != signature"]


# ------------------------------------------------------------------------------ behaviour


class Spy:
    """Wraps hmac.compare_digest, records its arguments, optionally overrides its answer."""

    def __init__(self, real: Callable[[Any, Any], bool], answer: bool | None = None) -> None:
        self.real = real
        self.answer = answer
        self.calls: list[tuple[Any, Any]] = []

    def __call__(self, a: Any, b: Any) -> bool:
        self.calls.append((a, b))
        result = self.real(a, b)
        return result if self.answer is None else self.answer


@pytest.fixture
def intake(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/drift.db", data_dir=tmp_path,
                        ingest_token=TOKEN)  # type: ignore[arg-type]
    backends = open_backends(settings)
    try:
        with TestClient(create_app(backends)) as client:
            yield client
    finally:
        backends.close()


ALERT = {"rule": "Terminal shell in container", "priority": "Notice",
         "time": "2026-11-20T14:02:11.418220977Z",
         "output_fields": {"container.id": "4b1c9e7f2a3d"}}

WRONG = [TOKEN[:-1] + "X", "X" + TOKEN[1:], TOKEN[:-1], TOKEN + "0", "", TOKEN[:1],
         TOKEN.upper(), "x" * 4096]


@pytest.mark.parametrize("how", ["header", "path"])
def test_every_presented_token_is_judged_by_compare_digest(
    intake: TestClient, monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    spy = Spy(hmac.compare_digest)
    monkeypatch.setattr(hmac, "compare_digest", spy)

    def post(token: str) -> int:
        if how == "header":
            return intake.post("/v1/falco", json=ALERT,
                               headers={"Authorization": f"Bearer {token}"}).status_code
        return intake.post(f"/v1/falco/{token}", json=ALERT).status_code

    assert post(TOKEN) == 202
    assert spy.calls[-1] == (TOKEN.encode(), TOKEN.encode())
    for wrong in WRONG:
        if how == "path" and not wrong:
            continue  # /v1/falco/ is another route
        before = len(spy.calls)
        assert post(wrong) == 401, wrong
        assert len(spy.calls) == before + 1, f"{wrong!r} was refused without compare_digest"
        assert spy.calls[-1] == (wrong.encode(), TOKEN.encode())


def test_the_right_token_is_refused_when_compare_digest_says_different(
    intake: TestClient, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hmac, "compare_digest", Spy(hmac.compare_digest, answer=False))
    assert intake.post("/v1/falco", json=ALERT,
                       headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert intake.post(f"/v1/falco/{TOKEN}", json=ALERT).status_code == 401


@pytest.fixture
def bolt_app() -> Iterator[App]:
    """A bolt App built as bots/slack/app.py builds it (signing secret, client on the fake)."""
    with FakeSlack() as slack:
        client = WebClient(token=slack.token, base_url=slack.base_url)
        app = App(client=client, signing_secret=SECRET)

        @app.command("/drift")
        def _command(ack: Any) -> None:
            ack("ok")

        yield app


def _command_request(timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    body = slash_command_body("UALICE0001", "/drift", "help", "C0123456789",
                              "http://127.0.0.1:9/response")
    return body, signed_request_headers(SECRET, body, timestamp)


def test_slack_signatures_are_judged_by_compare_digest_in_the_guard_and_in_bolt(
    bolt_app: App, monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(hmac.compare_digest)
    monkeypatch.setattr(hmac, "compare_digest", spy)
    body, headers = _command_request()
    guard = ReplayGuard(SECRET, MemorySeen())
    assert guard.refusal(body, headers["X-Slack-Request-Timestamp"],
                         headers["X-Slack-Signature"]) is None
    assert spy.calls[-1][1] == headers["X-Slack-Signature"]
    response = bolt_app.dispatch(BoltRequest(body=body.decode(), headers=headers))
    assert response.status == 200
    assert spy.calls[-1][1] == headers["X-Slack-Signature"]
    forged = {**headers, "X-Slack-Signature": "v0=" + "0" * 64}
    before = len(spy.calls)
    assert bolt_app.dispatch(BoltRequest(body=body.decode(), headers=forged)).status == 401
    assert len(spy.calls) == before + 1


def test_a_valid_slack_signature_is_refused_when_compare_digest_says_different(
    bolt_app: App, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hmac, "compare_digest", Spy(hmac.compare_digest, answer=False))
    body, headers = _command_request(int(time.time()))
    assert bolt_app.dispatch(BoltRequest(body=body.decode(), headers=headers)).status == 401
    assert not SignatureVerifier(SECRET).is_valid(body, headers["X-Slack-Request-Timestamp"],
                                                  headers["X-Slack-Signature"])
