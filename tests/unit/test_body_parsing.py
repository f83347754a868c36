"""Request bodies: JSON object, JSON array or NDJSON -> validated alerts, all or nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from responder.intake.parsing import (
    MAX_REPORTED_PROBLEMS,
    BatchRejected,
    BodyError,
    ItemProblem,
    decode_body,
    parse_body,
    validate_items,
)
from responder.models.alerts import Alert
from tests.support.samples import drift_alert, load, samples_dir

SIDEKICK_UUID = "3f2b6c1e-8d4a-4c1f-9b7e-2a5d9e6f0c11"
MEMFD_UUID = "b0e3d1a2-6f5c-4e7d-8a9b-0c1d2e3f4a5b"


def _batch_bytes() -> bytes:
    return (samples_dir() / "batch.ndjson").read_bytes()


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _ndjson(values: list[Any]) -> bytes:
    return b"\n".join(_dumps(v) for v in values) + b"\n"


def _body_error(body: bytes, content_type: str | None = "application/json",
                max_items: int = 100) -> str:
    with pytest.raises(BodyError) as caught:
        decode_body(body, content_type, max_items=max_items)
    return str(caught.value)


def _rejected(items: list[Any]) -> BatchRejected:
    with pytest.raises(BatchRejected) as caught:
        validate_items(items)
    return caught.value


# ---------------------------------------------------------------- decode_body: accepted shapes


def test_one_json_object_decodes_to_a_list_of_one() -> None:
    alert = load("sidekick-drop-and-execute.json")
    assert decode_body(_dumps(alert), "application/json", max_items=10) == [alert]


def test_json_array_decodes_to_its_items_in_order() -> None:
    items = [drift_alert(1), drift_alert(2), drift_alert(3)]
    assert decode_body(_dumps(items), "application/json", max_items=10) == items


@pytest.mark.parametrize(
    "content_type",
    ["application/x-ndjson", "application/ndjson", "application/jsonl",
     "application/x-jsonlines", "Application/X-NDJSON; charset=utf-8"],
)
def test_ndjson_with_an_ndjson_content_type_decodes_one_item_per_line(content_type: str) -> None:
    items = decode_body(_batch_bytes(), content_type, max_items=10)
    assert [item.get("uuid") for item in items] == [SIDEKICK_UUID, MEMFD_UUID, None]
    assert items[2]["rule"] == "Terminal shell in container"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_ndjson_sent_as_plain_json_is_still_decoded_line_by_line(
    content_type: str | None,
) -> None:
    items = decode_body(_batch_bytes(), content_type, max_items=10)
    assert [item.get("uuid") for item in items] == [SIDEKICK_UUID, MEMFD_UUID, None]


def test_blank_lines_in_ndjson_are_skipped() -> None:
    body = b"\n\n" + _dumps({"n": 1}) + b"\n   \n\t\n" + _dumps({"n": 2}) + b"\n\n"
    assert decode_body(body, "application/x-ndjson", max_items=10) == [{"n": 1}, {"n": 2}]


def test_ndjson_with_crlf_line_endings_decodes() -> None:
    body = _dumps({"n": 1}) + b"\r\n" + _dumps({"n": 2}) + b"\r\n"
    assert decode_body(body, "application/x-ndjson", max_items=10) == [{"n": 1}, {"n": 2}]


def test_single_object_with_a_trailing_newline_is_one_item() -> None:
    assert decode_body(_dumps({"n": 1}) + b"\n", "application/json", max_items=10) == [{"n": 1}]


def test_pretty_printed_json_object_is_one_item_not_ndjson() -> None:
    alert = load("falco-terminal-shell.json")
    body = json.dumps(alert, indent=2).encode()
    assert decode_body(body, "application/json", max_items=10) == [alert]


def test_exactly_max_items_is_accepted() -> None:
    items = [{"n": i} for i in range(5)]
    assert decode_body(_dumps(items), "application/json", max_items=5) == items


# ---------------------------------------------------------------- decode_body: refusals


@pytest.mark.parametrize("body", [b"", b" ", b"   \n\t\r\n  "], ids=["empty", "space", "blank"])
@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson", None])
def test_empty_or_whitespace_body_is_a_body_error(body: bytes, content_type: str | None) -> None:
    assert "empty body" in _body_error(body, content_type)


def test_invalid_json_is_a_body_error() -> None:
    assert "not valid JSON" in _body_error(b'{"rule": "x", ')


def test_json_with_trailing_garbage_on_one_line_is_a_body_error() -> None:
    assert "not valid JSON" in _body_error(b'{"rule": "x"} trailing')


@pytest.mark.parametrize(
    "body",
    [b'{"rule": "\xff\xfe"}', b'\xc3\x28', b'{"rule": "ok"}\n{"rule": "\xed\xa0\x80"}\n'],
    ids=["bad byte in object", "truncated sequence", "surrogate bytes in ndjson"],
)
def test_invalid_utf8_is_a_body_error(body: bytes) -> None:
    _body_error(body)


def test_empty_json_array_is_a_body_error() -> None:
    assert "no alerts" in _body_error(b"[]")


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/json"])
def test_bad_ndjson_line_is_a_body_error_naming_its_line_number(content_type: str) -> None:
    body = _dumps({"n": 1}) + b"\n" + _dumps({"n": 2}) + b"\n{broken\n" + _dumps({"n": 4})
    message = _body_error(body, content_type)
    assert message.startswith("line 3 is not valid JSON")


def test_ndjson_line_numbers_count_blank_lines_too() -> None:
    body = _dumps({"n": 1}) + b"\n\n\n" + b"nope\n"
    assert _body_error(body, "application/x-ndjson").startswith("line 4 ")


@pytest.mark.parametrize(
    "body",
    [_dumps([{"n": i} for i in range(4)]), _ndjson([{"n": i} for i in range(4)])],
    ids=["array", "ndjson"],
)
def test_more_items_than_max_items_is_a_body_error(body: bytes) -> None:
    message = _body_error(body, "application/json", max_items=3)
    assert message == "4 alerts in one request; the limit is 3"


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000,
     b'{"rule": "r", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
    ids=["open brackets", "balanced brackets", "nested objects", "deep value in alert"],
)
@pytest.mark.parametrize("content_type", ["application/json", "application/x-ndjson"])
def test_deeply_nested_json_is_a_body_error_not_a_recursion_error(
    body: bytes, content_type: str
) -> None:
    _body_error(body, content_type)


def test_deeply_nested_ndjson_line_is_a_body_error_naming_the_line() -> None:
    body = _dumps({"n": 1}) + b"\n" + b"[" * 100_000 + b"\n"
    assert _body_error(body, "application/json").startswith("line 2 ")


# ---------------------------------------------------------------- validate_items


def test_valid_items_become_alerts_in_order() -> None:
    alerts = validate_items([drift_alert(1), drift_alert(2, node="node-2")])
    assert [a.pod for a in alerts] == ["web-1", "web-2"]
    assert [a.node for a in alerts] == ["node-1", "node-2"]
    assert all(isinstance(a, Alert) for a in alerts)


def test_validate_items_of_nothing_is_nothing() -> None:
    assert validate_items([]) == []


def test_batch_with_bad_items_is_rejected_listing_every_bad_index_and_field() -> None:
    no_rule = drift_alert(2)
    del no_rule["rule"]
    items = [drift_alert(1), no_rule, drift_alert(3), "not an alert",
             drift_alert(5, priority="Severe")]
    rejected = _rejected(items)
    assert [(p.index, p.field) for p in rejected.problems] == [
        (1, "rule"), (3, "(item)"), (4, "priority"),
    ]
    assert rejected.total == 3
    assert str(rejected) == "3 problem(s) in the batch"
    assert all(isinstance(p, ItemProblem) and p.message for p in rejected.problems)


def test_rejected_batch_reports_no_problem_for_the_good_items() -> None:
    items = [drift_alert(0), {"priority": "Critical"}, drift_alert(2)]
    rejected = _rejected(items)
    assert {p.index for p in rejected.problems} == {1}


def test_rejected_batch_reports_several_problems_of_one_item() -> None:
    rejected = _rejected([{"priority": "Severe", "tags": "x"}])
    assert sorted(p.field for p in rejected.problems) == ["priority", "rule", "tags"]
    assert {p.index for p in rejected.problems} == {0}
    assert rejected.total == 3


def test_item_problem_serialises_to_index_field_and_message() -> None:
    rejected = _rejected([drift_alert(0), 7])
    assert [p.to_json() for p in rejected.problems] == [
        {"index": 1, "field": "(item)", "message": "an alert must be a JSON object, not int"},
    ]


def test_reported_problems_are_capped_while_the_total_stays_exact() -> None:
    two_problems_each = {"priority": "Severe"}  # no rule, unknown priority
    rejected = _rejected([two_problems_each] * 150)
    assert len(rejected.problems) == MAX_REPORTED_PROBLEMS
    assert rejected.total == 300
    assert rejected.problems[0].index == 0
    assert rejected.problems[-1].index == MAX_REPORTED_PROBLEMS // 2 - 1


def test_exactly_max_reported_problems_are_all_listed() -> None:
    rejected = _rejected(["x"] * MAX_REPORTED_PROBLEMS)
    assert len(rejected.problems) == MAX_REPORTED_PROBLEMS
    assert rejected.total == MAX_REPORTED_PROBLEMS
    assert [p.index for p in rejected.problems] == list(range(MAX_REPORTED_PROBLEMS))


# ---------------------------------------------------------------- parse_body end to end


def test_parse_body_turns_the_sample_batch_into_three_alerts() -> None:
    alerts = parse_body(_batch_bytes(), "application/x-ndjson", max_items=10)
    assert [a.rule for a in alerts] == [
        "Drop and execute new binary in container",
        "Fileless execution via memfd_create",
        "Terminal shell in container",
    ]
    assert alerts[0].alert_id == SIDEKICK_UUID
    assert alerts[2].alert_id.startswith("sha256:")


def test_parse_body_rejects_the_whole_batch_when_one_line_is_a_bad_alert() -> None:
    lines = _batch_bytes().splitlines()
    lines[1] = _dumps({"rule": "x", "priority": "Critical"})  # no time, no evt.time
    with pytest.raises(BatchRejected) as caught:
        parse_body(b"\n".join(lines), "application/x-ndjson", max_items=10)
    assert [(p.index, p.field) for p in caught.value.problems] == [(1, "time")]


def test_parse_body_reports_undecodable_bodies_as_body_errors() -> None:
    with pytest.raises(BodyError):
        parse_body(b"{", "application/json", max_items=10)


@pytest.mark.parametrize("depth", [1, 253, 254, 300, 1023, 1024])
def test_alert_without_uuid_with_a_deeply_nested_extra_key_is_accepted_or_refused_cleanly(
    depth: int,
) -> None:
    # The body nests depth + 1 levels. orjson reads up to 1024 levels but writes at most 254, and
    # the id of an alert without uuid is a hash of its raw payload written back out by orjson.
    nested = b"[" * depth + b"]" * depth
    body = (b'{"rule": "r", "priority": "Critical", "time": "2026-11-20T14:02:11Z", '
            b'"output_fields": {"container.id": "4b1c9e7f2a3d"}, "extra": ' + nested + b"}")
    try:
        alerts = parse_body(body, "application/json", max_items=10)
    except (BodyError, BatchRejected):
        return
    assert len(alerts) == 1
    assert alerts[0].alert_id.startswith("sha256:")
