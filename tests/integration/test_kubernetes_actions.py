"""Kubernetes plug-ins through the official client against the fake API server
(tests/fakes/kubernetes_api.py): every action's success, idempotency, dry-run, PDB block,
conflict retry, target change, protected namespace and missing permission."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from responder.kube.client import Conflict, KubeError
from responder.kube.pods import MAX_CONFLICTS, POLICY_NAME, QUARANTINE_LABEL
from responder.plugins import runtime
from responder.plugins.kubernetes import ProtectedNamespace
from responder.plugins.registry import RecordingContext, load_all
from responder.settings import Settings
from tests.fakes.kubernetes_api import FakeKubernetes

PLUGINS = {p.name: p for p in load_all()}
WEB = {"app": "web", "tier": "frontend"}


def run(name: str, params: dict[str, Any], incident: str = "INC1") -> tuple[Any, RecordingContext]:
    plugin = PLUGINS[name]
    ctx = RecordingContext("run", "step", 1, {"id": incident}, {})
    return plugin.run(ctx, plugin.params.model_validate(params)), ctx


@pytest.fixture
def web(fake: FakeKubernetes, settings: Settings) -> dict[str, Any]:
    workload = fake.add_workload("shop", "web", labels=WEB, replicas=2)
    fake.add_service("shop", "web", {"app": "web"})
    fake.add_service("shop", "other", {"app": "other"})
    pod = workload.pods[0]
    return {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"],
            "workload": workload}


def _target(web: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"namespace": "shop", "pod": web["name"], "uid": web["uid"], **extra}


def _pod_writes(fake: FakeKubernetes, name: str) -> list[Any]:
    return [r for r in fake.writes(rf"/pods/{re.escape(name)}$") if r.method == "PATCH"]


def test_pod_context_resolves_owners_selectors_budgets_and_images(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.add_pdb("shop", "web-budget", {"app": "web"}, min_available=1)
    fake.add_networkpolicy("shop", "allow-web", pod_selector={"app": "web"},
                           ingress=[{"from": [{"podSelector": {}}]}])
    result, _ = run("kubernetes.pod_context", {"namespace": "shop", "pod": web["name"]})
    assert result.found is True
    assert result.uid == web["uid"]
    ctx = result.context
    assert [(o["kind"], o["name"]) for o in ctx["owners"]] == [
        ("ReplicaSet", web["workload"].replicaset["metadata"]["name"]),
        ("Deployment", "web")]
    assert ctx["services"] == ["web"]
    assert ctx["network_policies"] == ["allow-web"]
    assert ctx["disruption_budgets"] == ["web-budget"]
    assert re.search(r"@sha256:[0-9a-f]{64}$", ctx["containers"][0]["image_id"])


def test_pod_context_finds_the_pod_by_container_id_on_its_node(
    fake: FakeKubernetes, settings: Settings,
) -> None:
    full = "ab" * 32
    fake.add_pod("shop", "lonely", labels={"app": "x"}, node="worker-7", container_ids=[full])
    fake.add_pod("shop", "elsewhere", node="worker-8")
    result, _ = run("kubernetes.pod_context", {"container_id": full[:12], "node": "worker-7"})
    assert result.found is True
    assert result.context["pod"] == "lonely"
    missing, _ = run("kubernetes.pod_context", {"container_id": "cd" * 6, "node": "worker-7"})
    assert missing.found is False


def test_isolate_quarantines_exactly_one_pod_and_its_controller_replaces_it(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.add_networkpolicy("shop", "allow-all-in", pod_selector=None,
                           ingress=[{"from": [{"podSelector": {}}]}])
    result, ctx = run("kubernetes.isolate", _target(web))
    assert result.status == "isolated"
    pod = fake.pod("shop", web["name"])
    assert pod is not None
    labels = pod["metadata"]["labels"]
    assert labels == {QUARANTINE_LABEL: "INC1"}  # app, tier, pod-template-hash removed
    assert set(result.detail["removed_labels"]) == {"app", "tier", "pod-template-hash"}
    assert json.loads(pod["metadata"]["annotations"]["drift-responder.io/removed-labels"]) == \
        result.detail["removed_labels"]
    policy = fake.get("NetworkPolicy", "shop", POLICY_NAME)
    assert policy is not None
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] or policy["spec"]["ingress"] == []
    assert policy["spec"]["podSelector"]["matchExpressions"] == [
        {"key": QUARANTINE_LABEL, "operator": "Exists"}]
    assert result.detail["selected_by_services"] == []
    assert result.detail["still_allowed_by"] == ["allow-all-in"]
    assert [kind for kind, _ in ctx.records] == ["kubernetes.before", "kubernetes.after"]
    others = [p for p in fake.objects("Pod", "shop") if p["metadata"]["name"] != web["name"]]
    assert all(QUARANTINE_LABEL not in p["metadata"]["labels"] for p in others)
    fake.run_controllers()
    replicas = [p for p in fake.objects("Pod", "shop")
                if p["metadata"]["labels"].get("app") == "web"]
    assert len(replicas) == 2  # a clean replacement; the suspect pod stays for forensics
    assert fake.pod("shop", web["name"]) is not None


def test_isolating_twice_changes_nothing_twice_and_returns_the_same_result(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    first, _ = run("kubernetes.isolate", _target(web))
    second, ctx = run("kubernetes.isolate", _target(web))
    assert second == first
    assert len(_pod_writes(fake, web["name"])) == 1
    assert len(fake.objects("NetworkPolicy", "shop")) == 1
    assert [kind for kind, _ in ctx.records] == ["kubernetes.before"]  # nothing changed


def test_dry_run_returns_the_exact_patch_and_policy_and_sends_no_write(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    result, _ = run("kubernetes.isolate", _target(web, dry_run=True))
    assert result.status == "dry_run"
    assert result.dry_run is True
    patch = result.detail["pod_patch"]["metadata"]
    assert patch["labels"] == {"app": None, "tier": None, "pod-template-hash": None,
                               QUARANTINE_LABEL: "INC1"}
    assert result.detail["network_policy"]["metadata"]["name"] == POLICY_NAME
    assert fake.writes() == []


def test_global_dry_run_setting_applies_when_the_step_does_not_say(
    fake: FakeKubernetes, web: dict[str, Any], tmp_path: Any,
) -> None:
    runtime.install(Settings(kube_host=fake.host, dry_run=True, data_dir=tmp_path))
    result, _ = run("kubernetes.evict", _target(web))
    assert result.status == "dry_run"
    assert result.detail["eviction"]["deleteOptions"]["preconditions"] == {"uid": web["uid"]}
    assert fake.writes() == []


def test_a_pod_replaced_under_the_same_name_is_not_touched(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    for name in ("kubernetes.isolate", "kubernetes.evict", "kubernetes.release",
                 "kubernetes.delete"):
        result, _ = run(name, _target(web, uid="00000000-0000-0000-0000-000000000000"))
        assert result.status == "target_changed", name
        assert result.detail["found_uid"] == web["uid"]
    assert fake.writes() == []


def test_protected_namespaces_are_refused_unless_the_step_allows_them(
    fake: FakeKubernetes, settings: Settings,
) -> None:
    fake.add_pod("kube-system", "coredns-1", labels={"k8s-app": "kube-dns"})
    with pytest.raises(ProtectedNamespace, match="allow_protected"):
        run("kubernetes.isolate", {"namespace": "kube-system", "pod": "coredns-1"})
    assert fake.writes() == []
    result, _ = run("kubernetes.isolate", {"namespace": "kube-system", "pod": "coredns-1",
                                           "allow_protected": True})
    assert result.status == "isolated"


def test_the_responders_own_namespace_is_protected(fake: FakeKubernetes, tmp_path: Any) -> None:
    fake.add_namespace("drift")
    fake.add_pod("drift", "worker-0")
    runtime.install(Settings(kube_host=fake.host, namespace="drift", data_dir=tmp_path))
    with pytest.raises(ProtectedNamespace):
        run("kubernetes.evict", {"namespace": "drift", "pod": "worker-0"})


def test_release_restores_the_labels_and_is_harmless_to_repeat(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    original = dict(fake.pod("shop", web["name"])["metadata"]["labels"])  # type: ignore[index]
    run("kubernetes.isolate", _target(web))
    released, ctx = run("kubernetes.release", _target(web))
    assert released.status == "released"
    pod = fake.pod("shop", web["name"])
    assert pod is not None
    assert pod["metadata"]["labels"] == original
    assert "drift-responder.io/removed-labels" not in pod["metadata"].get("annotations", {})
    assert fake.get("NetworkPolicy", "shop", POLICY_NAME) is not None  # the policy stays
    again, _ = run("kubernetes.release", _target(web))
    assert again.status == "not_isolated"
    assert [kind for kind, _ in ctx.records] == ["kubernetes.before", "kubernetes.after"]


def test_evict_removes_the_pod_and_a_gone_pod_is_success(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    result, _ = run("kubernetes.evict", _target(web, grace_period_seconds=5))
    assert result.status == "evicted"
    assert fake.pod("shop", web["name"]) is None
    again, _ = run("kubernetes.evict", _target(web))
    assert again.status == "already_gone"


def test_an_eviction_blocked_by_a_budget_names_the_budget(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.add_pdb("shop", "web-budget", {"app": "web"}, min_available=2)
    result, _ = run("kubernetes.evict", _target(web))
    assert result.status == "blocked_by_pdb"
    assert result.detail["budget"] == "web-budget"
    assert fake.pod("shop", web["name"]) is not None


def test_force_delete_ignores_budgets(fake: FakeKubernetes, web: dict[str, Any]) -> None:
    fake.add_pdb("shop", "web-budget", {"app": "web"}, min_available=2)
    result, _ = run("kubernetes.delete", _target(web, grace_period_seconds=0))
    assert result.status == "deleted"
    assert fake.pod("shop", web["name"]) is None
    [delete] = [r for r in fake.writes() if r.method == "DELETE"]
    assert delete.body["gracePeriodSeconds"] == 0
    assert delete.body["preconditions"] == {"uid": web["uid"]}


def test_a_conflicting_write_is_retried_on_the_fresh_object(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.fail_next("PATCH", rf"/pods/{re.escape(web['name'])}$", 409)
    result, _ = run("kubernetes.isolate", _target(web))
    assert result.status == "isolated"
    assert fake.pod("shop", web["name"])["metadata"]["labels"] == {  # type: ignore[index]
        QUARANTINE_LABEL: "INC1"}


@pytest.mark.parametrize("name", ["kubernetes.isolate", "kubernetes.release",
                                  "kubernetes.label"])
def test_a_pod_that_conflicts_under_every_patch_fails_the_step_after_a_few_rounds(
    fake: FakeKubernetes, web: dict[str, Any], name: str,
) -> None:
    if name == "kubernetes.release":
        run("kubernetes.isolate", _target(web))
    fake.clear_requests()
    fake.fail_next("PATCH", rf"/pods/{re.escape(web['name'])}$", 409, times=10**6)
    params = _target(web, values={"suspect": "true"}) if name == "kubernetes.label" \
        else _target(web)
    with pytest.raises(Conflict, match="changed under each of 5 attempts"):
        run(name, params)
    patches = [r for r in fake.requests if r.method == "PATCH" and
               r.path.endswith(f"/pods/{web['name']}")]
    assert len(patches) == MAX_CONFLICTS


def test_server_errors_and_rate_limits_are_retried_with_backoff(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.fail_next("GET", rf"/pods/{re.escape(web['name'])}$", 500, times=2)
    fake.fail_next("PATCH", rf"/pods/{re.escape(web['name'])}$", 429, retry_after=1)
    result, _ = run("kubernetes.isolate", _target(web))
    assert result.status == "isolated"
    statuses = [r.status for r in fake.requests if r.path.endswith(web["name"])]
    assert statuses[:3] == [500, 500, 200]
    assert 429 in statuses


def test_persistent_server_errors_fail_the_step_clearly(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.fail_next("GET", rf"/pods/{re.escape(web['name'])}$", 503, times=10)
    with pytest.raises(KubeError, match="HTTP 503"):
        run("kubernetes.isolate", _target(web))


def test_a_missing_permission_names_the_verb_and_resource(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.forbid("patch", "pods")
    with pytest.raises(KubeError, match=r"missing RBAC verb 'patch' on resource 'pods'"):
        run("kubernetes.isolate", _target(web))


def test_label_annotate_and_cordon(fake: FakeKubernetes, web: dict[str, Any]) -> None:
    labelled, _ = run("kubernetes.label", _target(web, values={"suspect": "true"}))
    assert labelled.status == "updated"
    same, _ = run("kubernetes.label", _target(web, values={"suspect": "true"}))
    assert same.status == "unchanged"
    run("kubernetes.annotate", _target(web, values={"note": "x"}))
    pod = fake.pod("shop", web["name"])
    assert pod is not None
    assert pod["metadata"]["labels"]["suspect"] == "true"
    assert pod["metadata"]["annotations"]["note"] == "x"
    cordoned, _ = run("kubernetes.cordon", {"node": "node-1"})
    assert cordoned.status == "cordoned"
    assert fake.node("node-1")["spec"]["unschedulable"] is True  # type: ignore[index]
    again, _ = run("kubernetes.cordon", {"node": "node-1"})
    assert again.status == "already_cordoned"


def _kubeconfig(path: Any, fake: FakeKubernetes) -> Any:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "wrong",
        "clusters": [{"name": "fake", "cluster": {"server": fake.host}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "responder", "user": {"token": "sekret"}}],
        "contexts": [{"name": "right", "context": {"cluster": "fake", "user": "responder"}},
                     {"name": "wrong", "context": {"cluster": "nowhere", "user": "responder"}}],
    }
    path.write_text(json.dumps(config))
    return path


def test_a_kubeconfig_context_is_selected_and_its_token_sent(tmp_path: Any) -> None:
    with FakeKubernetes(token="sekret", namespaces=["shop"]) as fake:
        fake.add_pod("shop", "p")
        kubeconfig = _kubeconfig(tmp_path / "config", fake)
        runtime.install(Settings(kubeconfig=str(kubeconfig), kube_context="right",
                                 data_dir=tmp_path))
        result, _ = run("kubernetes.pod_context", {"namespace": "shop", "pod": "p"})
        assert result.found is True
        assert fake.requests[0].headers["authorization"] == "Bearer sekret"


def test_a_wrong_token_is_a_clear_401(tmp_path: Any) -> None:
    with FakeKubernetes(token="sekret", namespaces=["shop"]) as fake:
        fake.add_pod("shop", "p")
        runtime.install(Settings(kube_host=fake.host, kube_token="nope", data_dir=tmp_path))
        with pytest.raises(KubeError, match=r"unauthenticated \(401\)"):
            run("kubernetes.isolate", {"namespace": "shop", "pod": "p"})


def test_isolating_for_a_second_incident_keeps_the_first_record_so_release_restores_all(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    original = dict(fake.pod("shop", web["name"])["metadata"]["labels"])  # type: ignore[index]
    run("kubernetes.isolate", _target(web), incident="INC1")
    second, _ = run("kubernetes.isolate", _target(web), incident="INC2")
    assert second.status == "isolated"
    assert second.detail["already_isolated_by"] == "INC1"
    assert set(second.detail["removed_labels"]) == {"app", "tier", "pod-template-hash"}
    run("kubernetes.release", _target(web))
    assert fake.pod("shop", web["name"])["metadata"]["labels"] == original  # type: ignore[index]


def test_a_quarantine_policy_someone_loosened_is_put_back_to_deny_all(
    fake: FakeKubernetes, web: dict[str, Any],
) -> None:
    fake.add_networkpolicy("shop", POLICY_NAME, pod_selector={QUARANTINE_LABEL: "x"},
                           ingress=[{}])
    result, _ = run("kubernetes.isolate", _target(web))
    assert result.detail["network_policy_state"] == "replaced"
    policy = fake.get("NetworkPolicy", "shop", POLICY_NAME)
    assert policy is not None
    assert not policy["spec"].get("ingress")
    assert policy["spec"]["podSelector"]["matchExpressions"] == [
        {"key": QUARANTINE_LABEL, "operator": "Exists"}]


def test_pod_context_refuses_a_pod_recreated_under_the_alerts_name(
    fake: FakeKubernetes, settings: Settings,
) -> None:
    fake.add_pod("shop", "web-0", container_ids=["cd" * 32])
    result, _ = run("kubernetes.pod_context", {"namespace": "shop", "pod": "web-0",
                                               "container_id": "ab" * 6})
    assert result.found is False
    assert "replaced" in (result.reason or "")
    same, _ = run("kubernetes.pod_context", {"namespace": "shop", "pod": "web-0",
                                             "container_id": "cd" * 6})
    assert same.found is True
