"""The Falco alert model: parsing, normalisation, stable ids, priorities and refusals."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import orjson
import pytest

from responder.intake.parsing import parse_body
from responder.models.alerts import (
    MAX_OUTPUT_FIELDS,
    Alert,
    FalcoPayload,
    InvalidAlert,
    Problem,
    normalise,
    parse_alert,
    stable_alert_id,
)
from responder.models.priorities import Priority
from tests.support.samples import load, samples_dir

SIDEKICK = "sidekick-drop-and-execute.json"
HTTP_OUTPUT = "falco-http-output-drop-and-execute.json"
LEGACY = "legacy-chmod-drift.json"
MEMFD = "sidekick-memfd-fileless.json"
TERMINAL = "falco-terminal-shell.json"

FULL_ID = "4b1c9e7f2a3d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"
OTHER_FULL_ID = "0123456789abcdef" * 4


def _canonical_sha(raw: dict[str, Any]) -> str:
    """The id we expect for a payload without uuid, computed without the code under test."""
    text = json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _problems(item: object) -> list[Problem]:
    with pytest.raises(InvalidAlert) as caught:
        parse_alert(item)
    assert caught.value.problems, "InvalidAlert must carry at least one problem"
    return caught.value.problems


def _minimal(**changes: Any) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "rule": "Drop and execute new binary in container",
        "priority": "Critical",
        "time": "2026-11-20T14:02:11.418220977Z",
        "hostname": "node-a",
        "output_fields": {"container.id": "4b1c9e7f2a3d"},
    }
    alert.update(changes)
    return alert


def _with_fields(**fields: Any) -> dict[str, Any]:
    alert = _minimal()
    alert["output_fields"] = dict(fields)
    return alert


def _batch_lines() -> list[dict[str, Any]]:
    text = (samples_dir() / "batch.ndjson").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- every sample parses


def _sample_names() -> list[str]:
    return sorted(p.name for p in samples_dir().glob("*.json"))


def test_the_sample_directory_holds_the_five_documented_json_samples() -> None:
    assert _sample_names() == sorted([SIDEKICK, HTTP_OUTPUT, LEGACY, MEMFD, TERMINAL])


@pytest.mark.parametrize("name", _sample_names())
def test_every_json_sample_parses_into_an_alert(name: str) -> None:
    raw = load(name)
    alert = parse_alert(raw)
    assert isinstance(alert, Alert)
    assert alert.rule == raw["rule"]
    assert alert.output == raw["output"]
    assert orjson.loads(alert.raw) == raw  # the JSON text, re-serialised when not given


def test_batch_file_holds_three_alerts_one_a_line() -> None:
    assert len(_batch_lines()) == 3


@pytest.mark.parametrize(
    ("line_index", "same_as"), [(0, SIDEKICK), (1, MEMFD), (2, TERMINAL)]
)
def test_each_batch_line_parses_to_the_same_alert_as_its_json_sample(
    line_index: int, same_as: str
) -> None:
    from_line = parse_alert(_batch_lines()[line_index])
    from_file = parse_alert(load(same_as))
    assert from_line == from_file
    assert from_line.alert_id == from_file.alert_id


# ---------------------------------------------------------------- exact normalised values

EXPECTED: dict[str, dict[str, Any]] = {
    SIDEKICK: {
        "alert_id": "3f2b6c1e-8d4a-4c1f-9b7e-2a5d9e6f0c11",
        "rule": "Drop and execute new binary in container",
        "priority": Priority.CRITICAL,
        "time_ns": 1_795_183_331_418_220_977,
        "source": "syscall",
        "node": "ip-10-0-3-17.ec2.internal",
        "tags": ("PCI_DSS_11.5.1", "TA0003", "container", "maturity_stable",
                 "mitre_persistence", "process"),
        "container_id": "4b1c9e7f2a3d",
        "container_full_id": FULL_ID,
        "container_name": "web",
        "namespace": "shop",
        "pod": "web-7d9f8b6c5-x2x4q",
        "pod_uid": None,
        "image": "registry.example.com/shop/web:1.8.2",
    },
    HTTP_OUTPUT: {
        "alert_id": None,  # sha256 of the canonical payload, checked separately
        "rule": "Drop and execute new binary in container",
        "priority": Priority.CRITICAL,
        "time_ns": 1_795_248_940_002_113_004,
        "source": "syscall",
        "node": "worker-2",
        "tags": ("PCI_DSS_11.5.1", "TA0003", "container", "maturity_stable",
                 "mitre_persistence", "process"),
        "container_id": "9a8b7c6d5e4f",
        "container_full_id": None,
        "container_name": "api",
        "namespace": "payments",
        "pod": "api-5c7d8-qwert",
        "pod_uid": None,
        "image": "ghcr.io/acme/api:v2.3.0",
    },
    LEGACY: {
        "alert_id": None,
        "rule": "Container Drift Detected (chmod)",
        "priority": Priority.ERROR,
        "time_ns": 1_795_079_564_551_020_300,
        "source": None,
        "node": None,
        "tags": (),
        "container_id": "0c1d2e3f4a5b",
        "container_full_id": None,
        "container_name": None,
        "namespace": None,
        "pod": None,
        "pod_uid": None,
        "image": None,
    },
    MEMFD: {
        "alert_id": "b0e3d1a2-6f5c-4e7d-8a9b-0c1d2e3f4a5b",
        "rule": "Fileless execution via memfd_create",
        "priority": Priority.CRITICAL,
        "time_ns": 1_795_387_203_901_000_000,
        "source": "syscall",
        "node": "gke-pool-a-1f2e",
        "tags": ("T1620", "container", "maturity_stable", "mitre_defense_evasion", "process"),
        "container_id": "77aa88bb99cc",
        "container_full_id": None,
        "container_name": "worker",
        "namespace": "batch",
        "pod": "jobs-worker-0",
        "pod_uid": None,
        "image": "docker.io/library/python:3.12-slim",
    },
    TERMINAL: {
        "alert_id": None,
        "rule": "Terminal shell in container",
        "priority": Priority.NOTICE,
        "time_ns": 1_795_431_909_100_200_300,
        "source": "syscall",
        "node": "aks-nodepool1-123-vmss000001",
        "tags": ("T1059", "container", "maturity_stable", "mitre_execution", "shell"),
        "container_id": "5f6e7d8c9b0a",
        "container_full_id": None,
        "container_name": "nginx",
        "namespace": "default",
        "pod": "frontend-6b5d-abcde",
        "pod_uid": None,
        "image": "docker.io/library/nginx:1.27",
    },
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_normalises_to_exactly_the_expected_values(name: str) -> None:
    raw = load(name)
    alert = parse_alert(raw)
    expected = dict(EXPECTED[name])
    if expected["alert_id"] is None:
        expected["alert_id"] = _canonical_sha(raw)
    actual = {key: getattr(alert, key) for key in expected}
    assert actual == expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_container_ids_of_every_sample_are_12_hex_chars_and_64_or_missing(name: str) -> None:
    alert = parse_alert(load(name))
    assert alert.container_id is not None
    assert len(alert.container_id) == 12
    assert all(c in "0123456789abcdef" for c in alert.container_id)
    if alert.container_full_id is not None:
        assert len(alert.container_full_id) == 64
        assert alert.container_full_id.startswith(alert.container_id)


def test_time_keeps_full_nanosecond_precision() -> None:
    alert = parse_alert(_minimal(time="2026-11-20T14:02:11.418220977Z"))
    assert alert.time_ns == 1_795_183_331_418_220_977
    assert alert.time_ns % 1_000 == 977


def test_output_fields_are_kept_with_their_json_types() -> None:
    alert = parse_alert(load(SIDEKICK))
    assert alert.field("proc.pid") == 48213
    assert alert.field("user.loginuid") == -1
    assert alert.field("proc.cmdline") == "kworkerd -o stratum+tcp://203.0.113.7:3333"
    assert alert.field("no.such.field") is None
    assert alert.fields["container.start_ts"] == 1_763_646_000_123_456_789


def test_falco_payload_tolerates_unknown_top_level_keys() -> None:
    payload = FalcoPayload.model_validate(_minimal(falco_version="0.39.0"))
    assert payload.model_extra == {"falco_version": "0.39.0"}


def test_normalise_accepts_a_validated_payload_and_keeps_the_text_as_received() -> None:
    raw = load(MEMFD)
    text = b"  " + orjson.dumps(raw) + b"\r"
    alert = normalise(FalcoPayload.model_validate(raw), raw, text)
    assert alert == parse_alert(load(MEMFD))
    assert alert.raw is text  # kept as it came, not re-serialised


def test_an_ndjson_line_is_kept_as_a_view_of_the_body_not_a_copy() -> None:
    body = orjson.dumps(load(MEMFD)) + b"\n" + orjson.dumps(load(HTTP_OUTPUT))
    first, second = parse_body(body, "application/x-ndjson", max_items=10)
    assert isinstance(first.raw, memoryview)
    assert first.raw.obj is body
    assert orjson.loads(first.raw) == load(MEMFD)
    assert orjson.loads(second.raw) == load(HTTP_OUTPUT)


# ---------------------------------------------------------------- alert ids


def test_alert_id_is_the_sidekick_uuid_when_present() -> None:
    assert parse_alert(load(SIDEKICK)).alert_id == "3f2b6c1e-8d4a-4c1f-9b7e-2a5d9e6f0c11"


def test_alert_id_without_uuid_is_sha256_of_the_sorted_compact_json() -> None:
    raw = load(HTTP_OUTPUT)
    alert_id = parse_alert(raw).alert_id
    assert alert_id == _canonical_sha(raw)
    assert alert_id.startswith("sha256:")
    assert len(alert_id) == len("sha256:") + 64


def test_stable_alert_id_does_not_depend_on_key_order() -> None:
    raw = load(HTTP_OUTPUT)
    reordered = {key: raw[key] for key in reversed(list(raw))}
    reordered["output_fields"] = {
        key: raw["output_fields"][key] for key in reversed(list(raw["output_fields"]))
    }
    assert list(reordered) != list(raw)
    assert stable_alert_id(reordered) == stable_alert_id(raw)
    assert parse_alert(reordered).alert_id == parse_alert(raw).alert_id


def test_stable_alert_id_differs_for_a_different_payload() -> None:
    raw = load(HTTP_OUTPUT)
    changed = copy.deepcopy(raw)
    changed["output_fields"]["proc.cmdline"] = "ld --other"
    assert stable_alert_id(changed) != stable_alert_id(raw)
    with_extra = copy.deepcopy(raw)
    with_extra["message"] = "x"
    assert stable_alert_id(with_extra) != stable_alert_id(raw)


def test_stable_alert_id_is_the_same_on_every_call() -> None:
    raw = load(TERMINAL)
    assert stable_alert_id(raw) == stable_alert_id(copy.deepcopy(raw))


# ---------------------------------------------------------------- legacy Falco


def test_legacy_alert_turns_na_placeholders_into_missing_values() -> None:
    alert = parse_alert(load(LEGACY))
    assert alert.fields["evt.arg.name"] is None
    assert alert.fields["k8s.ns.name"] is None
    assert alert.fields["k8s.pod.name"] is None
    assert alert.field("k8s.ns.name") is None
    assert alert.namespace is None
    assert alert.pod is None
    assert alert.fields["evt.arg.filename"] == "/var/tmp/x"


def test_legacy_alert_has_no_node_source_or_tags() -> None:
    alert = parse_alert(load(LEGACY))
    assert alert.node is None
    assert alert.source is None
    assert alert.tags == ()


def test_legacy_alert_still_has_its_short_container_id() -> None:
    alert = parse_alert(load(LEGACY))
    assert (alert.container_id, alert.container_full_id) == ("0c1d2e3f4a5b", None)


def test_node_falls_back_to_evt_hostname_when_hostname_is_absent() -> None:
    alert = _with_fields(**{"evt.hostname": "node-from-event", "container.id": "4b1c9e7f2a3d"})
    del alert["hostname"]
    assert parse_alert(alert).node == "node-from-event"


def test_na_hostname_is_treated_as_missing() -> None:
    assert parse_alert(_minimal(hostname="<NA>")).node is None


# ---------------------------------------------------------------- priorities


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Critical", Priority.CRITICAL),
        ("critical", Priority.CRITICAL),
        ("CRITICAL", Priority.CRITICAL),
        ("  Critical  ", Priority.CRITICAL),
        ("info", Priority.INFORMATIONAL),
        ("INFO", Priority.INFORMATIONAL),
        ("Informational", Priority.INFORMATIONAL),
        ("warn", Priority.WARNING),
        ("err", Priority.ERROR),
        ("crit", Priority.CRITICAL),
        ("emerg", Priority.EMERGENCY),
        ("Emergency", Priority.EMERGENCY),
        ("Alert", Priority.ALERT),
        ("Notice", Priority.NOTICE),
        ("debug", Priority.DEBUG),
    ],
)
def test_priority_names_are_case_insensitive_and_accept_falco_aliases(
    text: str, expected: Priority
) -> None:
    assert Priority.parse(text) is expected
    assert parse_alert(_minimal(priority=text)).priority is expected


def test_unknown_priority_text_is_refused_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown priority 'Severe'") as caught:
        Priority.parse("Severe")
    assert "Emergency" in str(caught.value)
    assert "Debug" in str(caught.value)


def test_priorities_rank_from_emergency_down_to_debug() -> None:
    assert list(Priority) == sorted(Priority)
    assert [p.label for p in sorted(Priority)] == [
        "Emergency", "Alert", "Critical", "Error", "Warning", "Notice", "Informational", "Debug",
    ]
    assert Priority.EMERGENCY < Priority.ALERT < Priority.CRITICAL < Priority.ERROR
    assert Priority.ERROR < Priority.WARNING < Priority.NOTICE < Priority.INFORMATIONAL
    assert Priority.INFORMATIONAL < Priority.DEBUG


def test_min_of_priorities_is_the_most_severe() -> None:
    assert min([Priority.NOTICE, Priority.CRITICAL, Priority.WARNING]) is Priority.CRITICAL
    assert min([Priority.DEBUG, Priority.EMERGENCY]) is Priority.EMERGENCY


# ---------------------------------------------------------------- container ids


def _ids(**fields: Any) -> tuple[str | None, str | None]:
    alert = parse_alert(_with_fields(**fields))
    return alert.container_id, alert.container_full_id


def test_containerd_prefixed_full_id_is_accepted_as_the_full_id() -> None:
    assert _ids(**{"container.id": "0123456789ab",
                   "container.full_id": f"containerd://{OTHER_FULL_ID}"}) == (
        "0123456789ab", OTHER_FULL_ID)


def test_uppercase_runtime_prefixed_full_id_is_lowered() -> None:
    assert _ids(**{"container.full_id": f"docker://{OTHER_FULL_ID.upper()}"}) == (
        OTHER_FULL_ID[:12], OTHER_FULL_ID)


def test_64_hex_container_id_gives_both_the_short_and_the_full_id() -> None:
    assert _ids(**{"container.id": OTHER_FULL_ID}) == (OTHER_FULL_ID[:12], OTHER_FULL_ID)


def test_containerd_prefixed_64_hex_container_id_gives_both_ids() -> None:
    assert _ids(**{"container.id": f"containerd://{OTHER_FULL_ID}"}) == (
        OTHER_FULL_ID[:12], OTHER_FULL_ID)


def test_full_id_alone_supplies_the_short_id() -> None:
    assert _ids(**{"container.full_id": OTHER_FULL_ID}) == (OTHER_FULL_ID[:12], OTHER_FULL_ID)


@pytest.mark.parametrize("host", ["host", "HOST", " host "])
def test_host_container_id_means_no_container(host: str) -> None:
    assert _ids(**{"container.id": host}) == (None, None)


@pytest.mark.parametrize("missing", [None, "<NA>", ""])
def test_missing_container_id_means_no_container(missing: str | None) -> None:
    assert _ids(**{"container.id": missing, "container.full_id": missing}) == (None, None)


def test_full_id_that_is_not_64_hex_is_dropped_and_the_short_id_kept() -> None:
    assert _ids(**{"container.id": "0123456789ab", "container.full_id": "not-a-runtime-id"}) == (
        "0123456789ab", None)


# ---------------------------------------------------------------- images


def test_image_joins_repository_tag_and_digest() -> None:
    alert = parse_alert(_with_fields(**{
        "container.image.repository": "ghcr.io/acme/api",
        "container.image.tag": "v1",
        "container.image.digest": "sha256:" + "a" * 64,
    }))
    assert alert.image == "ghcr.io/acme/api:v1@sha256:" + "a" * 64


def test_image_without_tag_is_just_the_repository() -> None:
    alert = parse_alert(_with_fields(**{"container.image.repository": "ghcr.io/acme/api"}))
    assert alert.image == "ghcr.io/acme/api"


def test_whole_container_image_field_wins_over_its_parts() -> None:
    alert = parse_alert(_with_fields(**{
        "container.image": "nginx:latest",
        "container.image.repository": "ghcr.io/acme/api",
        "container.image.tag": "v1",
    }))
    assert alert.image == "nginx:latest"


# ---------------------------------------------------------------- time fallback


def test_missing_time_falls_back_to_evt_time_in_output_fields() -> None:
    raw = load(HTTP_OUTPUT)
    del raw["time"]
    assert parse_alert(raw).time_ns == 1_763_712_940_002_113_004


def test_null_time_falls_back_to_evt_time_in_output_fields() -> None:
    raw = load(LEGACY)
    raw["time"] = None
    assert parse_alert(raw).time_ns == 1_763_543_564_551_020_300


def test_missing_time_falls_back_to_evt_rawtime_when_evt_time_is_absent() -> None:
    alert = _with_fields(**{"evt.rawtime": 1_700_000_000_000_000_001})
    del alert["time"]
    assert parse_alert(alert).time_ns == 1_700_000_000_000_000_001


def test_time_field_wins_over_evt_time() -> None:
    raw = load(HTTP_OUTPUT)
    assert raw["output_fields"]["evt.time"] != 1_795_248_940_002_113_004
    assert parse_alert(raw).time_ns == 1_795_248_940_002_113_004


@pytest.mark.parametrize("evt_time", [None, "<NA>", "1763712940002113004", True, 0, -5, 1.5e18])
def test_missing_time_without_a_usable_evt_time_is_refused(evt_time: Any) -> None:
    alert = _with_fields(**{"evt.time": evt_time})
    del alert["time"]
    problems = _problems(alert)
    assert [p.field for p in problems] == ["time"]


# ---------------------------------------------------------------- malformed input


def _drop(key: str) -> dict[str, Any]:
    alert = _minimal()
    del alert[key]
    return alert


MALFORMED: list[Any] = [
    pytest.param([_minimal()], "(item)", id="a list instead of an object"),
    pytest.param("Critical alert", "(item)", id="a string instead of an object"),
    pytest.param(None, "(item)", id="null instead of an object"),
    pytest.param(42, "(item)", id="a number instead of an object"),
    pytest.param(_drop("rule"), "rule", id="missing rule"),
    pytest.param(_minimal(rule=""), "rule", id="empty rule"),
    pytest.param(_minimal(rule=5), "rule", id="rule is a number"),
    pytest.param(_minimal(rule=["a"]), "rule", id="rule is a list"),
    pytest.param(_minimal(rule="r" * 1025), "rule", id="rule too long"),
    pytest.param(_drop("priority"), "priority", id="missing priority"),
    pytest.param(_minimal(priority="Severe"), "priority", id="unknown priority"),
    pytest.param(_minimal(priority=2), "priority", id="priority is a number"),
    pytest.param(_minimal(priority=True), "priority", id="priority is a boolean"),
    pytest.param(_minimal(priority=None), "priority", id="priority is null"),
    pytest.param(_minimal(time="yesterday"), "time", id="time is not RFC 3339"),
    pytest.param(_minimal(time="2026-02-30T00:00:00Z"), "time", id="time on 30 February"),
    pytest.param(_minimal(time="2026-11-20T14:02:11"), "time", id="time without zone"),
    pytest.param(_minimal(time=1_795_183_331), "time", id="time is a number"),
    pytest.param(_minimal(time=1.5), "time", id="time is a float"),
    pytest.param(_minimal(tags="container"), "tags", id="tags is a string"),
    pytest.param(_minimal(tags={"a": 1}), "tags", id="tags is an object"),
    pytest.param(_minimal(tags=[1]), "tags[0]", id="a tag is a number"),
    pytest.param(_minimal(output_fields=[]), "output_fields", id="output_fields is a list"),
    pytest.param(_minimal(output_fields="x"), "output_fields", id="output_fields is a string"),
    pytest.param(_minimal(output_fields={str(i): i for i in range(MAX_OUTPUT_FIELDS + 1)}),
                 "output_fields", id="too many output_fields"),
    pytest.param(_minimal(output="x" * (256 * 1024 + 1)), "output", id="huge output"),
    pytest.param(_minimal(message="x" * (256 * 1024 + 1)), "message", id="huge message"),
    pytest.param(_minimal(hostname=17), "hostname", id="hostname is a number"),
    pytest.param(_minimal(source=["syscall"]), "source", id="source is a list"),
    pytest.param(_minimal(uuid=""), "uuid", id="empty uuid"),
    pytest.param(_minimal(uuid=123), "uuid", id="uuid is a number"),
]


@pytest.mark.parametrize(("item", "field"), MALFORMED)
def test_malformed_alert_is_refused_naming_the_field(item: Any, field: str) -> None:
    problems = _problems(item)
    assert [p.field for p in problems] == [field]
    assert all(p.message for p in problems)


@pytest.mark.parametrize(
    ("value", "field_prefix"),
    [
        ({"nested": 1}, "output_fields['k8s.pod.name']"),
        ([[1, 2]], "output_fields['k8s.pod.name']"),
        ([{"a": 1}], "output_fields['k8s.pod.name']"),
    ],
)
def test_output_field_value_that_is_not_a_scalar_is_refused_naming_that_field(
    value: Any, field_prefix: str
) -> None:
    problems = _problems(_with_fields(**{"k8s.pod.name": value}))
    assert problems
    assert all(p.field.startswith(field_prefix) for p in problems), problems


def test_output_field_without_dots_is_named_with_a_dot_path() -> None:
    problems = _problems(_with_fields(plain={"nested": 1}))
    assert all(p.field.startswith("output_fields.plain") for p in problems), problems


def test_exactly_max_output_fields_is_accepted() -> None:
    fields = {f"f{i}": i for i in range(MAX_OUTPUT_FIELDS)}
    assert len(parse_alert(_minimal(output_fields=fields)).fields) == MAX_OUTPUT_FIELDS


def test_scalar_and_list_output_field_values_are_accepted() -> None:
    alert = parse_alert(_with_fields(s="x", i=1, f=1.5, b=False, n=None, lst=["a", 1, None]))
    assert alert.fields == {"s": "x", "i": 1, "f": 1.5, "b": False, "n": None,
                            "lst": ["a", 1, None]}


def test_every_problem_of_one_alert_is_reported_together() -> None:
    item = _minimal(priority="Severe", tags="x")
    del item["rule"]
    problems = _problems(item)
    assert sorted(p.field for p in problems) == ["priority", "rule", "tags"]


def test_invalid_alert_message_lists_field_and_reason() -> None:
    with pytest.raises(InvalidAlert, match=r"^rule: Field required$"):
        parse_alert(_drop("rule"))


def test_a_bad_output_field_value_is_reported_once_with_a_plain_reason() -> None:
    raw = load("sidekick-drop-and-execute.json")
    raw["output_fields"]["k8s.pod.name"] = {"nested": True}
    with pytest.raises(InvalidAlert) as caught:
        parse_alert(raw)
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("output_fields['k8s.pod.name']",
         "must be a string, number, boolean, null, or a list of those")]
