"""Detect -> Isolate -> Evict end to end: real ingest and worker processes, the fake Kubernetes
API server, approvals from the CLI; and the printed RBAC covers every request made."""

from __future__ import annotations

import getpass
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from responder.kube.pods import QUARANTINE_LABEL
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.support.samples import drift_alert
from tests.support.stack import Stack

RESPONSE_PLAYBOOK = """
name: respond
match:
  rules: ["Drop and execute new binary in container"]
steps:
  - id: context
    uses: kubernetes.pod_context
    with:
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      container_id: "{{ alert.container_id }}"
      node: "{{ incident.node }}"
    on_failure: continue
  - id: ask
    uses: core.approval
    with:
      options: [isolate, evict, dismiss]
      approvers: ["cli:alice", "cli:bob"]
  - id: isolate
    uses: kubernetes.isolate
    if: steps.ask.result.option == 'isolate' and steps.context.result.found
    with:
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      uid: "{{ steps.context.result.uid }}"
    retries: {count: 2, backoff_seconds: 0.2}
  - id: evict
    uses: kubernetes.evict
    if: steps.ask.result.option == 'evict' and steps.context.result.found
    with:
      namespace: "{{ incident.namespace }}"
      pod: "{{ incident.pod }}"
      uid: "{{ steps.context.result.uid }}"
      grace_period_seconds: 0
  - id: blocked
    uses: core.note
    if: steps.evict.result.status == 'blocked_by_pdb'
    with:
      message: "eviction blocked by {{ steps.evict.result.detail.budget }}"
"""

HTTP_VERBS = {"PATCH": "patch", "POST": "create", "DELETE": "delete", "PUT": "update"}


@pytest.fixture
def kube_stack(stack: Stack, fake: FakeKubernetes) -> Stack:
    stack.env["DRIFT_KUBE_HOST"] = fake.host
    Path(stack.env["DRIFT_PLAYBOOKS_DIR"], "respond.yaml").write_text(
        textwrap.dedent(RESPONSE_PLAYBOOK))
    stack.ingest()
    stack.start("worker", "--pool", "solo", name="worker")
    return stack


def _alert_for(pod: dict[str, Any], container: int) -> dict[str, Any]:
    alert = drift_alert(container)
    alert["output_fields"]["k8s.ns.name"] = pod["metadata"]["namespace"]
    alert["output_fields"]["k8s.pod.name"] = pod["metadata"]["name"]
    alert["hostname"] = pod["spec"]["nodeName"]
    # The container Falco saw is one of the pod's (as the kubelet reports it).
    full = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    alert["output_fields"]["container.full_id"] = full
    alert["output_fields"]["container.id"] = full[:12]
    return alert


def test_an_approved_isolation_quarantines_exactly_that_pod_and_can_be_released(
    kube_stack: Stack, fake: FakeKubernetes,
) -> None:
    workload = fake.add_workload("shop", "web", labels={"app": "web"}, replicas=3)
    fake.add_service("shop", "web", {"app": "web"})
    suspect = workload.pods[1]
    name = suspect["metadata"]["name"]
    incident = kube_stack.post(_alert_for(suspect, 1))
    kube_stack.wait_run(incident, "waiting")
    decided = kube_stack.cli("approve", incident, "--option", "isolate", "--as", "alice")
    assert decided.returncode == 0, decided.stderr
    run = kube_stack.wait_run(incident, "succeeded")
    result = run["state"]["steps"]["isolate"]["result"]
    assert result["status"] == "isolated"
    assert result["detail"]["uid"] == suspect["metadata"]["uid"]
    quarantined = [p["metadata"]["name"] for p in fake.objects("Pod", "shop")
                   if QUARANTINE_LABEL in p["metadata"]["labels"]]
    assert quarantined == [name]
    assert fake.pod("shop", name)["metadata"]["labels"] == {  # type: ignore[index]
        QUARANTINE_LABEL: incident}
    kinds = kube_stack.audit_kinds(incident)
    assert kinds.count("kubernetes.before") == 1
    assert kinds.count("kubernetes.after") == 1

    released = kube_stack.cli("pods", "release", f"shop/{name}")
    assert released.returncode == 0, released.stderr
    assert json.loads(released.stdout)["status"] == "released"
    labels = fake.pod("shop", name)["metadata"]["labels"]  # type: ignore[index]
    assert labels == suspect["metadata"]["labels"]
    exported = [json.loads(line) for line in
                kube_stack.cli("audit", "export").stdout.splitlines()]
    manual = [r for r in exported if r["kind"] == "manual.release"]
    assert [r["actor"] for r in manual] == [f"cli:{getpass.getuser()}"]


def test_an_eviction_blocked_by_a_budget_is_recorded_and_the_cli_exits_1(
    kube_stack: Stack, fake: FakeKubernetes,
) -> None:
    workload = fake.add_workload("shop", "api", labels={"app": "api"}, replicas=2)
    fake.add_pdb("shop", "api-budget", {"app": "api"}, min_available=2)
    suspect = workload.pods[0]
    incident = kube_stack.post(_alert_for(suspect, 2))
    kube_stack.wait_run(incident, "waiting")
    assert kube_stack.cli("approve", incident, "--option", "evict", "--as", "bob").returncode == 0
    run = kube_stack.wait_run(incident, "succeeded")
    assert run["state"]["steps"]["evict"]["result"]["status"] == "blocked_by_pdb"
    assert run["state"]["steps"]["blocked"]["result"] == {
        "message": "eviction blocked by api-budget"}
    assert fake.pod("shop", suspect["metadata"]["name"]) is not None

    manual = kube_stack.cli("pods", "evict", f"shop/{suspect['metadata']['name']}")
    assert manual.returncode == 1
    assert "blocked_by_pdb" in manual.stderr
    assert json.loads(manual.stdout)["detail"]["budget"] == "api-budget"


def test_the_cli_refuses_protected_namespaces_and_dry_runs_without_writing(
    kube_stack: Stack, fake: FakeKubernetes,
) -> None:
    fake.add_pod("kube-system", "coredns-0", labels={"k8s-app": "kube-dns"})
    refused = kube_stack.cli("pods", "isolate", "kube-system/coredns-0")
    assert refused.returncode == 1
    assert "protected" in refused.stderr
    fake.add_pod("shop", "lonely", labels={"app": "lonely"})
    fake.clear_requests()
    dry = kube_stack.cli("pods", "isolate", "shop/lonely", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["detail"]["pod_patch"]["metadata"]["labels"] == {
        QUARANTINE_LABEL: "manual"}
    assert fake.writes() == []


def test_the_printed_rbac_covers_every_request_the_actions_make(
    kube_stack: Stack, fake: FakeKubernetes,
) -> None:
    workload = fake.add_workload("shop", "web", labels={"app": "web"}, replicas=2)
    fake.add_pdb("shop", "web-budget", {"app": "web"}, min_available=1)
    for index, option in enumerate(["isolate", "evict"]):
        incident = kube_stack.post(_alert_for(workload.pods[index], 10 + index))
        kube_stack.wait_run(incident, "waiting")
        kube_stack.cli("approve", incident, "--option", option, "--as", "alice")
        kube_stack.wait_run(incident, "succeeded")
    printed = kube_stack.cli("rbac")
    assert printed.returncode == 0, printed.stderr
    role = yaml.safe_load(printed.stdout)
    granted = {(rule["apiGroups"][0], rule["resources"][0], verb)
               for rule in role["rules"] for verb in rule["verbs"]}
    assert all("*" not in rule["verbs"] for rule in role["rules"])
    assert not any(r == "nodes/proxy" for _, r, _ in granted)
    used = {_permission(r.method, r.path) for r in fake.requests}
    assert used, "no request reached the fake"
    assert used <= granted, used - granted


def _permission(method: str, path: str) -> tuple[str, str, str]:
    """(API group, resource, verb) of a request, as RBAC sees it."""
    core = re.match(r"^/api/v1/(?:namespaces/[^/]+/)?(?P<res>[a-z]+)(?:/(?P<name>[^/]+))?"
                    r"(?:/(?P<sub>[a-z]+))?$", path)
    named = re.match(r"^/apis/(?P<group>[^/]+)/[^/]+/(?:namespaces/[^/]+/)?(?P<res>[a-z]+)"
                     r"(?:/(?P<name>[^/]+))?$", path)
    found = core or named
    assert found is not None, path
    group = found.groupdict().get("group") or ""
    resource = found["res"]
    if found.groupdict().get("sub"):
        resource = f"{resource}/{found['sub']}"
    listing = method == "GET" and not found["name"]
    verb = "list" if listing else "get" if method == "GET" else HTTP_VERBS[method]
    return group, resource, verb
