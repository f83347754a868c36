"""The bare ASGI handler behind POST /v1/falco: what Starlette used to do for it, it still does.

Driven with raw ASGI messages (a body in pieces, a client that goes away) on both backend sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message

from responder.intake.app import HEAVY_BODY_BYTES, create_app
from responder.intake.backends import Backends, open_backends
from responder.intake.memory import keep_large_buffers_mapped, release_free_memory
from responder.store import incidents
from tests.conftest import make_settings
from tests.support.samples import drift_alert

AUTH = [(b"authorization", b"Bearer test-token")]
MB = 1024 * 1024
NDJSON = [(b"content-type", b"application/x-ndjson")]


def _alert_count(backends: Backends) -> int:
    with backends.engine.connect() as conn:
        return sum(i.alert_count for i in incidents.list_incidents(conn))


async def _with_lifespan(app: ASGIApp, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` between the app's lifespan start-up and shutdown, as a server would."""
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        await body()
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


async def _post(app: ASGIApp, path: str, pieces: list[Message],
                headers: list[tuple[bytes, bytes]]) -> list[Message]:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    queue = list(pieces)
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # a real server would wait for more
        raise AssertionError("the handler asked for more than the client sent")

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_a_body_that_arrives_in_pieces_is_joined_before_it_is_parsed(
        backends: Backends) -> None:
    body = b"\n".join(orjson.dumps(drift_alert(c, seq=1)) for c in range(3))
    pieces: list[Message] = [
        {"type": "http.request", "body": body[i:i + 100], "more_body": i + 100 < len(body)}
        for i in range(0, len(body), 100)]
    assert len(pieces) > 5
    app = create_app(backends)
    sent: list[Message] = []

    async def scenario() -> None:
        sent.extend(await _post(app, "/v1/falco", pieces, AUTH + NDJSON))

    asyncio.run(_with_lifespan(app, scenario))
    assert sent[0]["status"] == 202
    assert orjson.loads(sent[1]["body"])["accepted"] == 3
    assert dict(sent[0]["headers"])[b"content-type"] == b"application/json"
    assert _alert_count(backends) == 3


def test_a_client_that_disconnects_mid_body_records_nothing_and_gets_no_answer(
        backends: Backends) -> None:
    first = orjson.dumps(drift_alert(1, seq=1)) + b"\n"
    pieces: list[Message] = [{"type": "http.request", "body": first, "more_body": True},
                             {"type": "http.disconnect"}]
    app = create_app(backends)
    sent: list[Message] = []

    async def scenario() -> None:
        sent.extend(await _post(app, "/v1/falco", pieces, AUTH + NDJSON))

    asyncio.run(_with_lifespan(app, scenario))
    assert sent == []
    assert _alert_count(backends) == 0


def test_other_methods_on_the_intake_path_are_405_with_allow_post(backends: Backends) -> None:
    with TestClient(create_app(backends)) as client:
        for method in ("GET", "PUT", "DELETE"):
            response = client.request(method, "/v1/falco")
            assert response.status_code == 405, method
            assert response.headers["allow"] == "POST"
        assert client.get("/v1/falco/test-token").status_code == 405


def test_a_token_path_with_more_segments_is_not_the_intake(backends: Backends) -> None:
    with TestClient(create_app(backends)) as client:
        response = client.post("/v1/falco/test-token/extra", json=drift_alert(1, seq=1))
        assert response.status_code == 404
        assert client.post("/v1/falco/", json=drift_alert(1, seq=1)).status_code == 404
    assert _alert_count(backends) == 0


def test_a_refusal_carries_its_reason_as_json_and_is_counted_by_reason(
        backends: Backends) -> None:
    with TestClient(create_app(backends)) as client:
        response = client.post("/v1/falco/wrong-token", json=drift_alert(1, seq=1))
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"] == "unauthorised"
        ok = client.post("/v1/falco/test-token", json=drift_alert(1, seq=1))
        assert ok.status_code == 202
        metrics = client.get("/metrics").text
    assert 'drift_alerts_rejected_total{reason="unauthorised"} 1.0' in metrics
    assert 'drift_intake_request_seconds_count{outcome="accepted"} 1.0' in metrics
    assert 'drift_intake_request_seconds_count{outcome="401"} 1.0' in metrics



def test_large_bodies_sent_together_are_recorded_one_after_the_other_and_all_accepted(
        backend_kind: str, request: pytest.FixtureRequest) -> None:
    """Bodies above HEAVY_BODY_BYTES wait for each other (bounded memory); none is lost."""
    per_body = 1200  # ~1.9 MB of NDJSON: above the 1 MiB threshold
    bodies = [b"\n".join(orjson.dumps(drift_alert(c % 7, seq=b * per_body + c))
                         for c in range(per_body)) for b in range(3)]
    assert all(len(body) > HEAVY_BODY_BYTES for body in bodies)
    backends = open_backends(make_settings(backend_kind, request, max_body_bytes=4 * MB))
    request.addfinalizer(backends.close)
    app = create_app(backends)
    answers: list[list[Message]] = []

    async def scenario() -> None:
        answers.extend(await asyncio.gather(*(
            _post(app, "/v1/falco", [{"type": "http.request", "body": body, "more_body": False}],
                  AUTH + NDJSON + [(b"content-length", str(len(body)).encode())])
            for body in bodies)))

    asyncio.run(_with_lifespan(app, scenario))
    assert [sent[0]["status"] for sent in answers] == [202, 202, 202]
    assert [orjson.loads(sent[1]["body"])["accepted"] for sent in answers] == [per_body] * 3
    assert _alert_count(backends) == 3 * per_body


def test_the_ingest_can_hand_freed_memory_back_on_this_platform() -> None:
    # glibc (Debian, the images we ship): both calls must work, or large batches keep their RSS.
    assert keep_large_buffers_mapped()
    assert release_free_memory()
