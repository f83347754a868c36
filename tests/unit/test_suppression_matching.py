"""What a suppression may be, and which alerts it covers (pure: no store)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from responder.models.alerts import Alert, parse_alert
from responder.models.priorities import Priority
from responder.store.suppressions import (
    DEFAULT_DURATION_NS,
    NS,
    InvalidSuppression,
    Match,
    Matcher,
    Suppression,
    image_repository,
    parse_duration,
    parse_pod,
    workload_pod,
)
from tests.support.samples import drift_alert

RULE = "Drop and execute new binary in container"
NOW = 1_800_000_000 * NS
DIGEST = "sha256:" + "ab" * 32


def alert(*, namespace: str = "shop", pod: str = "web-7d9f8b6c5-x2x4q",
          priority: str = "Critical", rule: str = RULE, node: str = "node-1",
          **fields: Any) -> Alert:
    raw = drift_alert(1, node=node, priority=priority, rule=rule)
    raw["output_fields"].update({"k8s.ns.name": namespace, "k8s.pod.name": pod, **fields})
    return parse_alert(raw)


def suppression(match: Match, *, max_priority: Priority = Priority.CRITICAL,
                expires_ns: int = NOW + DEFAULT_DURATION_NS, sid: str = "S1",
                lifted: bool = False) -> Suppression:
    return Suppression(id=sid, match=match.checked(), max_priority=max_priority,
                       created_by="cli:alice", reason="known build step", created_ns=NOW,
                       expires_ns=expires_ns, lifted_ns=NOW if lifted else None)


def matches(match: Match, candidate: Alert, **kwargs: Any) -> bool:
    return Matcher.of([suppression(match, **kwargs)]).match(candidate, NOW) is not None


def test_a_rule_and_namespace_suppression_covers_that_rule_in_that_namespace_only() -> None:
    scope = Match(RULE, "shop")
    assert matches(scope, alert())
    assert not matches(scope, alert(namespace="billing"))
    assert not matches(scope, alert(rule="Terminal shell in container"))


@pytest.mark.parametrize(("match", "says"), [
    (Match("", "shop"), "a rule is required"),
    (Match("*", "shop"), "wildcards are not supported"),
    (Match(RULE, ""), "a namespace is required"),
    (Match(RULE, "*"), "not a namespace name"),
    (Match(RULE, "Shop Floor"), "not a namespace name"),
    (Match(RULE, "shop", pod="web-1", pod_prefix="web-"), "not both"),
    (Match(RULE, "shop", pod_prefix="w"), "not a pod name prefix"),
    (Match(RULE, "shop", image="registry.example.com/web app"), "not an image"),
    (Match(RULE, "shop", image_digest="sha256:abc"), "not an image digest"),
])
def test_suppressions_that_would_cover_too_much_or_make_no_sense_are_refused(
    match: Match, says: str,
) -> None:
    with pytest.raises(InvalidSuppression, match=says):
        match.checked()


def test_an_alert_more_severe_than_the_suppressions_maximum_still_gets_through() -> None:
    scope = Match(RULE, "shop")
    assert matches(scope, alert(priority="Critical"))
    assert matches(scope, alert(priority="Warning"))
    assert not matches(scope, alert(priority="Alert"))
    assert not matches(scope, alert(priority="Emergency"))
    assert not matches(scope, alert(priority="Critical"), max_priority=Priority.ERROR)


def test_an_expired_or_lifted_suppression_covers_nothing() -> None:
    scope = Match(RULE, "shop")
    assert not matches(scope, alert(), expires_ns=NOW)
    assert not matches(scope, alert(), lifted=True)


def test_a_pod_prefix_covers_the_workloads_pods_and_an_exact_pod_only_itself() -> None:
    prefix = Match(RULE, "shop", pod_prefix="web-")
    assert matches(prefix, alert(pod="web-5f6d7c8b9-abcde"))
    assert not matches(prefix, alert(pod="api-5f6d7c8b9-abcde"))
    exact = Match(RULE, "shop", pod="web-7d9f8b6c5-x2x4q")
    assert matches(exact, alert())
    assert not matches(exact, alert(pod="web-7d9f8b6c5-zzzzz"))


def test_an_image_repository_covers_every_tag_and_an_exact_reference_only_itself() -> None:
    repository = Match(RULE, "shop", image="registry.example.com/shop/web")
    assert matches(repository, alert())  # the sample runs registry.example.com/shop/web:1.8.2
    assert matches(repository, alert(**{"container.image.tag": "2.0"}))
    assert not matches(repository, alert(**{"container.image.repository": "evil.example/web"}))
    exact = Match(RULE, "shop", image="registry.example.com/shop/web:1.8.2")
    assert matches(exact, alert())
    assert not matches(exact, alert(**{"container.image.tag": "1.8.3"}))


def test_a_digest_and_a_node_narrow_the_match() -> None:
    pinned = Match(RULE, "shop", image_digest=DIGEST.upper().replace("SHA256", "sha256"))
    assert matches(pinned, alert(**{"container.image.digest": DIGEST}))
    assert not matches(pinned, alert())
    on_node = Match(RULE, "shop", node="node-1")
    assert matches(on_node, alert(node="node-1"))
    assert not matches(on_node, alert(node="node-2"))


def test_an_alert_without_a_namespace_is_never_suppressed() -> None:
    raw = drift_alert(1)
    del raw["output_fields"]["k8s.ns.name"]
    assert Matcher.of([suppression(Match(RULE, "shop"))]).match(parse_alert(raw), NOW) is None


def test_the_first_suppression_made_is_the_one_credited() -> None:
    older = suppression(Match(RULE, "shop"), sid="01OLDER")
    newer = dataclasses.replace(older, id="01NEWER", created_ns=NOW + 1)
    assert Matcher.of([newer, older]).match(alert(), NOW) == "01OLDER"


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("24h", 86400), ("7d", 604800), ("1h30m", 5400), ("2w", 1209600),
    (" 90 m ", 5400),
])
def test_durations_read_as_people_write_them(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds * NS


@pytest.mark.parametrize(("text", "says"), [
    ("24", "not a duration"), ("forever", "not a duration"), ("-1h", "not a duration"),
    ("30s", "at least 1 minute"), ("31d", "at most 30 days"),
])
def test_durations_out_of_bounds_or_unreadable_are_refused(text: str, says: str) -> None:
    with pytest.raises(InvalidSuppression, match=says):
        parse_duration(text)


@pytest.mark.parametrize(("pod", "expected"), [
    ("web-7d9f8b6c5-x2x4q", (None, "web-")),            # Deployment: hash and suffix go
    ("search-bcdfghjklm-zz2x4", (None, "search-")),
    ("node-exporter-x2x4q", (None, "node-exporter-")),  # DaemonSet / Job suffix
    ("backup-29012345-x2x4q", (None, "backup-")),       # CronJob: schedule time and suffix
    ("postgres-0", (None, "postgres-")),                # StatefulSet ordinal
    ("lonely", ("lonely", None)),                        # nothing generated: exact
])
def test_the_workload_of_a_pod_drops_what_kubernetes_generated(
    pod: str, expected: tuple[str | None, str | None],
) -> None:
    assert workload_pod(pod) == expected


def test_a_trailing_star_makes_a_pod_prefix() -> None:
    assert parse_pod("web-*") == (None, "web-")
    assert parse_pod("web-1") == ("web-1", None)
    with pytest.raises(InvalidSuppression, match="trailing"):
        parse_pod("w*b-*")


@pytest.mark.parametrize(("ref", "repository"), [
    ("registry.example.com/shop/web:1.8.2", "registry.example.com/shop/web"),
    ("registry:5000/shop/web", "registry:5000/shop/web"),
    ("registry:5000/shop/web:1@" + DIGEST, "registry:5000/shop/web"),
    ("nginx", "nginx"),
])
def test_an_image_reference_has_a_repository(ref: str, repository: str) -> None:
    assert image_repository(ref) == repository
