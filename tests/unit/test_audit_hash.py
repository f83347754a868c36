"""The audit hash chain: what a record's hash covers, and the one canonical form of its data."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from responder.models.audit import GENESIS_HASH, AuditRecord, canonical_data, record_hash

BASE: dict[str, Any] = {
    "seq": 7,
    "time": "2026-11-20T14:02:11.418220977Z",
    "incident_id": "01JD2Q8V6X3N4P5R6S7T8V9W0X",
    "actor": "slack:U123",
    "kind": "approval.granted",
    "data_json": '{"action":"isolate","pod":"shop/web-1"}',
    "prev_hash": "a" * 64,
}

CHANGES: list[Any] = [
    pytest.param("seq", 8, id="seq"),
    pytest.param("seq", 0, id="seq zero"),
    pytest.param("time", "2026-11-20T14:02:11.418220978Z", id="time by one ns"),
    pytest.param("incident_id", "01JD2Q8V6X3N4P5R6S7T8V9W0Y", id="incident id"),
    pytest.param("incident_id", None, id="incident id none"),
    pytest.param("incident_id", "", id="incident id empty"),
    pytest.param("actor", "slack:U124", id="actor"),
    pytest.param("kind", "approval.denied", id="kind"),
    pytest.param("data_json", '{"action":"isolate","pod":"shop/web-2"}', id="data"),
    pytest.param("data_json", "", id="data empty"),
    pytest.param("prev_hash", "b" * 64, id="previous hash"),
    pytest.param("prev_hash", GENESIS_HASH, id="previous hash genesis"),
]


def test_record_hash_is_64_lowercase_hex_and_deterministic() -> None:
    first = record_hash(**BASE)
    assert first == record_hash(**dict(BASE))
    assert len(first) == 64
    assert set(first) <= set("0123456789abcdef")


def test_record_hash_is_sha256_of_the_compact_json_list_of_its_inputs() -> None:
    order = ["seq", "time", "incident_id", "actor", "kind", "data_json", "prev_hash"]
    body = json.dumps([BASE[k] for k in order], separators=(",", ":"), ensure_ascii=False)
    assert record_hash(**BASE) == hashlib.sha256(body.encode()).hexdigest()


@pytest.mark.parametrize(("name", "value"), CHANGES)
def test_record_hash_changes_when_any_single_input_changes(name: str, value: Any) -> None:
    assert BASE[name] != value
    changed = dict(BASE, **{name: value})
    assert record_hash(**changed) != record_hash(**BASE)


def test_record_hash_does_not_confuse_values_moved_between_fields() -> None:
    swapped = dict(BASE, actor=BASE["kind"], kind=BASE["actor"])
    assert record_hash(**swapped) != record_hash(**BASE)
    joined = dict(BASE, actor="slack:U123approval.granted", kind="")
    assert record_hash(**joined) != record_hash(**BASE)


def test_genesis_hash_is_sixty_four_zeros() -> None:
    assert GENESIS_HASH == "0" * 64


def test_canonical_data_sorts_keys_and_is_compact() -> None:
    assert canonical_data({"b": 1, "a": {"d": [1, 2], "c": None}}) == (
        '{"a":{"c":null,"d":[1,2]},"b":1}')


def test_canonical_data_is_key_order_independent_at_every_level() -> None:
    one = {"pod": "shop/web-1", "action": "isolate",
           "labels": {"app": "web", "tier": "front"}, "steps": [{"y": 1, "x": 2}]}
    two = {"steps": [{"x": 2, "y": 1}], "labels": {"tier": "front", "app": "web"},
           "action": "isolate", "pod": "shop/web-1"}
    assert canonical_data(one) == canonical_data(two)


def test_canonical_data_keeps_list_order() -> None:
    assert canonical_data({"a": [1, 2]}) != canonical_data({"a": [2, 1]})


def test_canonical_data_differs_when_a_value_differs() -> None:
    assert canonical_data({"a": 1}) != canonical_data({"a": "1"})
    assert canonical_data({"a": None}) != canonical_data({})


def test_canonical_data_keeps_non_ascii_text_as_utf8() -> None:
    assert canonical_data({"user": "jos\u00e9"}) == '{"user":"jos\u00e9"}'


def test_reordered_data_gives_the_same_record_hash() -> None:
    one = canonical_data({"b": 2, "a": 1})
    two = canonical_data({"a": 1, "b": 2})
    assert record_hash(**dict(BASE, data_json=one)) == record_hash(**dict(BASE, data_json=two))


def test_audit_record_serialises_every_field() -> None:
    record = AuditRecord(seq=1, time=BASE["time"], incident_id=None, actor="system",
                         kind="incident.opened", data={"k": "v"}, prev_hash=GENESIS_HASH,
                         hash="f" * 64)
    assert record.to_json() == {
        "seq": 1, "time": BASE["time"], "incident_id": None, "actor": "system",
        "kind": "incident.opened", "data": {"k": "v"}, "prev_hash": GENESIS_HASH,
        "hash": "f" * 64,
    }
