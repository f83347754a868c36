"""Hostile bodies against the body parser and the alert model, at the byte level.

tests/unit/test_hostile_bodies.py already drives ``parse_body`` with arbitrary bytes, JSON values
built by ``json.dumps`` and deep nesting. This file covers what ``json.dumps`` can never produce:
NaN and Infinity, numbers out of every range, duplicate keys, invalid UTF-8 inside strings,
lone surrogate escapes, byte order marks, NDJSON with odd line endings, and bodies at and above
the intake's 1 MiB limit. It also bounds each example's time (hypothesis deadline) and the
memory a large body may cost (tracemalloc peak, relative to the body's size), and checks that
whatever is accepted can be written back out (hashed, stored, handed to expressions), because an
accepted alert that the store then chokes on is a 500 one step later.
"""

from __future__ import annotations

import json
import tracemalloc
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.conducting.context import alert_context
from responder.intake.parsing import BatchRejected, BodyError, parse_body
from responder.models.alerts import Alert, stable_alert_id
from responder.models.times import MAX_NS
from tests.support.variants import fuzz_examples

MiB = 1024 * 1024
MAX_ITEMS = 10_000  # the intake's default DRIFT_MAX_BATCH_ALERTS

FUZZ = settings(max_examples=fuzz_examples(250), deadline=timedelta(seconds=2), database=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow])
LARGE = settings(max_examples=fuzz_examples(20), deadline=timedelta(seconds=10), database=None,
                 derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

pytestmark = pytest.mark.timeout(120)

# ------------------------------------------------------------------------------ JSON-ish tokens

#: Number literals JSON parsers disagree about, or that overflow something downstream.
ODD_NUMBERS = st.sampled_from([
    b"NaN", b"-NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"1e400", b"-1e400", b"1e-400",
    b"18446744073709551615", b"18446744073709551616", b"-9223372036854775809",
    b"9223372036854775807", b"-9223372036854775808", b"1" * 400, b"-" + b"9" * 40,
    b"0.1e99999", b"-0", b"-0.0", b"01", b"1.", b".5", b"0x10", b"1_000", b"+1", b"1e", b"1E+",
    b"4.9e-324", b"1.7976931348623157e308",
])
NUMBERS = (ODD_NUMBERS | st.integers().map(lambda i: str(i).encode())
           | st.floats(allow_nan=False, allow_infinity=False).map(lambda f: repr(f).encode()))

#: String literals: invalid UTF-8, surrogates (escaped and as CESU-8 bytes), NUL, overlong forms.
ODD_STRINGS = st.sampled_from([
    b'"\\ud800"', b'"\\udc00"', b'"\\udc00\\ud800"', b'"\\ud83d\\ude00"', b'"\\u0000"',
    b'"\xff"', b'"\xfe\xff"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\xf4\x90\x80\x80"',
    b'"\xc3"', b'"\xe2\x82"', b'"\\x41"', b'"\\u12"', b'"\\"', b'"\t"', b'"\n"', b'"\x00"',
    b"'single'", b'"<NA>"', b'"host"', b'""', b'" "', b'"\\u2028\\u2029"',
    b'"$(touch /tmp/x); `id` | rm -rf /"', b'"{{ 7*7 }}"', b'"<!channel>"',
])
TEXT_STRINGS = st.text(max_size=30).map(lambda s: json.dumps(s, ensure_ascii=False).encode())
RAW_BYTE_STRINGS = st.binary(max_size=20).filter(lambda b: b'"' not in b and b"\\" not in b) \
    .map(lambda b: b'"' + b + b'"')
STRINGS = ODD_STRINGS | TEXT_STRINGS | RAW_BYTE_STRINGS
LITERALS = st.sampled_from([b"true", b"false", b"null", b"True", b"None", b"undefined"])
SCALARS = NUMBERS | STRINGS | LITERALS


def _array(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4).map(_array)
    | st.lists(st.tuples(STRINGS, inner), max_size=4).map(_object),
    max_leaves=10,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _valid_alert(n: int = 1) -> dict[str, Any]:
    return {
        "uuid": f"00000000-0000-4000-8000-{n:012x}",
        "rule": "Drop and execute new binary in container",
        "priority": "Critical",
        "time": "2026-11-20T14:02:11.418220977Z",
        "output": "14:02:11.418220977: Critical Executing binary not part of base image",
        "source": "syscall",
        "hostname": "node-1",
        "tags": ["container", "mitre_persistence"],
        "output_fields": {
            "container.id": "4b1c9e7f2a3d",
            "container.full_id": "4b1c9e7f2a3d" + "ab" * 26,
            "k8s.ns.name": "shop",
            "k8s.pod.name": "web-1",
            "proc.cmdline": "sh -c /tmp/x",
            "evt.time": 1_795_356_131_418_220_977,
        },
    }


TOP_KEYS = st.sampled_from(["uuid", "rule", "priority", "time", "output", "source", "hostname",
                            "tags", "output_fields", "message", "extra"])
FIELD_KEYS = st.sampled_from(["container.id", "container.full_id", "k8s.ns.name",
                              "k8s.pod.name", "k8s.pod.uid", "evt.time", "evt.rawtime",
                              "container.image.repository", "container.name", "proc.cmdline"])


@st.composite
def alert_texts(draw: st.DrawFn) -> bytes:
    """A valid alert's JSON text with raw, possibly invalid, values spliced in at chosen keys,
    some keys repeated (duplicate keys: which one wins is the parser's business)."""
    alert = _valid_alert(draw(st.integers(0, 2**40)))
    top = draw(st.dictionaries(TOP_KEYS, VALUES, max_size=3))
    fields = draw(st.dictionaries(FIELD_KEYS, VALUES, max_size=3))
    duplicate_top = draw(st.lists(st.tuples(TOP_KEYS, VALUES), max_size=2))
    drop = draw(st.sets(st.sampled_from(["uuid", "time", "hostname", "output_fields"]),
                        max_size=2))
    field_pairs = [(_dumps(k), _dumps(v)) for k, v in alert["output_fields"].items()
                   if k not in fields]
    field_pairs += [(_dumps(k), v) for k, v in fields.items()]
    pairs: list[tuple[bytes, bytes]] = []
    for key, value in alert.items():
        if key in drop or key in top:
            continue
        pairs.append((_dumps(key), _object(field_pairs) if key == "output_fields"
                      else _dumps(value)))
    pairs += [(_dumps(k), v) for k, v in top.items()]
    pairs += [(_dumps(k), v) for k, v in duplicate_top]
    return _object(draw(st.permutations(pairs)))


CONTENT_TYPES = st.sampled_from([
    None, "", "application/json", "application/x-ndjson", "application/ndjson",
    "application/jsonl", "APPLICATION/X-NDJSON ; charset=latin-1", "application/x-ndjson;",
    ";", "text/plain", "application/json; charset=utf-16", "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]) | st.text(max_size=20)

SEPARATORS = st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\r", b"\n \t\n", b"\x0b", b"\x0c",
                              b"\n\x00\n", b"\xe2\x80\xa8", b"\n\xef\xbb\xbf"])
PREFIXES = st.sampled_from([b"", b"", b"\xef\xbb\xbf", b"\xff\xfe", b" \t\r\n", b"\x00"])
SUFFIXES = st.sampled_from([b"", b"", b"\n", b"\r\n", b"\x00", b" garbage", b"]", b"}", b","])

# ------------------------------------------------------------------------------ the property


def _assert_clean_outcome(body: bytes, content_type: str | None) -> None:
    """Alerts, or BodyError / BatchRejected with a reason; nothing else, and nothing accepted
    that cannot be hashed, stored or handed to an expression."""
    refusal: BodyError | BatchRejected | None = None
    alerts: list[Alert] = []
    try:
        alerts = parse_body(body, content_type, max_items=MAX_ITEMS)
    except (BodyError, BatchRejected) as exc:
        refusal = exc
    if isinstance(refusal, BodyError):
        assert str(refusal).strip(), "a BodyError must say why"
        return
    if isinstance(refusal, BatchRejected):
        assert refusal.problems, "a rejected batch must list its problems"
        assert refusal.total >= len(refusal.problems)
        for problem in refusal.problems:
            assert problem.index >= 0
            assert problem.field.strip()
            assert problem.message.strip()
        return
    assert alerts
    assert len(alerts) <= MAX_ITEMS
    for alert in alerts:
        assert isinstance(alert, Alert)
        assert alert.rule
        assert 0 < len(alert.alert_id) <= 128
        assert -MAX_NS <= alert.time_ns <= MAX_NS
        # What the recorder and the conductor do with an accepted alert must not fail.
        # The recorder stores the JSON text as received (the sample rows): it must decode as
        # UTF-8 and parse back to a JSON object.
        decoded = orjson.loads(bytes(alert.raw).decode())
        assert isinstance(decoded, dict)
        stable_alert_id(decoded)
        orjson.dumps(alert_context(alert))
        for value in (alert.node, alert.namespace, alert.pod, alert.pod_uid,
                      alert.container_id, alert.container_name, alert.image):
            assert value is None or "\x00" not in value


@FUZZ
@given(body=VALUES, prefix=PREFIXES, suffix=SUFFIXES, content_type=CONTENT_TYPES)
def test_any_json_ish_value_with_odd_numbers_strings_and_framing_is_parsed_or_refused_with_a_reason(
    body: bytes, prefix: bytes, suffix: bytes, content_type: str | None,
) -> None:
    _assert_clean_outcome(prefix + body + suffix, content_type)


@FUZZ
@given(text=alert_texts(), prefix=PREFIXES, suffix=SUFFIXES, content_type=CONTENT_TYPES)
def test_an_alert_with_raw_hostile_values_and_duplicate_keys_is_parsed_or_refused_with_a_reason(
    text: bytes, prefix: bytes, suffix: bytes, content_type: str | None,
) -> None:
    _assert_clean_outcome(prefix + text + suffix, content_type)
    _assert_clean_outcome(_array([text, _dumps(_valid_alert(2))]), content_type)


@FUZZ
@given(lines=st.lists(alert_texts() | VALUES, min_size=1, max_size=5),
       separators=st.lists(SEPARATORS, min_size=5, max_size=5), prefix=PREFIXES,
       suffix=SUFFIXES, content_type=CONTENT_TYPES)
def test_ndjson_with_odd_line_endings_boms_and_nuls_is_parsed_or_refused_with_a_reason(
    lines: list[bytes], separators: list[bytes], prefix: bytes, suffix: bytes,
    content_type: str | None,
) -> None:
    body = prefix + b"".join(line + sep for line, sep in zip(lines, separators, strict=False))
    _assert_clean_outcome(body + suffix, content_type)


@FUZZ
@given(value=ODD_NUMBERS, key=st.sampled_from(["evt.time", "evt.rawtime", "proc.pid", "x"]),
       top=st.sampled_from(["time", "priority", "rule", "uuid", "tags", "extra"]))
def test_out_of_range_numbers_anywhere_in_an_alert_are_accepted_as_data_or_refused(
    value: bytes, key: str, top: str,
) -> None:
    alert = _valid_alert()
    del alert["time"]  # so that evt.time / evt.rawtime decide the time
    in_fields = _dumps(alert).replace(b'"output_fields": {',
                                      b'"output_fields": {' + _dumps(key) + b": " + value + b", ")
    _assert_clean_outcome(in_fields, "application/json")
    at_top = _dumps(_valid_alert()).replace(b"{", b"{" + _dumps(top) + b": " + value + b", ", 1)
    _assert_clean_outcome(at_top, "application/json")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_nan_and_infinity_never_become_alert_values(literal: bytes) -> None:
    alert = _dumps(_valid_alert()).replace(b'"output_fields": {',
                                           b'"output_fields": {"score": ' + literal + b", ")
    with pytest.raises(BodyError):
        parse_body(alert, "application/json", max_items=10)


def test_a_duplicate_key_is_read_one_way_and_the_alert_id_follows_what_was_read() -> None:
    base = _valid_alert()
    del base["uuid"]
    text = _dumps(base)[:-1] + b', "rule": "Terminal shell in container"}'
    [alert] = parse_body(text, "application/json", max_items=10)
    assert alert.rule in ("Drop and execute new binary in container", "Terminal shell in container")
    # The stored text keeps both keys, and reading it again gives what the intake read.
    assert bytes(alert.raw) == text
    read = orjson.loads(alert.raw)
    assert alert.rule == read["rule"]
    assert alert.alert_id == stable_alert_id(read)


@pytest.mark.parametrize("raw", [b"\\ud800", b"\\udfff", b"\\udc00\\ud800", b"\xed\xa0\x80",
                                 b"\xff", b"\xc0\xaf", b"\xf4\x90\x80\x80"],
                         ids=["lone-high", "lone-low", "reversed-pair", "cesu", "ff",
                              "overlong", "above-max"])
@pytest.mark.parametrize("where", ["rule", "output", "output_fields.proc.cmdline", "key"])
def test_invalid_unicode_in_any_string_is_a_body_error_never_a_stored_value(
    raw: bytes, where: str,
) -> None:
    text = _dumps(_valid_alert())
    if where == "key":
        body = text[:-1] + b', "k' + raw + b'": 1}'
    elif where == "output_fields.proc.cmdline":
        body = text.replace(b'"sh -c /tmp/x"', b'"sh ' + raw + b'"')
    else:
        body = text.replace(_dumps(where) + b": \"", _dumps(where) + b': "' + raw, 1)
    assert body != text
    with pytest.raises(BodyError):
        parse_body(body, "application/json", max_items=10)


# ------------------------------------------------------------------------------ large bodies

LARGE_KIND_NAMES = [
    "huge-output", "huge-extra-string", "huge-field-value", "many-output-fields",
    "many-extra-keys", "many-tags", "array-of-alerts", "ndjson-of-alerts", "array-of-invalid",
    "deep-arrays", "deep-objects", "long-number", "whitespace", "huge-key",
]
LARGE_KINDS = st.sampled_from(LARGE_KIND_NAMES)


def _large_body(kind: str, size: int, n: int) -> tuple[bytes, str]:
    """About ``size`` bytes of one kind of large body, and its content type."""
    alert = _valid_alert(n)
    ctype = "application/json"
    if kind == "huge-output":
        body = _dumps(alert | {"output": "o" * size})
    elif kind == "huge-extra-string":
        alert.pop("uuid")  # the alert id becomes a hash over the whole payload
        body = json.dumps(alert | {"extra": "\u00e9" * (size // 2)}, ensure_ascii=False).encode()
    elif kind == "huge-field-value":
        alert["output_fields"]["proc.cmdline"] = "$(x)" * (size // 4)
        body = _dumps(alert)
    elif kind == "many-output-fields":
        alert["output_fields"] = {f"f.{i}": i for i in range(size // 18)}
        body = _dumps(alert)
    elif kind == "many-extra-keys":
        alert.pop("uuid")
        body = _dumps(alert | {f"k{i}": [i] for i in range(size // 18)})
    elif kind == "many-tags":
        body = _dumps(alert | {"tags": ["t"] * (size // 5)})
    elif kind in ("array-of-alerts", "ndjson-of-alerts", "array-of-invalid"):
        invalid = {"priority": "Severe", "tags": "x", "time": "soon"}
        one = len(_dumps(invalid if kind == "array-of-invalid" else _valid_alert())) + 2
        count = min(MAX_ITEMS, max(1, size // one))
        items = [invalid if kind == "array-of-invalid" else _valid_alert(n + i)
                 for i in range(count)]
        if kind == "ndjson-of-alerts":
            body, ctype = b"\n".join(_dumps(i) for i in items), "application/x-ndjson"
        else:
            body = _dumps(items)
    elif kind == "deep-arrays":
        body = b"[" * (size // 2) + b"]" * (size // 2)
    elif kind == "deep-objects":
        body = b'{"a":' * (size // 6) + b"1" + b"}" * (size // 6)
    elif kind == "long-number":
        body = _dumps(alert).replace(b'"output_fields": {',
                                     b'"output_fields": {"n": ' + b"7" * size + b", ")
    elif kind == "whitespace":
        body = b" \n" * (size // 2) + _dumps(alert)
    elif kind == "huge-key":
        body = _dumps(alert | {"k" * size: 1})
    else:  # pragma: no cover - the strategy names every kind
        raise AssertionError(kind)
    return body, ctype


def _peak_bytes(body: bytes, content_type: str) -> int:
    tracemalloc.start()
    try:
        _assert_clean_outcome(body, content_type)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


#: The parser may hold the body, its decoded values and the validated alerts at once: a few
#: dozen times the body's size. Anything super-linear (an expansion, a copy per item) is far
#: above this at a megabyte.
MEMORY_FACTOR = 64
MEMORY_SLACK = 8 * MiB


@LARGE
@given(kind=LARGE_KINDS, size=st.integers(min_value=64 * 1024, max_value=MiB),
       n=st.integers(0, 1000))
def test_a_large_body_costs_memory_linear_in_its_size_and_finishes_in_time(
    kind: str, size: int, n: int,
) -> None:
    body, content_type = _large_body(kind, size, n)
    peak = _peak_bytes(body, content_type)
    assert peak <= MEMORY_FACTOR * len(body) + MEMORY_SLACK, (
        f"{kind}: {len(body)} bytes in, {peak} bytes peak")


@pytest.mark.parametrize("kind", LARGE_KIND_NAMES)
def test_a_body_at_the_intakes_one_mebibyte_limit_stays_within_the_memory_bound(
    kind: str,
) -> None:
    body, content_type = _large_body(kind, MiB - 4096, 7)
    assert 512 * 1024 < len(body) <= MiB + 64 * 1024, (kind, len(body))
    peak = _peak_bytes(body, content_type)
    assert peak <= MEMORY_FACTOR * len(body) + MEMORY_SLACK, (
        f"{kind}: {len(body)} bytes in, {peak} bytes peak")


def test_the_memory_bound_catches_a_body_that_expands() -> None:
    # The bound above must be able to fail: a helper that expands its input 200 times breaks it.
    body = b"x" * (256 * 1024)
    tracemalloc.start()
    try:
        expanded = [body.decode() + str(i) for i in range(200)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(expanded) == 200
    assert peak > MEMORY_FACTOR * len(body) + MEMORY_SLACK
