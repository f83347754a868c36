"""Property tests: whatever arrives, parse_body returns alerts or raises BodyError/BatchRejected.

Any other exception would surface as an HTTP 500 in the intake app, or stall the Redis consumer.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.intake.parsing import BatchRejected, BodyError, parse_body
from responder.models.alerts import Alert
from tests.support.samples import drift_alert
from tests.support.variants import fuzz_examples

SETTINGS = settings(max_examples=fuzz_examples(300), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "application/x-ndjson", "text/plain", "application/json; x=y"]
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)

JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=12,
)

ALERT_KEYS = st.sampled_from(
    ["uuid", "rule", "priority", "time", "output", "source", "hostname", "tags",
     "output_fields", "message"]
) | st.text(max_size=12)

FIELD_NAMES = st.sampled_from(
    ["container.id", "container.full_id", "k8s.ns.name", "k8s.pod.name", "evt.time",
     "evt.rawtime", "evt.hostname", "container.image", "container.image.repository",
     "container.image.tag", "container.image.digest", "container.name", "k8s.pod.uid"]
) | st.text(max_size=12)

PRIORITY_TEXT = st.sampled_from(["Critical", "critical", "info", "Debug", "", " ", "Severe"])
TIME_TEXT = st.sampled_from(
    ["2026-11-20T14:02:11.418220977Z", "2026-02-30T00:00:00Z", "2026-11-20T14:02:11+24:00",
     "2026-11-20T14:02:11-23:59", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
     "1970-01-01T00:00:00Z", ""]
)
CONTAINER_IDS = st.sampled_from(
    ["host", "<NA>", "", "4b1c9e7f2a3d", "containerd://" + "ab" * 32, "docker://" + "AB" * 32,
     "ab" * 40, "x://" + "f" * 64, "://", "cri-o://"]
)


def _assert_clean(body: bytes, content_type: str | None) -> None:
    try:
        alerts = parse_body(body, content_type, max_items=50)
    except (BodyError, BatchRejected):
        return
    assert isinstance(alerts, list)
    assert alerts
    assert all(isinstance(a, Alert) for a in alerts)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@SETTINGS
@given(body=st.binary(max_size=2048), content_type=CONTENT_TYPES)
def test_arbitrary_bytes_either_parse_or_raise_a_body_or_batch_error(
    body: bytes, content_type: str | None
) -> None:
    _assert_clean(body, content_type)


@SETTINGS
@given(value=JSON_VALUES, content_type=CONTENT_TYPES)
def test_arbitrary_json_value_as_a_body_either_parses_or_is_refused_cleanly(
    value: Any, content_type: str | None
) -> None:
    _assert_clean(_dumps(value), content_type)


@SETTINGS
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=4), content_type=CONTENT_TYPES)
def test_arbitrary_json_values_as_ndjson_lines_either_parse_or_are_refused_cleanly(
    values: list[Any], content_type: str | None
) -> None:
    _assert_clean(b"\n".join(_dumps(v) for v in values), content_type)


@SETTINGS
@given(
    changes=st.dictionaries(ALERT_KEYS, JSON_VALUES | PRIORITY_TEXT | TIME_TEXT, max_size=4),
    field_changes=st.dictionaries(FIELD_NAMES, JSON_VALUES | CONTAINER_IDS, max_size=6),
    drop=st.lists(st.sampled_from(["uuid", "rule", "priority", "time", "hostname"]),
                  max_size=3),
    content_type=CONTENT_TYPES,
)
def test_a_valid_alert_with_arbitrary_values_swapped_in_parses_or_is_refused_cleanly(
    changes: dict[str, Any], field_changes: dict[str, Any], drop: list[str],
    content_type: str | None,
) -> None:
    alert = drift_alert(3)
    for key in drop:
        alert.pop(key, None)
    alert["output_fields"].update(field_changes)
    alert.update(changes)
    _assert_clean(_dumps(alert), content_type)
    _assert_clean(_dumps([alert, drift_alert(4)]), content_type)


@SETTINGS
@given(
    depth=st.integers(min_value=0, max_value=1100),
    key=st.sampled_from(["extra", "output_fields", "tags", "message", "rule"]),
    with_uuid=st.booleans(),
    content_type=CONTENT_TYPES,
)
def test_a_deeply_nested_value_inside_an_alert_parses_or_is_refused_cleanly(
    depth: int, key: str, with_uuid: bool, content_type: str | None
) -> None:
    alert = drift_alert(5)
    if not with_uuid:
        del alert["uuid"]
    alert[key] = "$"
    text = json.dumps(alert).replace('"$"', "[" * depth + "]" * depth if depth else "null")
    _assert_clean(text.encode(), content_type)
