"""The hand-written check of the usual alert shapes accepts, normalises and refuses exactly as the
pydantic model does: whatever the item, ``parse_alert`` gives the model path's alert, or its
refusal with the same reasons.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.models import alerts
from responder.models.alerts import InvalidAlert, parse_alert
from tests.support.samples import drift_alert, json_samples, load
from tests.support.variants import fuzz_examples

SETTINGS = settings(max_examples=fuzz_examples(600), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

Outcome = tuple[str, Any]


def _outcome(parse: Any, item: object) -> Outcome:
    try:
        alert = parse(item, None)
    except InvalidAlert as exc:
        return ("refused", [(p.field, p.message) for p in exc.problems])
    return ("accepted", (alert, bytes(alert.raw)))


def _same_as_the_model(item: object) -> Outcome:
    fast = _outcome(parse_alert, copy.deepcopy(item))
    model = _outcome(alerts._parse_by_model, copy.deepcopy(item))
    assert fast == model
    return fast


@pytest.mark.parametrize("name", sorted(json_samples()))
def test_every_falco_sample_takes_the_hand_written_path_with_the_models_result(
        name: str) -> None:
    sample = json_samples()[name]
    assert alerts._parse_plain(copy.deepcopy(sample), None) is not None
    assert _same_as_the_model(sample)[0] == "accepted"


TEXT = st.text(max_size=20) | st.sampled_from(
    ["", "<NA>", "Critical", "critical ", "WARN", "Bogus", "a\x00b", "x" * 129, "x" * 300,
     "2026-11-20T14:02:11.418220977Z", "2026-11-20T14:02:11.41822097xZ",
     "2026-11-20T14:02:11.418220977+01:00", "2262-04-11T23:47:16.854775808Z",
     "2026-02-30T00:00:00.000000000Z", "containerd://" + "ab" * 32, "host"])
# Items come from orjson, whose integers fit in 64 bits, and which has no NaN or infinity.
SCALAR = (st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
          | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
TOP_KEYS = st.sampled_from(["uuid", "rule", "priority", "time", "output", "source", "hostname",
                            "tags", "message", "output_fields", "extra", "nested_extra"])
FIELD_KEYS = st.sampled_from(["container.id", "container.full_id", "container.name",
                              "container.image", "container.image.repository",
                              "container.image.tag", "container.image.digest", "k8s.ns.name",
                              "k8s.pod.name", "k8s.pod.uid", "evt.time", "evt.rawtime",
                              "evt.hostname", "proc.pid", "other"])


@st.composite
def near_alerts(draw: st.DrawFn) -> dict[str, Any]:
    """A real alert with a few of its top-level values and output fields changed or dropped."""
    base = draw(st.sampled_from([drift_alert(1), load("falco-http-output-drop-and-execute.json"),
                                 load("legacy-chmod-drift.json")]))
    item = copy.deepcopy(base)
    for key in draw(st.lists(TOP_KEYS, max_size=3)):
        if draw(st.booleans()):
            item.pop(key, None)
        else:
            item[key] = draw(VALUE | st.lists(TEXT, max_size=3))
    fields = item.get("output_fields")
    if isinstance(fields, dict):
        for key in draw(st.lists(FIELD_KEYS, max_size=4)):
            if draw(st.booleans()):
                fields.pop(key, None)
            else:
                fields[key] = draw(VALUE)
    return item


@SETTINGS
@given(near_alerts())
def test_a_changed_alert_gets_the_models_result(item: dict[str, Any]) -> None:
    _same_as_the_model(item)


@SETTINGS
@given(VALUE)
def test_any_json_value_gets_the_models_result(item: object) -> None:
    _same_as_the_model(item)


def test_values_just_past_each_limit_are_refused_with_the_models_reasons() -> None:
    over = {"uuid": "u" * 129, "rule": "r" * 1025, "source": "s" * 257, "hostname": "h" * 257,
            "output": "o" * (256 * 1024 + 1), "tags": ["t"] * 257}
    for key, value in over.items():
        item = drift_alert(2)
        item[key] = value
        assert _same_as_the_model(item)[0] == "refused", key
    item = drift_alert(2)
    item["output_fields"] = {f"f{i}": i for i in range(alerts.MAX_OUTPUT_FIELDS + 1)}
    assert _same_as_the_model(item)[0] == "refused"


def test_output_fields_read_from_the_json_text_behave_as_the_dict_they_stand_for() -> None:
    item = drift_alert(1)
    item["output_fields"]["k8s.pod.uid"] = "<NA>"
    text = orjson.dumps(item)
    alert = parse_alert(orjson.loads(text), memoryview(bytearray(text)))
    assert isinstance(alert.fields, alerts.OutputFields)  # the hand-written path keeps text
    expected = {k: None if v == "<NA>" else v for k, v in item["output_fields"].items()}
    assert dict(alert.fields) == expected
    assert alert.fields == expected
    assert expected == alert.fields
    assert alert.fields["k8s.pod.uid"] is None
    assert "k8s.pod.uid" in alert.fields
    assert alert.field("proc.name") == item["output_fields"]["proc.name"]
    assert alert.fields.get("no.such.field", "default") == "default"
    assert len(alert.fields) == len(expected)
    assert list(alert.fields) == list(expected)
    with pytest.raises(KeyError):
        alert.fields["no.such.field"]
    assert pickle.loads(pickle.dumps(alert.fields)) == expected
    assert repr(alert.fields) == repr(expected)
    assert alert == alerts._parse_by_model(orjson.loads(text), text)


def test_an_alert_from_a_json_array_keeps_its_own_text_and_fields() -> None:
    first, second = drift_alert(1), drift_alert(2)
    second["output_fields"]["proc.name"] = "other"
    body = orjson.dumps([first, second])
    parsed = [parse_alert(item) for item in orjson.loads(body)]
    assert [a.fields["proc.name"] for a in parsed] == [first["output_fields"]["proc.name"],
                                                       "other"]
    assert orjson.loads(parsed[1].raw) == second
