"""Hostile requests against the real intake app (Starlette, in process, real stores).

Whatever arrives -- any body, content type, Authorization header, path or method -- the answer
is 202 or a 4xx, never a 5xx or a hang; on the intake routes a 4xx carries a JSON body naming
the reason, and a 202 is only ever given to a request that carried the token. The embedded
backends get the full run; PostgreSQL + Redis get a shorter one.

tests/integration/test_http_intake.py has the example-based answers (401, 413, 400, 422, 503);
tests/unit/test_fuzz_alert_parsing.py fuzzes the parser below the app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from responder.intake.app import create_app
from responder.intake.backends import Backends, open_backends
from tests.conftest import make_settings
from tests.support.variants import fuzz_examples
from tests.unit.test_fuzz_alert_parsing import VALUES, alert_texts

TOKEN = "test-token"  # what make_settings configures
MAX_BODY = 64 * 1024
MAX_ITEMS = 20
REASONS = {400: "unreadable", 401: "unauthorised", 413: "too_large", 422: "invalid"}

pytestmark = pytest.mark.timeout(240)


def _fuzz(examples: int) -> settings:
    return settings(max_examples=fuzz_examples(examples), deadline=timedelta(seconds=5),
                    database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class Intake:
    client: TestClient
    backends: Backends


def _intake(kind: str, request: pytest.FixtureRequest) -> Iterator[Intake]:
    backends = open_backends(make_settings(kind, request, max_body_bytes=MAX_BODY,
                                           max_batch_alerts=MAX_ITEMS))
    try:
        with TestClient(create_app(backends), raise_server_exceptions=False,
                        follow_redirects=False) as client:
            yield Intake(client, backends)
    finally:
        backends.close()


@pytest.fixture
def embedded(request: pytest.FixtureRequest) -> Iterator[Intake]:
    yield from _intake("embedded", request)


@pytest.fixture
def production(request: pytest.FixtureRequest) -> Iterator[Intake]:
    yield from _intake("production", request)


# ------------------------------------------------------------------------------ strategies


def _alert(n: int) -> dict[str, Any]:
    return {
        "uuid": f"00000000-0000-4000-8000-{n:012x}",
        "rule": "Drop and execute new binary in container",
        "priority": "Critical",
        "time": "2026-11-20T14:02:11.418220977Z",
        "hostname": "node-1",
        "output": "Drift $(touch /tmp/x) `id` <!channel> {{ 7*7 }}",
        "output_fields": {"container.id": f"{n % 4096:012x}", "k8s.ns.name": "shop",
                          "k8s.pod.name": f"web-{n % 7}"},
    }


ITEM = st.integers(0, 2**40).map(_alert)
VALID_BODIES = (
    ITEM.map(lambda a: json.dumps(a).encode())
    | st.lists(ITEM, min_size=1, max_size=MAX_ITEMS + 2).map(lambda a: json.dumps(a).encode())
    | st.lists(ITEM, min_size=1, max_size=5).map(
        lambda a: b"\r\n".join(json.dumps(i).encode() for i in a))
)
OVERSIZE = st.integers(MAX_BODY + 1, MAX_BODY + 4096).map(lambda n: b"[" + b" " * n + b"]")
BODIES = (VALID_BODIES | alert_texts() | VALUES | st.binary(max_size=512) | OVERSIZE
          | st.sampled_from([b"", b" ", b"[]", b"{}", b"null", b"[" * 5000, b"\xff\xfe"]))

CONTENT_TYPES = st.sampled_from([
    None, "application/json", "application/x-ndjson", "text/plain", "application/jsonl",
    "application/json; charset=utf-8", "multipart/form-data; boundary=zz", "",
]) | st.text(max_size=16).filter(lambda t: "\n" not in t and "\r" not in t and t.isprintable())

#: Authorization header values as bytes (latin-1 is what HTTP allows on the wire).
AUTH_HEADERS = st.sampled_from([
    None, b"Bearer test-token", b"bearer test-token", b"BEARER  test-token  ",
    b"Bearer test-token\t", b"Bearer test-tokenX", b"Bearer test-toke", b"Bearer ",
    b"Bearer", b"Basic dGVzdC10b2tlbg==", b"test-token", b"Token test-token",
    b"Bearer test-token, Bearer other", b"Bearer \xff\xfe\xe9", b"Bearer " + b"A" * 8192,
    b"Bearer test\x00token",
]) | st.binary(min_size=1, max_size=40).filter(
    lambda b: all(c >= 0x20 and c != 0x7F for c in b))

CONTENT_LENGTHS = st.sampled_from([None, None, None, "0", "1", "-1", "abc", "1e9",
                                   str(MAX_BODY + 1), "99999999999999999999999", " 5"])

#: (raw path, what it is): "header" = /v1/falco (auth by header), "path" = /v1/falco/<token>
#: whose decoded token is compared, "other" = no intake route.
PATHS = st.sampled_from([
    ("/v1/falco", "header"), ("/v1/falco/test-token", "path"), ("/v1/falco/wrong", "path"),
    ("/v1/falco/%74est-token", "path"), ("/v1/falco/test-token%00", "path"),
    ("/v1/falco/test%2Dtoken", "path"), ("/v1/falco/%FF%FE", "path"),
    ("/v1/falco/TEST-TOKEN", "path"), ("/v1/falco/test-token/", "other"),
    ("/v1/falco/", "other"), ("/v1/falco/test-token/extra", "other"),
    ("/v1/falco/..%2F..%2Fhealthz", "other"), ("/V1/FALCO", "other"), ("//v1/falco", "other"),
    ("/v1/falco?token=test-token", "header"), ("/", "other"), ("/metrics", "other"),
    ("/healthz", "other"), ("/readyz", "other"),
]) | st.text(min_size=1, max_size=24).map(lambda t: ("/v1/falco/" + quote(t, safe=""), "path"))

METHODS = st.sampled_from(["POST"] * 16 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])


@dataclass
class Sent:
    method: str
    path: str
    route: str
    headers: list[tuple[str, bytes]]
    body: bytes

    def carries_the_token(self) -> bool:
        if self.route == "path":
            return unquote(self.path.rsplit("/", 1)[-1], errors="replace") == TOKEN
        for name, value in self.headers:
            if name == "Authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and rest.strip() == TOKEN
        return False


@st.composite
def requests(draw: st.DrawFn) -> Sent:
    # Half the requests are shaped like Falco's (POST /v1/falco with the token) so that the
    # bodies reach the parser and the store; the rest vary everything.
    falco_like = draw(st.booleans())
    path, route = ("/v1/falco", "header") if falco_like else draw(PATHS)
    headers: list[tuple[str, bytes]] = []
    auth = b"Bearer test-token" if falco_like else draw(AUTH_HEADERS)
    if auth is not None:
        headers.append(("Authorization", auth))
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers.append(("Content-Type", content_type.encode("utf-8")))
    length = draw(CONTENT_LENGTHS)
    if length is not None:
        headers.append(("Content-Length", length.encode()))
    return Sent("POST" if falco_like else draw(METHODS), path, route, headers, draw(BODIES))


# ------------------------------------------------------------------------------ the property


def _send(intake: Intake, sent: Sent) -> Any:
    return intake.client.request(sent.method, sent.path, content=sent.body,
                                 headers=sent.headers)


def _assert_answer(intake: Intake, sent: Sent) -> None:
    response = _send(intake, sent)
    status = response.status_code
    if currently_in_test_context():
        event(f"answered {status}")  # shown by --hypothesis-show-statistics
    shown = f"{sent.method} {sent.path} {sent.headers} {sent.body[:120]!r} -> {status} " \
            f"{response.text[:300]}"
    assert status < 500, shown
    if status in (307, 308):  # Starlette's trailing-slash redirect, to the same path without it
        assert sent.path.endswith("/") or "/?" in sent.path, shown
        assert response.headers["location"].rstrip("/").endswith(
            sent.path.rstrip("/").split("?")[0].lstrip("/")), shown
        return
    assert status == 202 or 400 <= status < 500, shown
    intake_route = sent.method == "POST" and sent.route in ("header", "path")
    if not intake_route:
        assert status != 202, shown
        return
    if status == 404:  # a token segment holding a slash is another path
        assert "/" in unquote(sent.path.removeprefix("/v1/falco/")), shown
        return
    answer = response.json()
    if status == 202:
        assert sent.carries_the_token(), f"accepted without the token: {shown}"
        assert isinstance(answer["accepted"], int)
        assert 1 <= answer["accepted"] <= MAX_ITEMS, shown
        assert answer["incidents"], shown
        assert all(isinstance(i, str) and i for i in answer["incidents"]), shown
        return
    assert answer["error"] == REASONS[status], shown
    assert isinstance(answer["detail"], str), shown
    assert answer["detail"].strip(), shown
    if status == 422:
        assert answer["problems"], shown
        for problem in answer["problems"]:
            assert set(problem) == {"index", "field", "message"}, shown
            assert 0 <= problem["index"] < MAX_ITEMS, shown
    if not sent.carries_the_token():
        assert status == 401, f"a request without the token must get 401 first: {shown}"


@_fuzz(300)
@given(sent=requests())
def test_any_request_to_the_embedded_intake_gets_202_or_a_4xx_with_a_reason(
    embedded: Intake, sent: Sent,
) -> None:
    _assert_answer(embedded, sent)


@_fuzz(300)
@given(body=BODIES, content_type=CONTENT_TYPES)
def test_any_body_with_the_token_gets_202_or_a_4xx_naming_the_reason(
    embedded: Intake, body: bytes, content_type: str | None,
) -> None:
    headers = [("Authorization", b"Bearer test-token")]
    if content_type is not None:
        headers.append(("Content-Type", content_type.encode("utf-8")))
    _assert_answer(embedded, Sent("POST", "/v1/falco", "header", headers, body))


@_fuzz(100)
@given(sent=requests())
def test_any_request_to_the_postgresql_and_redis_intake_gets_202_or_a_4xx_with_a_reason(
    production: Intake, sent: Sent,
) -> None:
    _assert_answer(production, sent)


def test_the_intake_still_answers_and_records_after_the_fuzz(embedded: Intake) -> None:
    # The fuzz above must not be able to pass against an app that refuses everything: the same
    # checks accept a well-formed request, and a request without the token is refused.
    good = Sent("POST", "/v1/falco", "header", [("Authorization", b"Bearer test-token")],
                json.dumps([_alert(1), _alert(2)]).encode())
    assert _send(embedded, good).status_code == 202
    _assert_answer(embedded, good)
    by_path = Sent("POST", "/v1/falco/%74est-token", "path", [], json.dumps(_alert(3)).encode())
    assert _send(embedded, by_path).status_code == 202
    refused = Sent("POST", "/v1/falco", "header", [("Authorization", b"Bearer test-toke")],
                   json.dumps(_alert(4)).encode())
    assert _send(embedded, refused).status_code == 401
    assert embedded.client.get("/readyz").json()["ready"] is True
