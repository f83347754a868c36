"""POST /v1/falco and friends, through the ASGI app on both backend sets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from responder.intake.app import create_app
from responder.intake.backends import Backends, open_backends
from responder.settings import Settings
from responder.store import audit, incidents
from tests.conftest import make_settings
from tests.support.samples import drift_alert, json_samples, load, samples_dir

AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
def client(backends: Backends) -> Iterator[TestClient]:
    with TestClient(create_app(backends)) as test_client:
        yield test_client


def _incidents(backends: Backends) -> list[Any]:
    with backends.engine.connect() as conn:
        return incidents.list_incidents(conn)


def test_every_sample_is_accepted_and_correlated(client: TestClient, backends: Backends) -> None:
    for name, sample in json_samples().items():
        response = client.post("/v1/falco", json=sample, headers=AUTH)
        assert response.status_code == 202, (name, response.text)
        body = response.json()
        assert body["accepted"] == 1
        assert len(body["incidents"]) == 1
    ndjson = (samples_dir() / "batch.ndjson").read_bytes()
    response = client.post("/v1/falco", content=ndjson,
                           headers=AUTH | {"Content-Type": "application/x-ndjson"})
    assert response.status_code == 202
    assert response.json()["accepted"] == 3
    found = _incidents(backends)
    assert len(found) == 5
    assert sum(i.alert_count for i in found) == 8


def test_a_json_array_is_one_batch(client: TestClient) -> None:
    alerts = [drift_alert(1, seq=1), drift_alert(2, seq=1), drift_alert(1, seq=2)]
    response = client.post("/v1/falco", json=alerts, headers=AUTH)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 3
    assert len(body["incidents"]) == 2


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Basic dGVzdC10b2tlbg=="},
                                     {"Authorization": "test-token"}])
def test_requests_without_the_token_are_refused(client: TestClient, backends: Backends,
                                                headers: dict[str, str]) -> None:
    response = client.post("/v1/falco", json=load("sidekick-drop-and-execute.json"),
                           headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorised"
    assert _incidents(backends) == []


def test_the_token_may_be_the_last_path_segment_for_falco_http_output(
    client: TestClient, backends: Backends,
) -> None:
    sample = load("falco-http-output-drop-and-execute.json")
    assert client.post("/v1/falco/wrong", json=sample).status_code == 401
    assert client.post("/v1/falco/test-token", json=sample).status_code == 202
    assert len(_incidents(backends)) == 1


def test_a_body_over_the_limit_is_refused_with_413(
    backend_kind: str, request: pytest.FixtureRequest,
) -> None:
    backends = open_backends(make_settings(backend_kind, request, max_body_bytes=4096))
    try:
        with TestClient(create_app(backends)) as client:
            big = [drift_alert(1, seq=i) for i in range(10)]
            response = client.post("/v1/falco", json=big, headers=AUTH)
            assert response.status_code == 413

            def chunks() -> Iterator[bytes]:  # no Content-Length: the stream is counted
                for alert in big:
                    yield json.dumps(alert).encode() + b"\n"

            response = client.post("/v1/falco", content=chunks(),
                                   headers=AUTH | {"Content-Type": "application/x-ndjson"})
            assert response.status_code == 413
            assert _incidents(backends) == []
    finally:
        backends.close()


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "empty body"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[]", "no alerts"),
    (b"[" * 100_000, "not valid JSON"),
])
def test_unreadable_bodies_get_400_with_a_reason(client: TestClient, body: bytes,
                                                 reason: str) -> None:
    response = client.post("/v1/falco", content=body,
                           headers=AUTH | {"Content-Type": "application/json"})
    assert response.status_code == 400
    assert reason in response.json()["detail"]


def test_a_batch_with_bad_items_is_refused_whole_with_every_reason(
    client: TestClient, backends: Backends,
) -> None:
    good = drift_alert(1)
    no_rule = {k: v for k, v in drift_alert(2).items() if k != "rule"}
    bad_priority = drift_alert(3) | {"priority": "Urgent"}
    response = client.post("/v1/falco", json=[good, no_rule, good, bad_priority, 42],
                           headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert "nothing was recorded" in body["detail"]
    assert [(p["index"], p["field"]) for p in body["problems"]] == [
        (1, "rule"), (3, "priority"), (4, "(item)")]
    assert "Urgent" in body["problems"][1]["message"]
    assert _incidents(backends) == []


def test_health_readiness_and_metrics(client: TestClient, backends: Backends) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    client.post("/v1/falco", json=[drift_alert(1, seq=1), drift_alert(1, seq=2)], headers=AUTH)
    client.post("/v1/falco", json=drift_alert(1, seq=3), headers=AUTH)
    client.post("/v1/falco", json={"rule": "x"}, headers=AUTH)
    client.post("/v1/falco", json=drift_alert(1), headers={})
    text = client.get("/metrics").text
    assert "drift_alerts_accepted_total 3.0" in text
    assert "drift_incidents_opened_total 1.0" in text
    assert "drift_dedup_hits_total 2.0" in text
    assert 'drift_alerts_rejected_total{reason="invalid"} 1.0' in text
    assert 'drift_alerts_rejected_total{reason="unauthorised"} 1.0' in text
    assert 'drift_intake_request_seconds_count{outcome="accepted"} 2.0' in text


def test_intake_answers_503_not_500_when_the_store_is_down(tmp_path: Any) -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:9/none",
                        ingest_token="test-token", data_dir=tmp_path)  # type: ignore[arg-type]
    backends = open_backends(settings, migrate=False)
    try:
        with TestClient(create_app(backends)) as client:
            response = client.post("/v1/falco", json=drift_alert(1), headers=AUTH)
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "5"
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["database"].startswith("unavailable")
    finally:
        backends.close()


def test_intake_answers_503_when_redis_is_down(request: pytest.FixtureRequest) -> None:
    settings = make_settings("embedded", request, redis_url="redis://127.0.0.1:9/0")
    backends = open_backends(settings)
    try:
        with TestClient(create_app(backends)) as client:
            response = client.post("/v1/falco", json=drift_alert(1), headers=AUTH)
            assert response.status_code == 503
            assert client.get("/readyz").json()["redis"].startswith("unavailable")
    finally:
        backends.close()
    with backends.engine.connect() as conn:
        assert incidents.list_incidents(conn) == []  # nothing half-recorded


def test_the_app_refuses_to_run_without_a_token_unless_told_to(
    request: pytest.FixtureRequest,
) -> None:
    backends = open_backends(make_settings("embedded", request, ingest_token=None))
    try:
        with pytest.raises(ValueError, match="DRIFT_INGEST_TOKEN"):
            create_app(backends)
        with TestClient(create_app(backends, insecure_no_auth=True)) as client:
            assert client.post("/v1/falco", json=drift_alert(1)).status_code == 202
    finally:
        backends.close()


def test_accepted_alerts_are_in_the_audit_trail(client: TestClient, backends: Backends) -> None:
    response = client.post("/v1/falco", json=load("sidekick-memfd-fileless.json"), headers=AUTH)
    [incident_id] = response.json()["incidents"]
    with backends.engine.connect() as conn:
        [record] = list(audit.iter_records(conn, incident_id))
    assert record.kind == "incident.opened"
    assert record.actor == "intake"
    assert record.data["rule"] == "Fileless execution via memfd_create"
    assert record.data["first_alert_id"] == "b0e3d1a2-6f5c-4e7d-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize(("field", "value", "where"), [
    ("k8s.ns.name", "n" * 300, "output_fields['k8s.ns.name']"),
    ("k8s.pod.name", "web\u0000x", "output_fields['k8s.pod.name']"),
    ("k8s.pod.uid", "u" * 65, "output_fields['k8s.pod.uid']"),
    ("container.image.repository", "r" * 2000, "output_fields['container.image']"),
])
def test_values_too_long_for_the_store_or_with_nul_are_422_not_500(
    client: TestClient, backends: Backends, field: str, value: str, where: str,
) -> None:
    alert = drift_alert(1)
    alert["output_fields"][field] = value
    response = client.post("/v1/falco", json=[drift_alert(2), alert], headers=AUTH)
    assert response.status_code == 422, response.text
    assert [(p["index"], p["field"]) for p in response.json()["problems"]] == [(1, where)]
    assert _incidents(backends) == []


def test_a_time_beyond_what_nanoseconds_can_hold_is_422(client: TestClient) -> None:
    response = client.post("/v1/falco", json=drift_alert(1) | {"time": "2300-01-01T00:00:00Z"},
                           headers=AUTH)
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "time"
