"""Nanosecond times, correlation keys and incident ids."""

from __future__ import annotations

import calendar
import copy
import hashlib
import re
import time
from typing import Any

import pytest

from responder.models import incidents
from responder.models.alerts import Alert, parse_alert
from responder.models.incidents import KeySpec, incident_key, new_incident_id, new_incident_ids
from responder.models.times import format_ns, now_ns, parse_rfc3339_ns
from tests.support.samples import drift_alert, load

NS = 1_000_000_000
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _utc_ns(year: int, month: int, day: int, hour: int, minute: int, second: int,
            fraction_ns: int = 0) -> int:
    """Expected values, computed without the code under test."""
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * NS + fraction_ns


# ---------------------------------------------------------------- parse_rfc3339_ns


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-20T14:02:11.418220977Z", _utc_ns(2026, 11, 20, 14, 2, 11, 418_220_977)),
        ("2026-11-20T14:02:11.418220977z", _utc_ns(2026, 11, 20, 14, 2, 11, 418_220_977)),
        ("2026-11-20T14:02:11.418220977+00:00", _utc_ns(2026, 11, 20, 14, 2, 11, 418_220_977)),
        ("2026-11-20T14:02:11.418220977+0000", _utc_ns(2026, 11, 20, 14, 2, 11, 418_220_977)),
        ("2026-11-20T14:02:11.418220977-05:00", _utc_ns(2026, 11, 20, 19, 2, 11, 418_220_977)),
        ("2026-11-20T14:02:11+05:30", _utc_ns(2026, 11, 20, 8, 32, 11)),
        ("2026-11-20T23:30:00-05:00", _utc_ns(2026, 11, 21, 4, 30, 0)),
        ("2026-11-20 14:02:11Z", _utc_ns(2026, 11, 20, 14, 2, 11)),
        ("  2026-11-20T14:02:11Z\n", _utc_ns(2026, 11, 20, 14, 2, 11)),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.000000001Z", 1),
        ("1969-12-31T23:59:59.5Z", -NS // 2),
        ("2024-02-29T00:00:00Z", _utc_ns(2024, 2, 29, 0, 0, 0)),
    ],
)
def test_rfc3339_text_parses_to_exact_nanoseconds_since_the_epoch(
    text: str, expected: int
) -> None:
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    ("fraction", "expected_ns"),
    [
        ("1", 100_000_000),
        ("12", 120_000_000),
        ("123", 123_000_000),
        ("1234", 123_400_000),
        ("12345", 123_450_000),
        ("123456", 123_456_000),
        ("1234567", 123_456_700),
        ("12345678", 123_456_780),
        ("123456789", 123_456_789),
        ("000000001", 1),
        ("999999999", 999_999_999),
    ],
)
def test_fractions_of_one_to_nine_digits_are_scaled_to_nanoseconds(
    fraction: str, expected_ns: int
) -> None:
    base = _utc_ns(2026, 11, 20, 14, 2, 11)
    assert parse_rfc3339_ns(f"2026-11-20T14:02:11.{fraction}Z") == base + expected_ns


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-04-31T00:00:00Z",
        "2026-11-20T24:00:00Z",
        "2026-11-20T14:60:00Z",
        "2026-11-20T14:02:60Z",
        "2026-11-20T14:02:11.1234567890Z",
        "2026-11-20T14:02:11.Z",
        "2026-11-20T14:02:11",
        "2026-11-20",
        "20261120T140211Z",
        "2026-11-20T14:02:11+25:00",
        "",
        "yesterday",
        "2026-11-20T14:02:11Z trailing",
    ],
)
def test_invalid_rfc3339_text_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ns(text)


def test_invalid_date_error_message_quotes_the_text() -> None:
    with pytest.raises(ValueError, match=r"2026-02-30T00:00:00Z"):
        parse_rfc3339_ns("2026-02-30T00:00:00Z")


def test_falco_times_of_a_second_already_seen_parse_to_the_same_nanoseconds() -> None:
    # Falco's own format reuses the parse of its second; the fraction is still checked.
    for _ in range(2):
        assert parse_rfc3339_ns("2031-05-06T07:08:09.418220977Z") == \
            _utc_ns(2031, 5, 6, 7, 8, 9, 418_220_977)
        assert parse_rfc3339_ns("2031-05-06T07:08:09.000000001Z") == \
            _utc_ns(2031, 5, 6, 7, 8, 9, 1)
        assert parse_rfc3339_ns("2262-04-11T23:47:16.854775807Z") == 2**63 - 1
    for text in ("2031-05-06T07:08:09.41822097xZ", "2031-05-06T07:08:09.\uff14\uff11" + "0" * 7
                 + "Z", "2031-05-06T07:08:09.-41822097Z", "2262-04-11T23:47:16.854775808Z"):
        with pytest.raises(ValueError):
            parse_rfc3339_ns(text)


# ---------------------------------------------------------------- format_ns


def test_format_ns_writes_all_nine_fraction_digits_in_utc() -> None:
    assert format_ns(_utc_ns(2026, 11, 20, 14, 2, 11, 418_220_977)) == (
        "2026-11-20T14:02:11.418220977Z")
    assert format_ns(0) == "1970-01-01T00:00:00.000000000Z"
    assert format_ns(1) == "1970-01-01T00:00:00.000000001Z"
    assert format_ns(-NS // 2) == "1969-12-31T23:59:59.500000000Z"


@pytest.mark.parametrize(
    "ns",
    [0, 1, 999_999_999, NS, -1, -NS // 2, 1_795_183_331_418_220_977, 1_763_647_331_000_000_000,
     _utc_ns(2099, 12, 31, 23, 59, 59, 999_999_999)],
)
def test_format_ns_and_parse_rfc3339_ns_round_trip(ns: int) -> None:
    assert parse_rfc3339_ns(format_ns(ns)) == ns


@pytest.mark.parametrize(
    "text", ["2026-11-20T14:02:11.418220977Z", "2026-01-01T00:00:00.000000000Z"]
)
def test_canonical_text_round_trips_unchanged(text: str) -> None:
    assert format_ns(parse_rfc3339_ns(text)) == text


def test_offset_times_format_back_in_utc() -> None:
    assert format_ns(parse_rfc3339_ns("2026-11-20T14:02:11.5-05:00")) == (
        "2026-11-20T19:02:11.500000000Z")


def test_now_ns_is_the_current_time_in_nanoseconds() -> None:
    before = time.time_ns()
    value = now_ns()
    after = time.time_ns()
    assert before <= value <= after


# ---------------------------------------------------------------- KeySpec


def test_key_spec_container_is_the_container_kind() -> None:
    assert KeySpec.parse("container") == KeySpec(kind="container", fields=())


def test_key_spec_pod_is_the_pod_kind() -> None:
    assert KeySpec.parse(" pod ") == KeySpec(kind="pod", fields=())


def test_key_spec_comma_list_is_a_fields_spec_in_order() -> None:
    assert KeySpec.parse("a,b") == KeySpec(kind="fields", fields=("a", "b"))
    assert KeySpec.parse(" k8s.ns.name , proc.name ,") == KeySpec(
        kind="fields", fields=("k8s.ns.name", "proc.name"))


def test_key_spec_single_field_name_is_a_fields_spec() -> None:
    assert KeySpec.parse("proc.name") == KeySpec(kind="fields", fields=("proc.name",))


@pytest.mark.parametrize("text", ["", "   ", ",", " , ,"])
def test_key_spec_naming_no_fields_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="names no fields"):
        KeySpec.parse(text)


# ---------------------------------------------------------------- incident_key

CONTAINER = KeySpec.parse("container")
POD = KeySpec.parse("pod")


def _alert(raw: dict[str, Any]) -> Alert:
    return parse_alert(raw)


def _host_alert(node: str = "node-a", rule: str = "Drop and execute new binary in container"
                ) -> Alert:
    raw = drift_alert(1, node=node, rule=rule)
    raw["output_fields"]["container.id"] = "host"
    del raw["output_fields"]["container.full_id"]
    return _alert(raw)


def test_alert_with_a_full_container_id_is_keyed_by_it_alone() -> None:
    alert = _alert(drift_alert(7))
    full = f"{7:012x}" + "ab" * 26
    assert alert.container_full_id == full
    assert incident_key(alert, CONTAINER) == f"container:{full}"


def test_full_id_key_is_the_same_on_every_node() -> None:
    assert incident_key(_alert(drift_alert(7, node="a")), CONTAINER) == incident_key(
        _alert(drift_alert(7, node="b")), CONTAINER)


def test_sample_with_a_full_id_is_keyed_by_its_64_hex_id() -> None:
    alert = _alert(load("sidekick-drop-and-execute.json"))
    assert incident_key(alert, CONTAINER) == (
        "container:4b1c9e7f2a3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7")


def test_short_container_id_key_includes_the_node() -> None:
    alert = _alert(load("falco-http-output-drop-and-execute.json"))
    assert incident_key(alert, CONTAINER) == "container:worker-2:9a8b7c6d5e4f"


def test_same_short_container_id_on_two_nodes_gives_two_keys() -> None:
    raw = load("falco-http-output-drop-and-execute.json")
    other = copy.deepcopy(raw)
    other["hostname"] = "worker-3"
    assert incident_key(_alert(raw), CONTAINER) != incident_key(_alert(other), CONTAINER)


def test_short_container_id_without_a_node_uses_a_dash() -> None:
    alert = _alert(load("legacy-chmod-drift.json"))
    assert incident_key(alert, CONTAINER) == "container:-:0c1d2e3f4a5b"


def test_pod_spec_keys_by_namespace_and_pod() -> None:
    alert = _alert(load("sidekick-drop-and-execute.json"))
    assert incident_key(alert, POD) == "pod:shop/web-7d9f8b6c5-x2x4q"


def test_pod_spec_falls_back_to_the_container_key_without_pod_metadata() -> None:
    alert = _alert(load("legacy-chmod-drift.json"))
    assert incident_key(alert, POD) == "container:-:0c1d2e3f4a5b"


def test_host_alerts_are_keyed_by_node_and_rule() -> None:
    rule = "Drop and execute new binary in container"
    alert = _host_alert("node-a", rule)
    assert alert.container_id is None
    assert alert.container_full_id is None
    digest = hashlib.sha256(rule.encode()).hexdigest()[:16]
    assert incident_key(alert, CONTAINER) == f"host:node-a:{digest}"


def test_host_alerts_share_a_key_only_with_the_same_node_and_rule() -> None:
    key = incident_key(_host_alert("node-a", "Rule A"), CONTAINER)
    assert incident_key(_host_alert("node-a", "Rule A"), CONTAINER) == key
    assert incident_key(_host_alert("node-b", "Rule A"), CONTAINER) != key
    assert incident_key(_host_alert("node-a", "Rule B"), CONTAINER) != key


def test_fields_spec_key_is_deterministic_and_hashed() -> None:
    spec = KeySpec.parse("k8s.ns.name,proc.name")
    first = incident_key(_alert(load("sidekick-drop-and-execute.json")), spec)
    second = incident_key(_alert(load("sidekick-drop-and-execute.json")), spec)
    assert first == second
    assert re.fullmatch(r"fields:[0-9a-f]{32}", first)
    canonical = b'[["k8s.ns.name","shop"],["proc.name","kworkerd"]]'
    expected = hashlib.sha256(canonical).hexdigest()[:32]
    assert first == f"fields:{expected}"


def test_fields_spec_key_ignores_fields_it_does_not_name() -> None:
    spec = KeySpec.parse("k8s.ns.name")
    one = _alert(drift_alert(1))
    two = _alert(drift_alert(2, node="elsewhere"))
    assert incident_key(one, spec) == incident_key(two, spec)


def test_fields_spec_key_differs_when_a_named_value_differs() -> None:
    spec = KeySpec.parse("k8s.ns.name,k8s.pod.name")
    one = _alert(drift_alert(1))
    two = _alert(drift_alert(2))
    assert incident_key(one, spec) != incident_key(two, spec)


def _fields_alert(**fields: Any) -> Alert:
    raw = drift_alert(1)
    raw["output_fields"].update(fields)
    return _alert(raw)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param({"a.x": "1", "b.x": "2"}, {"a.x": "1", "b.x": "3"}, id="plain values"),
        pytest.param({"a.x": "1\x1fb.x=2", "b.x": "3"}, {"a.x": "1", "b.x": "2\x1fb.x=3"},
                     id="separator inside an attacker-controlled value"),
        pytest.param({"a.x": None, "b.x": "2"}, {"a.x": "None", "b.x": "2"},
                     id="missing value versus the text None"),
    ],
)
def test_fields_spec_key_differs_whenever_the_named_values_differ(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    spec = KeySpec.parse("a.x,b.x")
    one, two = _fields_alert(**first), _fields_alert(**second)
    assert [one.field("a.x"), one.field("b.x")] != [two.field("a.x"), two.field("b.x")]
    assert incident_key(one, spec) != incident_key(two, spec)


# ---------------------------------------------------------------- new_incident_id


def _decode_crockford(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_incident_id_is_26_chars_of_crockford_base32() -> None:
    for _ in range(200):
        value = new_incident_id()
        assert len(value) == 26
        assert set(value) <= set(CROCKFORD), value
        assert value[0] in "01234567"  # 128 bits in 130: the top char holds 3 bits


def test_incident_ids_are_unique_over_ten_thousand_calls() -> None:
    ids = [new_incident_id() for _ in range(10_000)]
    assert len(set(ids)) == 10_000


def test_incident_ids_drawn_together_are_distinct_ulids_of_the_same_millisecond() -> None:
    ids = new_incident_ids(5_000)
    assert len(set(ids)) == 5_000
    assert all(len(i) == 26 and set(i) <= set(CROCKFORD) for i in ids)
    assert len({_decode_crockford(i) >> 80 for i in ids}) == 1
    assert new_incident_ids(0) == []


def test_incident_ids_created_two_ms_apart_sort_in_creation_order() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_incident_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def test_incident_id_starts_with_the_creation_time_in_milliseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ms = 1_795_183_331_418
    monkeypatch.setattr(incidents.time, "time_ns", lambda: ms * 1_000_000 + 999_999)
    value = new_incident_id()
    assert _decode_crockford(value) >> 80 == ms
    assert _decode_crockford(value[:10]) == ms  # 10 chars x 5 bits = 50 bits = 48 ms bits + 2


def test_incident_ids_of_consecutive_milliseconds_sort_by_time_whatever_the_randomness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([1_000_000_000 * 1_000_000 + i * 1_000_000 for i in (0, 1, 2)])
    randomness = iter([b"\xff" * 10, b"\x00" * 10, b"\x80" * 10])
    monkeypatch.setattr(incidents.time, "time_ns", lambda: next(clock))
    monkeypatch.setattr(incidents.os, "urandom", lambda n: next(randomness))
    ids = [new_incident_id() for _ in range(3)]
    assert ids == sorted(ids)
    assert _decode_crockford(ids[0]) & ((1 << 80) - 1) == (1 << 80) - 1
    assert _decode_crockford(ids[1]) & ((1 << 80) - 1) == 0


@pytest.mark.parametrize("text", ["2026-11-20T14:02:11Z".replace("1", "\u0661", 1),
                                  "2026-11-20T14:02:11+00:99", "2026-11-20T14:02:11+24:00"])
def test_times_with_non_ascii_digits_or_impossible_offsets_are_refused_with_the_text(
    text: str,
) -> None:
    with pytest.raises(ValueError, match=r"2026|\u0661"):
        parse_rfc3339_ns(text)
