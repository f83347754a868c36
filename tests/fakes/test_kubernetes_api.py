"""FakeKubernetes, exercised only through the official kubernetes client over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client import ApiException
from kubernetes.stream import stream

from tests.fakes.kubernetes_api import ExecResult, FakeKubernetes, LabelSelector

NS = "shop"
USER = "system:serviceaccount:drift:responder"


@pytest.fixture
def kube() -> Iterator[FakeKubernetes]:
    with FakeKubernetes(token="s3cret") as fake:
        fake.add_namespace(NS)
        yield fake
        assert fake.errors == []  # the fake itself never crashed


@pytest.fixture
def api(kube: FakeKubernetes) -> Iterator[client.ApiClient]:
    with kube.api_client() as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def net(api: client.ApiClient) -> client.NetworkingV1Api:
    return client.NetworkingV1Api(api)


@pytest.fixture
def policy(api: client.ApiClient) -> client.PolicyV1Api:
    return client.PolicyV1Api(api)


@pytest.fixture
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


def status_of(error: ApiException) -> dict:
    body = json.loads(error.body)
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["code"] == error.status
    return body


# ---------------------------------------------------------------- reading

def test_a_seeded_pod_reads_back_as_the_kubelet_would_report_it(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web"}, node="node-a", container_ids=["a" * 64])

    pod = core.read_namespaced_pod("web-1", NS)

    assert pod.kind == "Pod"
    assert pod.api_version == "v1"
    assert len(pod.metadata.uid) == 36
    assert int(pod.metadata.resource_version) > 0
    assert pod.metadata.creation_timestamp is not None
    assert pod.spec.node_name == "node-a"
    assert pod.status.phase == "Running"
    status = pod.status.container_statuses[0]
    assert status.container_id == "containerd://" + "a" * 64
    assert status.image_id.startswith("registry.example.com/shop/app@sha256:")
    assert len(status.image_id.split("sha256:")[1]) == 64
    assert kube.node("node-a") is not None  # pods are bound to nodes that exist


def test_reading_a_missing_pod_raises_404_with_the_real_message(core):
    with pytest.raises(ApiException) as raised:
        core.read_namespaced_pod("ghost", NS)

    assert raised.value.status == 404
    body = status_of(raised.value)
    assert body["reason"] == "NotFound"
    assert body["message"] == 'pods "ghost" not found'
    assert body["details"] == {"name": "ghost", "kind": "pods"}


def test_resource_versions_come_from_one_increasing_counter(kube):
    first = kube.add_pod(NS, "a")
    second = kube.add_service(NS, "svc", {"app": "a"})
    third = kube.add_pod(NS, "b")

    versions = [int(o["metadata"]["resourceVersion"]) for o in (first, second, third)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 3


@pytest.mark.parametrize(("selector", "expected"), [
    ("app=web", ["api-1", "web-1", "web-2"]),
    ("app==web,tier=front", ["web-1", "web-2"]),
    ("tier!=front", ["api-1", "db-1"]),
    ("quarantine", ["web-2"]),
    ("!quarantine", ["api-1", "db-1", "web-1"]),
    ("tier in (front, data)", ["db-1", "web-1", "web-2"]),
    ("tier notin (front)", ["api-1", "db-1"]),
    ("app=web,!quarantine,tier in (front)", ["web-1"]),
])
def test_listing_pods_filters_by_each_label_selector_form(kube, core, selector, expected):
    kube.add_pod(NS, "web-1", labels={"app": "web", "tier": "front"})
    kube.add_pod(NS, "web-2", labels={"app": "web", "tier": "front", "quarantine": "true"})
    kube.add_pod(NS, "api-1", labels={"app": "web"})
    kube.add_pod(NS, "db-1", labels={"app": "db", "tier": "data"})

    pods = core.list_namespaced_pod(NS, label_selector=selector)

    assert [p.metadata.name for p in pods.items] == expected


def test_listing_pods_filters_by_field_selectors_and_across_namespaces(kube, core):
    kube.add_pod(NS, "web-1", node="node-a")
    kube.add_pod(NS, "web-2", node="node-b")
    kube.add_pod("other", "job-1", node="node-a", phase="Succeeded")

    on_a = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    by_name = core.list_namespaced_pod(NS, field_selector="metadata.name=web-2")
    running = core.list_pod_for_all_namespaces(field_selector="status.phase=Running")
    not_running = core.list_pod_for_all_namespaces(field_selector="status.phase!=Running")

    assert [(p.metadata.namespace, p.metadata.name) for p in on_a.items] == [
        ("other", "job-1"), (NS, "web-1")]
    assert [p.metadata.name for p in by_name.items] == ["web-2"]
    assert [p.metadata.name for p in running.items] == ["web-1", "web-2"]
    assert [p.metadata.name for p in not_running.items] == ["job-1"]


def test_list_responses_are_typed_lists_whose_items_carry_no_kind(kube, core):
    kube.add_pod(NS, "web-1")

    pods = core.list_namespaced_pod(NS)

    assert pods.kind == "PodList"
    assert pods.metadata.resource_version is not None
    assert pods.items[0].kind is None  # like the real API server


def test_an_unsupported_field_selector_is_a_bad_request(core):
    with pytest.raises(ApiException) as raised:
        core.list_namespaced_pod(NS, field_selector="spec.hostname=x")

    assert raised.value.status == 400
    assert status_of(raised.value)["message"] == "field label not supported: spec.hostname"


def test_an_unparsable_label_selector_is_a_bad_request(core):
    with pytest.raises(ApiException) as raised:
        core.list_namespaced_pod(NS, label_selector="app in web")

    assert raised.value.status == 400


def test_lists_page_with_limit_and_continue(kube, core):
    for i in range(5):
        kube.add_pod(NS, f"web-{i}")

    first = core.list_namespaced_pod(NS, limit=2)
    second = core.list_namespaced_pod(NS, limit=2, _continue=first.metadata._continue)
    third = core.list_namespaced_pod(NS, limit=2, _continue=second.metadata._continue)

    names = [p.metadata.name for page in (first, second, third) for p in page.items]
    assert names == [f"web-{i}" for i in range(5)]
    assert first.metadata.remaining_item_count == 3
    assert third.metadata._continue is None


def test_label_selector_from_api_understands_match_expressions():
    selector = LabelSelector.from_api({"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["front"]},
        {"key": "quarantine", "operator": "DoesNotExist"}]})

    assert selector is not None
    assert selector.matches({"app": "web", "tier": "front"})
    assert not selector.matches({"app": "web", "tier": "front", "quarantine": "1"})
    assert LabelSelector.from_api(None) is None  # a null selector selects nothing


# ---------------------------------------------------------------- patching

def test_a_dict_patch_is_sent_as_strategic_merge_and_null_deletes_a_label(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web", "tier": "front"})

    pod = core.patch_namespaced_pod("web-1", NS, {"metadata": {
        "labels": {"app": None, "quarantine": "drift"},
        "annotations": {"drift/labels": '{"app":"web"}'}}})

    assert pod.metadata.labels == {"tier": "front", "quarantine": "drift"}
    assert kube.requests[-1].content_type == "application/strategic-merge-patch+json"
    assert kube.pod(NS, "web-1")["metadata"]["annotations"] == {"drift/labels": '{"app":"web"}'}


def test_a_merge_patch_can_be_forced_with_content_type(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web", "tier": "front"})

    pod = core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"tier": None}}},
                                    _content_type="application/merge-patch+json")

    assert pod.metadata.labels == {"app": "web"}
    assert kube.requests[-1].content_type == "application/merge-patch+json"


def test_strategic_merge_merges_containers_by_name_where_merge_patch_replaces(kube, core):
    kube.add_pod(NS, "web-1", containers=["app", "sidecar"])

    strategic = core.patch_namespaced_pod("web-1", NS, {"spec": {"containers": [
        {"name": "sidecar", "image": "registry.example.com/sidecar:2"}]}})

    images = {c.name: c.image for c in strategic.spec.containers}
    assert images == {"app": "registry.example.com/shop/app:1.0",
                      "sidecar": "registry.example.com/sidecar:2"}


def test_strategic_merge_honours_patch_delete_directives_in_keyed_lists(kube, core):
    owner = kube.add_replicaset(NS, "web-abc", match_labels={"app": "web"})
    kube.add_pod(NS, "web-1", labels={"app": "web"}, owner=owner)

    pod = core.patch_namespaced_pod("web-1", NS, {"metadata": {"ownerReferences": [
        {"uid": owner["metadata"]["uid"], "$patch": "delete"}]}})

    assert pod.metadata.owner_references is None


def test_a_list_patch_is_sent_as_json_patch_and_applies_each_operation(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web", "app.kubernetes.io/name": "web", "x": "1"})

    pod = core.patch_namespaced_pod("web-1", NS, [
        {"op": "test", "path": "/metadata/labels/app", "value": "web"},
        {"op": "remove", "path": "/metadata/labels/app.kubernetes.io~1name"},
        {"op": "replace", "path": "/metadata/labels/x", "value": "2"},
        {"op": "add", "path": "/metadata/labels/quarantine", "value": "drift"},
    ])

    assert pod.metadata.labels == {"app": "web", "x": "2", "quarantine": "drift"}
    assert kube.requests[-1].content_type == "application/json-patch+json"


def test_a_failing_json_patch_test_is_422_and_changes_nothing(kube, core):
    before = kube.add_pod(NS, "web-1", labels={"app": "web"})

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, [
            {"op": "test", "path": "/metadata/labels/app", "value": "api"},
            {"op": "remove", "path": "/metadata/labels/app"},
        ])

    assert raised.value.status == 422
    assert status_of(raised.value)["reason"] == "Invalid"
    assert kube.pod(NS, "web-1") == before


def test_removing_a_missing_path_with_json_patch_is_422(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web"})

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, [{"op": "remove", "path": "/metadata/labels/no"}])

    assert raised.value.status == 422


def test_a_patch_carrying_a_stale_resource_version_is_a_409_conflict(kube, core):
    seeded = kube.add_pod(NS, "web-1", labels={"app": "web"})
    version = seeded["metadata"]["resourceVersion"]
    core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"seen": "1"}}})

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, {"metadata": {
            "resourceVersion": version, "labels": {"app": None}}})

    assert raised.value.status == 409
    body = status_of(raised.value)
    assert body["reason"] == "Conflict"
    assert body["message"] == ('Operation cannot be fulfilled on pods "web-1": the object has been '
                               "modified; please apply your changes to the latest version and "
                               "try again")
    assert kube.pod(NS, "web-1")["metadata"]["labels"]["app"] == "web"


def test_a_patch_carrying_the_current_resource_version_succeeds_and_bumps_it(kube, core):
    seeded = kube.add_pod(NS, "web-1", labels={"app": "web"})
    version = seeded["metadata"]["resourceVersion"]

    pod = core.patch_namespaced_pod("web-1", NS, {"metadata": {
        "resourceVersion": version, "labels": {"app": None}}},
        _content_type="application/merge-patch+json")

    assert int(pod.metadata.resource_version) > int(version)
    assert pod.metadata.labels is None


def test_a_patch_that_changes_nothing_keeps_the_resource_version(kube, core):
    seeded = kube.add_pod(NS, "web-1", labels={"app": "web"})

    pod = core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"app": "web"}}})

    assert pod.metadata.resource_version == seeded["metadata"]["resourceVersion"]


def test_status_written_through_the_pod_itself_is_ignored(kube, core):
    kube.add_pod(NS, "web-1")

    pod = core.patch_namespaced_pod("web-1", NS, {"status": {"phase": "Failed"}})

    assert pod.status.phase == "Running"


def test_changing_an_immutable_pod_field_is_422(kube, core):
    kube.add_pod(NS, "web-1", node="node-a")

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, {"spec": {"nodeName": "node-b"}})

    assert raised.value.status == 422
    assert "pod updates may not change fields" in status_of(raised.value)["message"]


def test_an_invalid_label_value_is_422_with_the_field_named(kube, core):
    kube.add_pod(NS, "web-1")

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {
            "quarantined-at": "2024-05-01T12:00:00Z"}}})

    assert raised.value.status == 422
    body = status_of(raised.value)
    assert body["message"].startswith('Pod "web-1" is invalid: metadata.labels: Invalid value: '
                                      '"2024-05-01T12:00:00Z": a valid label must be')
    assert body["details"]["causes"][0]["field"] == "metadata.labels"


def test_an_unknown_patch_content_type_is_415(kube, core):
    kube.add_pod(NS, "web-1")

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, {"metadata": {}}, _content_type="application/json")

    assert raised.value.status == 415


# ---------------------------------------------------------------- replacing, creating, deleting

def test_replacing_with_a_stale_resource_version_is_409_and_with_the_current_one_succeeds(
        kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web"})
    pod = core.read_namespaced_pod("web-1", NS)
    core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"touched": "1"}}})

    pod.metadata.labels = {"app": "web", "quarantine": "drift"}
    with pytest.raises(ApiException) as raised:
        core.replace_namespaced_pod("web-1", NS, pod)
    assert raised.value.status == 409

    fresh = core.read_namespaced_pod("web-1", NS)
    fresh.metadata.labels = {"app": "web", "quarantine": "drift"}
    replaced = core.replace_namespaced_pod("web-1", NS, fresh)
    assert replaced.metadata.labels == {"app": "web", "quarantine": "drift"}
    assert int(replaced.metadata.resource_version) > int(fresh.metadata.resource_version)


def test_replacing_a_missing_object_is_404(net):
    body = {"metadata": {"name": "ghost"}, "spec": {"podSelector": {}}}

    with pytest.raises(ApiException) as raised:
        net.replace_namespaced_network_policy("ghost", NS, body)

    assert raised.value.status == 404
    assert status_of(raised.value)["message"] == \
        'networkpolicies.networking.k8s.io "ghost" not found'


def test_creating_a_pod_stamps_server_metadata_and_leaves_it_pending(kube, core):
    body = client.V1Pod(metadata=client.V1ObjectMeta(generate_name="debug-"),
                        spec=client.V1PodSpec(containers=[client.V1Container(
                            name="c", image="busybox")]))

    pod = core.create_namespaced_pod(NS, body)

    assert pod.metadata.name.startswith("debug-")
    assert len(pod.metadata.name) == len("debug-") + 5
    assert pod.metadata.uid
    assert pod.status.phase == "Pending"
    assert kube.pod(NS, pod.metadata.name) is not None


def test_creating_in_a_missing_namespace_is_404(core):
    body = {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod("nowhere", body)

    assert raised.value.status == 404
    assert status_of(raised.value)["message"] == 'namespaces "nowhere" not found'


def test_dry_run_validates_and_answers_without_storing(kube, core, net):
    kube.add_pod(NS, "web-1", labels={"app": "web"})
    version = kube.pod(NS, "web-1")["metadata"]["resourceVersion"]

    patched = core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"app": None}}},
                                        dry_run="All")
    deleted = core.delete_namespaced_pod("web-1", NS, dry_run="All")
    created = net.create_namespaced_network_policy(NS, {
        "metadata": {"name": "deny"}, "spec": {"podSelector": {}}}, dry_run="All")

    assert patched.metadata.labels is None
    assert deleted.metadata.name == "web-1"
    assert created.metadata.uid
    assert created.metadata.resource_version is None
    stored = kube.pod(NS, "web-1")
    assert stored["metadata"]["labels"] == {"app": "web"}
    assert stored["metadata"]["resourceVersion"] == version
    assert kube.objects("NetworkPolicy", NS) == []
    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"bad": "a:b"}}},
                                  dry_run="All")
    assert raised.value.status == 422


def test_deleting_with_a_mismatched_uid_precondition_is_409_and_keeps_the_pod(kube, core):
    kube.add_pod(NS, "web-1")
    options = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-the-uid"))

    with pytest.raises(ApiException) as raised:
        core.delete_namespaced_pod("web-1", NS, body=options)

    assert raised.value.status == 409
    assert "Precondition failed: UID in precondition: not-the-uid" in \
        status_of(raised.value)["message"]
    assert kube.pod(NS, "web-1") is not None


def test_deleting_with_the_right_uid_removes_the_pod_and_answers_it_terminating(kube, core):
    uid = kube.add_pod(NS, "web-1")["metadata"]["uid"]
    options = client.V1DeleteOptions(grace_period_seconds=5,
                                     preconditions=client.V1Preconditions(uid=uid))

    pod = core.delete_namespaced_pod("web-1", NS, body=options)

    assert pod.metadata.uid == uid
    assert pod.metadata.deletion_timestamp is not None
    assert pod.metadata.deletion_grace_period_seconds == 5
    assert kube.pod(NS, "web-1") is None
    assert kube.requests[-1].body["preconditions"] == {"uid": uid}


# ---------------------------------------------------------------- eviction

def eviction(name: str) -> client.V1Eviction:
    return client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=NS))


def test_an_eviction_without_a_budget_deletes_the_pod_with_201(kube, core):
    kube.add_pod(NS, "web-1")

    core.create_namespaced_pod_eviction("web-1", NS, eviction("web-1"))

    assert kube.requests[-1].status == 201
    assert kube.requests[-1].path == f"/api/v1/namespaces/{NS}/pods/web-1/eviction"
    assert kube.requests[-1].body["metadata"]["name"] == "web-1"
    assert kube.pod(NS, "web-1") is None


def test_evicting_a_missing_pod_is_404(core):
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction("ghost", NS, eviction("ghost"))

    assert raised.value.status == 404
    assert status_of(raised.value)["message"] == 'pods "ghost" not found'


def test_an_eviction_that_would_break_min_available_is_429_naming_the_budget(kube, core):
    kube.add_workload(NS, "web", labels={"app": "web"}, replicas=2)
    kube.add_pdb(NS, "web-pdb", {"app": "web"}, min_available=2)
    victim = kube.objects("Pod", NS)[0]["metadata"]["name"]

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction(victim, NS, eviction(victim))

    assert raised.value.status == 429
    body = status_of(raised.value)
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert body["details"]["causes"] == [{
        "reason": "DisruptionBudget",
        "message": "The disruption budget web-pdb needs 2 healthy pods and has 2 currently"}]
    assert kube.pod(NS, victim) is not None


def test_max_unavailable_allows_one_eviction_then_blocks_the_next(kube, core, policy):
    kube.add_workload(NS, "web", labels={"app": "web"}, replicas=3)
    kube.add_pdb(NS, "web-pdb", {"app": "web"}, max_unavailable=1)
    first, second = (p["metadata"]["name"] for p in kube.objects("Pod", NS)[:2])

    budget = policy.read_namespaced_pod_disruption_budget("web-pdb", NS)
    assert (budget.status.disruptions_allowed, budget.status.current_healthy,
            budget.status.desired_healthy, budget.status.expected_pods) == (1, 3, 2, 3)

    core.create_namespaced_pod_eviction(first, NS, eviction(first))
    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction(second, NS, eviction(second))

    assert raised.value.status == 429
    assert "needs 2 healthy pods and has 2 currently" in \
        status_of(raised.value)["details"]["causes"][0]["message"]


def test_a_budget_counts_only_running_pods_as_healthy(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web"})
    kube.add_pod(NS, "web-2", labels={"app": "web"})
    kube.add_pod(NS, "web-3", labels={"app": "web"}, phase="Pending")
    kube.add_pdb(NS, "web-pdb", {"app": "web"}, min_available=2)

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction("web-1", NS, eviction("web-1"))
    core.create_namespaced_pod_eviction("web-3", NS, eviction("web-3"))  # pending: no budget

    assert raised.value.status == 429
    assert kube.pod(NS, "web-3") is None


def test_a_dry_run_eviction_checks_the_budget_but_keeps_the_pod(kube, core):
    kube.add_pod(NS, "web-1", labels={"app": "web"})
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name="web-1", namespace=NS),
                             delete_options=client.V1DeleteOptions(dry_run=["All"]))

    core.create_namespaced_pod_eviction("web-1", NS, body)

    assert kube.requests[-1].status == 201
    assert kube.pod(NS, "web-1") is not None


# ---------------------------------------------------------------- other resources

def test_network_policies_support_the_whole_life_cycle_and_duplicates_are_409(kube, net):
    body = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="drift-quarantine"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"drift/quarantine": "true"}),
            policy_types=["Ingress", "Egress"]))

    created = net.create_namespaced_network_policy(NS, body)
    with pytest.raises(ApiException) as raised:
        net.create_namespaced_network_policy(NS, body)
    listed = net.list_namespaced_network_policy(NS)
    patched = net.patch_namespaced_network_policy("drift-quarantine", NS,
                                                  {"metadata": {"labels": {"owner": "drift"}}})
    got = net.read_namespaced_network_policy("drift-quarantine", NS)
    got.spec.policy_types = ["Ingress"]
    replaced = net.replace_namespaced_network_policy("drift-quarantine", NS, got)
    deleted = net.delete_namespaced_network_policy("drift-quarantine", NS)

    assert created.api_version == "networking.k8s.io/v1"
    assert created.kind == "NetworkPolicy"
    assert raised.value.status == 409
    body_409 = status_of(raised.value)
    assert body_409["reason"] == "AlreadyExists"
    assert body_409["message"] == \
        'networkpolicies.networking.k8s.io "drift-quarantine" already exists'
    assert [p.metadata.name for p in listed.items] == ["drift-quarantine"]
    assert patched.metadata.labels == {"owner": "drift"}
    assert replaced.spec.policy_types == ["Ingress"]
    assert deleted["status"] == "Success"  # the v37 client types this answer as `object`
    assert kube.objects("networkpolicies", NS) == []


def test_nodes_can_be_cordoned_with_a_patch(kube, core):
    kube.add_node("node-a")

    node = core.patch_node("node-a", {"spec": {"unschedulable": True}})
    cordoned = core.list_node(field_selector="spec.unschedulable=true")

    assert node.spec.unschedulable is True
    assert [n.metadata.name for n in cordoned.items] == ["node-a"]
    assert kube.node("node-a")["spec"]["unschedulable"] is True


def test_services_list_with_their_selectors(kube, core):
    kube.add_service(NS, "web", {"app": "web"})
    kube.add_service(NS, "db", {"app": "db"}, ports=(5432,))

    services = core.list_namespaced_service(NS)

    assert {s.metadata.name: s.spec.selector for s in services.items} == {
        "db": {"app": "db"}, "web": {"app": "web"}}


def test_a_pods_owner_chain_leads_through_its_replicaset_to_the_deployment(kube, core, apps):
    workload = kube.add_workload(NS, "web", labels={"app": "web"}, replicas=1)
    pod = core.read_namespaced_pod(workload.pods[0]["metadata"]["name"], NS)

    (rs_ref,) = pod.metadata.owner_references
    replicaset = apps.read_namespaced_replica_set(rs_ref.name, NS)
    (deploy_ref,) = replicaset.metadata.owner_references
    deployment = apps.read_namespaced_deployment(deploy_ref.name, NS)

    assert (rs_ref.kind, rs_ref.controller) == ("ReplicaSet", True)
    assert rs_ref.uid == replicaset.metadata.uid
    assert deploy_ref.kind == "Deployment"
    assert deployment.metadata.uid == deploy_ref.uid
    assert deployment.spec.selector.match_labels == {"app": "web"}
    assert [r.metadata.name for r in apps.list_namespaced_replica_set(NS).items] == [rs_ref.name]


def test_statefulsets_daemonsets_and_jobs_can_be_read(kube, api, apps):
    kube.add_statefulset(NS, "db", match_labels={"app": "db"}, replicas=3)
    kube.add_daemonset("kube-system", "agent", match_labels={"app": "agent"})
    kube.add_job(NS, "backup")

    assert apps.read_namespaced_stateful_set("db", NS).spec.replicas == 3
    assert apps.read_namespaced_daemon_set("agent", "kube-system").kind == "DaemonSet"
    assert client.BatchV1Api(api).read_namespaced_job("backup", NS).metadata.name == "backup"


def test_pod_disruption_budgets_can_be_created_and_listed(kube, policy):
    kube.add_pod(NS, "web-1", labels={"app": "web"})
    body = client.V1PodDisruptionBudget(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1PodDisruptionBudgetSpec(
            min_available=1, selector=client.V1LabelSelector(match_expressions=[
                client.V1LabelSelectorRequirement(key="app", operator="In", values=["web"])])))

    policy.create_namespaced_pod_disruption_budget(NS, body)
    (listed,) = policy.list_namespaced_pod_disruption_budget(NS).items

    assert listed.status.expected_pods == 1
    assert listed.status.disruptions_allowed == 0


def test_pod_logs_answer_programmed_text(kube, core):
    kube.add_pod(NS, "web-1")
    kube.set_log(NS, "web-1", "one\ntwo\nthree\n")

    assert core.read_namespaced_pod_log("web-1", NS) == "one\ntwo\nthree\n"
    assert core.read_namespaced_pod_log("web-1", NS, tail_lines=1) == "three\n"


# ---------------------------------------------------------------- programmed failures

def test_an_injected_429_raises_with_a_retry_after_header_then_recovers(kube, core):
    kube.add_pod(NS, "web-1")
    kube.fail_next("POST", r"/pods/web-1/eviction$", 429, retry_after=3)

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction("web-1", NS, eviction("web-1"))

    assert raised.value.status == 429
    assert raised.value.headers["Retry-After"] == "3"
    body = status_of(raised.value)
    assert body["reason"] == "TooManyRequests"
    assert body["details"] == {"retryAfterSeconds": 3}
    core.create_namespaced_pod_eviction("web-1", NS, eviction("web-1"))
    assert kube.pod(NS, "web-1") is None


def test_the_client_itself_retries_an_idempotent_request_answered_429_with_retry_after(
        kube, core):
    """urllib3's default Retry honours Retry-After on GET/PUT/DELETE (not POST/PATCH): code
    that wants to see the 429 of a read must configure `Configuration.retries`."""
    kube.add_pod(NS, "web-1")
    kube.fail_next("GET", r"/pods/web-1$", 429, retry_after=0)

    pod = core.read_namespaced_pod("web-1", NS)

    assert pod.metadata.name == "web-1"
    assert [r.status for r in kube.requests[-2:]] == [429, 200]


def test_an_injected_500_fails_as_many_times_as_asked(kube, core):
    kube.add_pod(NS, "web-1")
    kube.fail_next("PATCH", r"/pods/", 500, times=2)

    for _ in range(2):
        with pytest.raises(ApiException) as raised:
            core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"a": "b"}}})
        assert raised.value.status == 500
        assert status_of(raised.value)["reason"] == "InternalError"

    pod = core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"a": "b"}}})
    assert pod.metadata.labels == {"a": "b"}


def test_an_injected_failure_can_carry_a_custom_body(kube, core):
    kube.fail_next("*", r"/pods$", 503, body="upstream connect error")

    with pytest.raises(ApiException) as raised:
        core.list_namespaced_pod(NS)

    assert raised.value.status == 503
    assert raised.value.body == "upstream connect error"


def test_a_delay_slows_the_matching_responses(kube, core):
    kube.add_pod(NS, "web-1")
    kube.delay(r"/pods/web-1$", 0.3)

    started = time.monotonic()
    core.read_namespaced_pod("web-1", NS)

    assert time.monotonic() - started >= 0.3


def test_a_forbidden_verb_is_403_with_the_rbac_message(kube, core):
    kube.add_pod(NS, "x")
    kube.forbid("patch", "pods")

    with pytest.raises(ApiException) as raised:
        core.patch_namespaced_pod("x", NS, {"metadata": {"labels": {"a": "b"}}})

    assert raised.value.status == 403
    body = status_of(raised.value)
    assert body["reason"] == "Forbidden"
    assert body["message"] == (
        f'pods "x" is forbidden: User "{USER}" cannot patch resource "pods" in API group "" '
        f'in the namespace "{NS}"')
    assert core.read_namespaced_pod("x", NS).metadata.name == "x"  # get is still allowed


def test_forbidding_evictions_names_the_subresource(kube, core):
    kube.add_pod(NS, "x")
    kube.forbid("create", "pods/eviction", namespace=NS)

    with pytest.raises(ApiException) as raised:
        core.create_namespaced_pod_eviction("x", NS, eviction("x"))

    assert raised.value.status == 403
    assert 'cannot create resource "pods/eviction"' in status_of(raised.value)["message"]


def test_a_forbidden_cluster_wide_list_says_at_the_cluster_scope(kube, core):
    kube.forbid("list", "pods")

    with pytest.raises(ApiException) as raised:
        core.list_pod_for_all_namespaces()

    assert status_of(raised.value)["message"] == (
        f'pods is forbidden: User "{USER}" cannot list resource "pods" in API group "" '
        "at the cluster scope")


def test_a_request_without_the_bearer_token_is_401(kube):
    config = client.Configuration(host=kube.host)  # no token
    with client.ApiClient(config) as anonymous, pytest.raises(ApiException) as raised:
        client.CoreV1Api(anonymous).list_namespaced_pod(NS)

    assert raised.value.status == 401
    assert status_of(raised.value)["reason"] == "Unauthorized"
    assert "authorization" not in kube.requests[-1].headers


def test_the_request_log_counts_writes(kube, core):
    kube.add_pod(NS, "web-1")
    kube.clear_requests()

    core.read_namespaced_pod("web-1", NS)
    core.patch_namespaced_pod("web-1", NS, {"metadata": {"labels": {"a": "b"}}})
    core.delete_namespaced_pod("web-1", NS)

    writes = kube.writes()
    assert [(r.method, r.path) for r in writes] == [
        ("PATCH", f"/api/v1/namespaces/{NS}/pods/web-1"),
        ("DELETE", f"/api/v1/namespaces/{NS}/pods/web-1")]
    assert writes[0].body == {"metadata": {"labels": {"a": "b"}}}
    assert len(kube.requests) == 3
    assert kube.requests[0].headers["authorization"] == "Bearer s3cret"


# ---------------------------------------------------------------- exec and controllers

def test_exec_streams_the_programmed_output_over_the_channel_protocol(kube, core):
    kube.add_pod(NS, "web-1")
    kube.set_exec(["cat", "/proc/1/cmdline"], stdout="nginx\x00-g\x00")

    out = stream(core.connect_get_namespaced_pod_exec, "web-1", NS,
                 command=["cat", "/proc/1/cmdline"], stdout=True, stderr=True, stdin=False,
                 tty=False)

    assert out == "nginx\x00-g\x00"
    (call,) = kube.exec_calls
    assert (call.pod, call.container, call.command) == ("web-1", "app", ("cat", "/proc/1/cmdline"))


def test_exec_reports_a_non_zero_exit_code(kube, core):
    kube.add_pod(NS, "web-1")
    kube.exec_handler(lambda call: ExecResult(stderr="boom\n", exit_code=3)
                      if call.command[0] == "false" else None)

    session = stream(core.connect_get_namespaced_pod_exec, "web-1", NS, command=["false"],
                     stdout=True, stderr=True, stdin=False, tty=False, _preload_content=False)
    session.run_forever(timeout=5)

    assert session.read_stderr() == "boom\n"
    assert session.returncode == 3


def test_run_controllers_replaces_a_pod_relabelled_out_of_its_replicaset(kube, core):
    workload = kube.add_workload(NS, "web", labels={"app": "web"}, replicas=2)
    suspect = workload.pods[0]["metadata"]["name"]
    core.patch_namespaced_pod(suspect, NS, {"metadata": {"labels": {
        "app": None, "pod-template-hash": None, "drift/quarantine": "true"}}})

    kube.run_controllers()

    pods = {p["metadata"]["name"]: p for p in kube.objects("Pod", NS)}
    assert len(pods) == 3
    assert "ownerReferences" not in pods[suspect]["metadata"]  # released, kept for forensics
    matching = core.list_namespaced_pod(NS, label_selector="app=web").items
    assert len(matching) == 2
    assert all(p.metadata.owner_references[0].name == workload.replicaset["metadata"]["name"]
               for p in matching)



def test_exec_into_a_missing_pod_fails_the_handshake(kube, core):
    with pytest.raises(ApiException) as raised:
        stream(core.connect_get_namespaced_pod_exec, "ghost", NS, command=["ps"],
               stdout=True, stderr=True, stdin=False, tty=False)

    assert "404" in str(raised.value)
    assert kube.exec_calls == []


def test_exec_can_be_forbidden(kube, core):
    kube.add_pod(NS, "web-1")
    kube.forbid("create", "pods/exec")

    with pytest.raises(ApiException) as raised:
        stream(core.connect_get_namespaced_pod_exec, "web-1", NS, command=["ps"],
               stdout=True, stderr=True, stdin=False, tty=False)

    assert "403" in str(raised.value)
    assert kube.requests[-1].status == 403
