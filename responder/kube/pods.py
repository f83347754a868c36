"""What the responder does to pods: read their context, isolate, release, evict, delete, label.

Every change is pinned to the pod UID it was approved for, is safe to repeat, and in dry-run
returns the exact patches and objects it would send instead of sending them.

Every cluster-changing request is first written ahead to a :class:`Journal` (the step's audit
trail, committed before the request is sent). A repeated step that finds its target already in
the state it wants asks the journal for the requests earlier deliveries of the same step wrote
ahead and never saw answered: when the target shows exactly such a request applied, the outcome
names that request (``Outcome.recovered``) instead of passing the change over in silence.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from responder.kube import selectors
from responder.kube.client import Blocked, Cluster, Conflict, KubeError, NotFound

QUARANTINE_LABEL = "drift-responder.io/quarantine"
INCIDENT_ANNOTATION = "drift-responder.io/incident"
ISOLATED_AT_ANNOTATION = "drift-responder.io/isolated-at"
ORIGINAL_LABELS_ANNOTATION = "drift-responder.io/removed-labels"
POLICY_NAME = "drift-responder-quarantine"
MERGE = "application/merge-patch+json"
_BUDGET = re.compile(r"disruption budget (?P<name>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)", re.I)


def quarantine_policy(namespace: str) -> dict[str, Any]:
    """Deny all ingress and egress for quarantined pods (policy types set, no rules)."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": POLICY_NAME, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "drift-responder"}},
        "spec": {"podSelector": {"matchExpressions": [
                     {"key": QUARANTINE_LABEL, "operator": "Exists"}]},
                 "policyTypes": ["Ingress", "Egress"]},
    }


class Journal(Protocol):
    """Where actions write ahead what they are about to send (see the module's docstring)."""

    def intend(self, request: dict[str, Any], before: dict[str, Any] | None) -> None:
        """Record, durably and before it is sent, the exact request about to be made and the
        target's state it was decided on."""

    def refused(self, error: Exception) -> None:
        """The request last written ahead was refused by the API (a 4xx answer other than a
        conflict): nothing was applied."""

    def earlier(self) -> Sequence[Mapping[str, Any]]:
        """Requests written ahead by this step (earlier deliveries and this one) whose outcome
        was never recorded, newest first: mappings with ``request`` and ``before`` as given to
        :meth:`intend`, and whatever else the journal keeps to name them."""


@dataclass
class Outcome:
    """The result of an action: what happened, and the pod before and after (for the audit).

    ``recovered`` is the journal's entry of an earlier request of the same step that the target
    shows applied, when this call found nothing left to do: the change was made by a delivery
    that died (or lost the answer) before recording it; ``before`` is then the state that
    request was decided on, ``after`` the state found now.
    """

    status: str
    detail: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    recovered: Mapping[str, Any] | None = None


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods/{name}"


def policies_path(namespace: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"


def node_path(node: str) -> str:
    return f"/api/v1/nodes/{node}"


def request(method: str, path: str, body: Any, content_type: str | None = None
            ) -> dict[str, Any]:
    """A request as written ahead: method, path, content type and body, exactly as sent."""
    out: dict[str, Any] = {"method": method, "path": path, "body": copy.deepcopy(body)}
    if content_type is not None:
        out["content_type"] = content_type
    return out


#: Answers that leave a write unapplied and are not handled by the action itself (a conflict
#: is: the action decides again, and its outcome answers the request).
_REFUSALS = frozenset(range(400, 500)) - {409}


def _send(cluster: Cluster, journal: Journal | None, req: dict[str, Any],
          before: dict[str, Any] | None, what: str, method: Callable[..., Any], *args: Any,
          **kwargs: Any) -> Any:
    """Write the request ahead, then send it; tell the journal when the API refused it."""
    if journal is not None:
        journal.intend(req, before)
    try:
        return cluster.call(what, method, *args, **kwargs)
    except KubeError as exc:
        if journal is not None and exc.status in _REFUSALS:
            journal.refused(exc)
        raise


def _unanswered(journal: Journal | None, method: str, path: str,
                uid: str | None) -> Iterator[Mapping[str, Any]]:
    """The journal's unanswered requests ``method path`` decided on the object ``uid``."""
    if journal is None:
        return
    for entry in journal.earlier():
        req = entry.get("request") or {}
        before = entry.get("before") or {}
        if req.get("method") == method and req.get("path") == path and \
                (uid is None or before.get("uid") == uid):
            yield entry


def _shows_merge(current: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """Whether ``current`` shows a JSON merge patch applied: every value set, every null
    removed."""
    for key, wanted in patch.items():
        if wanted is None:
            if key in current:
                return False
        elif isinstance(wanted, Mapping):
            found = current.get(key)
            if not isinstance(found, Mapping) or not _shows_merge(found, wanted):
                return False
        elif current.get(key) != wanted:
            return False
    return True


def _applied_earlier(journal: Journal | None, path: str, obj: Mapping[str, Any], *,
                     pinned: bool = True) -> Mapping[str, Any] | None:
    """The newest unanswered merge patch of this step to ``path`` that ``obj`` shows applied
    (decided on this very object when ``pinned``: same UID)."""
    uid = (obj.get("metadata") or {}).get("uid") if pinned else None
    for entry in _unanswered(journal, "PATCH", path, uid):
        body = copy.deepcopy((entry.get("request") or {}).get("body"))
        if not isinstance(body, dict):
            continue
        meta = body.get("metadata")
        if isinstance(meta, dict):
            meta.pop("resourceVersion", None)  # the precondition, not the change
        if _shows_merge(obj, body):
            return entry
    return None


def _recovered(status: str, detail: dict[str, Any], entry: Mapping[str, Any],
               after: dict[str, Any] | None) -> Outcome:
    before = entry.get("before")
    return Outcome(status, detail, dict(before) if isinstance(before, Mapping) else None,
                   after, recovered=entry)


def get_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = cluster.call(f"get pod {namespace}/{name}",
                                       cluster.core.read_namespaced_pod, name, namespace)
    return pod


def find_pod_by_container(cluster: Cluster, container_id: str,
                          node: str | None = None) -> dict[str, Any] | None:
    """The pod running a container (12-char or full id), among the node's pods when known."""
    kwargs: dict[str, Any] = {}
    if node:
        kwargs["field_selector"] = f"spec.nodeName={node}"
    listing = cluster.call("list pods", cluster.core.list_pod_for_all_namespaces, **kwargs)
    for pod in listing.get("items", []):
        if runs_container(pod, container_id):
            return dict(pod)
    return None


def runs_container(pod: dict[str, Any], container_id: str) -> bool:
    """Whether the pod's container statuses include this id (12-char prefix or full)."""
    wanted = container_id.lower()
    status = pod.get("status", {})
    for entry in (status.get("containerStatuses") or []) + \
            (status.get("initContainerStatuses") or []):
        cid = str(entry.get("containerID") or "").split("://")[-1].lower()
        if cid and cid.startswith(wanted):
            return True
    return False


def summary(pod: dict[str, Any]) -> dict[str, Any]:
    """The fields of a pod the audit trail keeps (before/after states)."""
    meta = pod.get("metadata", {})
    return {"namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": dict(meta.get("labels") or {}),
            "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                            if k.startswith("drift-responder.io/")},
            "node": pod.get("spec", {}).get("nodeName"),
            "phase": pod.get("status", {}).get("phase")}


def context(cluster: Cluster, pod: dict[str, Any]) -> dict[str, Any]:
    """Owner chain, images with digests, and what selects the pod (Services, NetworkPolicies,
    PodDisruptionBudgets)."""
    meta = pod["metadata"]
    namespace = meta["namespace"]
    labels = meta.get("labels") or {}
    owners = owner_chain(cluster, namespace, meta.get("ownerReferences") or [])
    services = cluster.call("list services", cluster.core.list_namespaced_service, namespace)
    policies = cluster.call("list networkpolicies",
                            cluster.networking.list_namespaced_network_policy, namespace)
    budgets = cluster.call("list poddisruptionbudgets",
                           cluster.policy.list_namespaced_pod_disruption_budget, namespace)
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return {
        "namespace": namespace, "pod": meta["name"], "uid": meta["uid"],
        "node": pod.get("spec", {}).get("nodeName"), "labels": labels,
        "owners": owners,
        "containers": [{"name": s.get("name"), "image": s.get("image"),
                        "image_id": s.get("imageID"), "container_id": s.get("containerID")}
                       for s in statuses],
        "services": [s["metadata"]["name"] for s in services.get("items", [])
                     if selectors.service_selects(s.get("spec", {}).get("selector"), labels)],
        "network_policies": [p["metadata"]["name"] for p in policies.get("items", [])
                             if selectors.matches(p.get("spec", {}).get("podSelector"), labels)],
        "disruption_budgets": [b["metadata"]["name"] for b in budgets.get("items", [])
                               if selectors.matches(b.get("spec", {}).get("selector"), labels)],
    }


_OWNER_READERS = {
    "ReplicaSet": ("apps", "read_namespaced_replica_set"),
    "Deployment": ("apps", "read_namespaced_deployment"),
    "StatefulSet": ("apps", "read_namespaced_stateful_set"),
    "DaemonSet": ("apps", "read_namespaced_daemon_set"),
    "Job": ("batch", "read_namespaced_job"),
}


def owner_chain(cluster: Cluster, namespace: str,
                refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ReplicaSet -> Deployment, StatefulSet, DaemonSet, Job (-> CronJob), with selectors."""
    chain: list[dict[str, Any]] = []
    current = [r for r in refs if r.get("controller")] or refs
    for _ in range(4):
        if not current:
            break
        ref = current[0]
        kind, name = ref.get("kind"), ref.get("name")
        entry: dict[str, Any] = {"kind": kind, "name": name, "uid": ref.get("uid")}
        chain.append(entry)
        reader = _OWNER_READERS.get(str(kind))
        if reader is None:
            break
        api = getattr(cluster, reader[0])
        try:
            owner = cluster.call(f"get {kind} {namespace}/{name}", getattr(api, reader[1]),
                                 name, namespace)
        except NotFound:
            entry["missing"] = True
            break
        entry["selector"] = owner.get("spec", {}).get("selector")
        current = [r for r in owner["metadata"].get("ownerReferences") or []
                   if r.get("controller")]
    return chain


def labels_to_strip(cluster: Cluster, pod: dict[str, Any],
                    configured: list[str] | None = None) -> list[str]:
    """The labels that put the pod into its controller and its Services (or the configured
    list): removing them lets the controller start a clean replacement and takes the pod out of
    load balancing, while the suspect pod stays for forensics."""
    labels = pod["metadata"].get("labels") or {}
    if configured:
        return sorted(k for k in configured if k in labels)
    keys: set[str] = set()
    for owner in owner_chain(cluster, pod["metadata"]["namespace"],
                             pod["metadata"].get("ownerReferences") or []):
        keys |= selectors.keys_of(owner.get("selector"))
    services = cluster.call("list services", cluster.core.list_namespaced_service,
                            pod["metadata"]["namespace"])
    for service in services.get("items", []):
        selector = service.get("spec", {}).get("selector")
        if selectors.service_selects(selector, labels):
            keys |= set(selector)
    keys.discard(QUARANTINE_LABEL)
    return sorted(k for k in keys if k in labels)


def _target_changed(before: dict[str, Any], expected_uid: str | None) -> Outcome | None:
    """Actions are pinned to the pod that was approved: another pod of the same name (the
    controller recreated it) is left alone."""
    if expected_uid is None or before["uid"] == expected_uid:
        return None
    return Outcome("target_changed", {"expected_uid": expected_uid,
                                      "found_uid": before["uid"]}, before)


def _get_or_gone(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | Outcome:
    try:
        return get_pod(cluster, namespace, name)
    except NotFound:
        return Outcome("already_gone", {"pod": name, "namespace": namespace})


def _pinned_pod(cluster: Cluster, namespace: str, name: str,
                expected_uid: str | None) -> tuple[dict[str, Any], dict[str, Any]] | Outcome:
    """The pod and its before-state, or the Outcome that ends the action: the pod is gone, or
    it is no longer the pod that was approved."""
    pod = _get_or_gone(cluster, namespace, name)
    if isinstance(pod, Outcome):
        return pod
    before = summary(pod)
    changed = _target_changed(before, expected_uid)
    return changed if changed is not None else (pod, before)


#: Read-decide-patch rounds after resourceVersion conflicts before giving up: a pod that
#: changes under every patch is fought over, and the step should fail saying so, not spin.
MAX_CONFLICTS = 5


def _again(exc: Conflict, conflicts: int, what: str) -> int:
    if conflicts + 1 >= MAX_CONFLICTS:
        raise Conflict(f"{what}: the pod changed under each of {MAX_CONFLICTS} attempts "
                       f"(resourceVersion conflicts); last: {exc}", exc.status, exc.reason,
                       exc.body) from None
    return conflicts + 1


def isolate(cluster: Cluster, namespace: str, name: str, *, incident_id: str, now: str,
            expected_uid: str | None, strip: list[str] | None = None,
            dry_run: bool = False, conflicts: int = 0,
            journal: Journal | None = None) -> Outcome:
    found = _pinned_pod(cluster, namespace, name, expected_uid)
    if isinstance(found, Outcome):
        return found
    pod, before = found
    labels = pod["metadata"].get("labels") or {}
    annotations = pod["metadata"].get("annotations") or {}
    if QUARANTINE_LABEL in labels:
        # Already quarantined (a repeated step, or another incident of the same pod): keep the
        # first record of the removed labels, or release could never restore them.
        removed = json.loads(annotations.get(ORIGINAL_LABELS_ANNOTATION, "{}"))
        if dry_run:
            return Outcome("dry_run", {"already_isolated_by": labels[QUARANTINE_LABEL],
                                       "removed_labels": removed}, before)
        policy_state = ensure_policy(cluster, namespace, journal=journal)
        detail = _isolation_detail(cluster, pod, removed)
        if policy_state == "replaced":  # reported: someone had loosened it
            detail["network_policy_state"] = policy_state
        if labels[QUARANTINE_LABEL] != incident_id:
            detail["already_isolated_by"] = labels[QUARANTINE_LABEL]
        # The patch carries the time it was decided: a pod showing an unanswered patch of this
        # step was isolated by it, not by another step that happened to quarantine it.
        applied = _applied_earlier(journal, pod_path(namespace, name), pod)
        if applied is not None:
            return _recovered("isolated", detail, applied, summary(pod))
        return Outcome("isolated", detail, before, summary(pod))
    removed = {k: labels[k] for k in labels_to_strip(cluster, pod, strip)}
    patch = {"metadata": {
        "resourceVersion": pod["metadata"]["resourceVersion"],
        "labels": {**dict.fromkeys(removed), QUARANTINE_LABEL: incident_id},
        "annotations": {INCIDENT_ANNOTATION: incident_id, ISOLATED_AT_ANNOTATION: now,
                        ORIGINAL_LABELS_ANNOTATION: json.dumps(removed, sort_keys=True)},
    }}
    policy = quarantine_policy(namespace)
    if dry_run:
        return Outcome("dry_run", {"pod_patch": patch, "patch_content_type": MERGE,
                                   "network_policy": policy, "removed_labels": removed},
                       before)
    # First: never labelled but unprotected.
    policy_state = ensure_policy(cluster, namespace, journal=journal)
    try:
        after = _send(cluster, journal,
                      request("PATCH", pod_path(namespace, name), patch, MERGE), before,
                      f"patch pod {namespace}/{name}", cluster.core.patch_namespaced_pod,
                      name, namespace, patch, _content_type=MERGE)
    except Conflict as exc:
        # The pod changed between read and patch: decide again on its current state.
        return isolate(cluster, namespace, name, incident_id=incident_id, now=now,
                       expected_uid=expected_uid, strip=strip, dry_run=dry_run,
                       conflicts=_again(exc, conflicts, f"isolate pod {namespace}/{name}"),
                       journal=journal)
    detail = _isolation_detail(cluster, after, removed)
    if policy_state == "replaced":  # reported: someone had loosened it
        detail["network_policy_state"] = policy_state
    return Outcome("isolated", detail, before, summary(after))


def ensure_policy(cluster: Cluster, namespace: str, *, journal: Journal | None = None) -> str:
    """Create the namespace's quarantine policy, or check the existing one still denies all:
    "created", "existing", or "replaced" when someone had given it rules."""
    wanted = quarantine_policy(namespace)
    try:
        _send(cluster, journal, request("POST", policies_path(namespace), wanted), None,
              f"create networkpolicy {namespace}/{POLICY_NAME}",
              cluster.networking.create_namespaced_network_policy, namespace, wanted)
        return "created"
    except Conflict:
        current = cluster.call(f"get networkpolicy {namespace}/{POLICY_NAME}",
                               cluster.networking.read_namespaced_network_policy, POLICY_NAME,
                               namespace)
        spec = current.get("spec", {})
        if spec.get("ingress") or spec.get("egress") or \
                sorted(spec.get("policyTypes") or []) != ["Egress", "Ingress"] or \
                spec.get("podSelector") != wanted["spec"]["podSelector"]:
            replacement = {**wanted, "metadata": {**wanted["metadata"], "resourceVersion":
                                                  current["metadata"]["resourceVersion"]}}
            _send(cluster, journal,
                  request("PUT", f"{policies_path(namespace)}/{POLICY_NAME}", replacement),
                  None, f"replace networkpolicy {namespace}/{POLICY_NAME}",
                         cluster.networking.replace_namespaced_network_policy, POLICY_NAME,
                         namespace, replacement)
            return "replaced"
        return "existing"


def _isolation_detail(cluster: Cluster, pod: dict[str, Any],
                      removed: dict[str, str]) -> dict[str, Any]:
    """Read back what selects the pod now; name policies that could still allow traffic."""
    fresh = get_pod(cluster, pod["metadata"]["namespace"], pod["metadata"]["name"])
    ctx = context(cluster, fresh)
    policies = cluster.call("list networkpolicies",
                            cluster.networking.list_namespaced_network_policy,
                            fresh["metadata"]["namespace"])
    labels = fresh["metadata"].get("labels") or {}
    allowing = sorted(
        p["metadata"]["name"] for p in policies.get("items", [])
        if p["metadata"]["name"] != POLICY_NAME
        and selectors.matches(p.get("spec", {}).get("podSelector"), labels)
        and (p.get("spec", {}).get("ingress") or p.get("spec", {}).get("egress")))
    return {"pod": fresh["metadata"]["name"], "namespace": fresh["metadata"]["namespace"],
            "uid": fresh["metadata"]["uid"], "removed_labels": removed,
            "quarantine_label": {QUARANTINE_LABEL: labels.get(QUARANTINE_LABEL)},
            "network_policy": POLICY_NAME,
            "selected_by_services": ctx["services"],
            "selected_by_network_policies": ctx["network_policies"],
            "still_allowed_by": allowing}


def release(cluster: Cluster, namespace: str, name: str, *, expected_uid: str | None,
            dry_run: bool = False, conflicts: int = 0,
            journal: Journal | None = None) -> Outcome:
    found = _pinned_pod(cluster, namespace, name, expected_uid)
    if isinstance(found, Outcome):
        return found
    pod, before = found
    labels = pod["metadata"].get("labels") or {}
    annotations = pod["metadata"].get("annotations") or {}
    if QUARANTINE_LABEL not in labels:
        applied = None if dry_run else _applied_earlier(journal, pod_path(namespace, name), pod)
        if applied is not None:
            body = (applied.get("request") or {}).get("body") or {}
            restored_labels = {k: v for k, v in (body.get("metadata", {}).get("labels") or {})
                               .items() if v is not None}
            return _recovered("released", {"pod": name, "namespace": namespace,
                                           "restored_labels": restored_labels},
                              applied, before)
        return Outcome("not_isolated", {"pod": name, "namespace": namespace}, before, before)
    restored = json.loads(annotations.get(ORIGINAL_LABELS_ANNOTATION, "{}"))
    patch = {"metadata": {
        "resourceVersion": pod["metadata"]["resourceVersion"],
        "labels": {**restored, QUARANTINE_LABEL: None},
        "annotations": {ORIGINAL_LABELS_ANNOTATION: None, ISOLATED_AT_ANNOTATION: None},
    }}
    if dry_run:
        return Outcome("dry_run", {"pod_patch": patch, "patch_content_type": MERGE}, before)
    try:
        after = _send(cluster, journal,
                      request("PATCH", pod_path(namespace, name), patch, MERGE), before,
                      f"patch pod {namespace}/{name}", cluster.core.patch_namespaced_pod,
                      name, namespace, patch, _content_type=MERGE)
    except Conflict as exc:
        return release(cluster, namespace, name, expected_uid=expected_uid, dry_run=dry_run,
                       conflicts=_again(exc, conflicts, f"release pod {namespace}/{name}"),
                       journal=journal)
    return Outcome("released", {"pod": name, "namespace": namespace,
                                "restored_labels": restored}, before, summary(after))


def _removed_earlier(journal: Journal | None, found: Outcome, *, method: str, path: str,
                     namespace: str, name: str, expected_uid: str | None,
                     status: str) -> Outcome:
    """``found`` ends an eviction or deletion (the pod is gone, or another pod has its name):
    when an unanswered request of this step removed that very pod, say so."""
    if found.status not in ("already_gone", "target_changed"):
        return found
    for entry in _unanswered(journal, method, path, expected_uid):
        removed = (entry.get("before") or {}).get("uid")
        if found.status == "target_changed" and found.detail.get("found_uid") == removed:
            continue  # that pod is still there: the request did not remove it
        body = (entry.get("request") or {}).get("body") or {}
        options = body.get("deleteOptions", body) if isinstance(body, dict) else {}
        return _recovered(status, {"pod": name, "namespace": namespace,
                                   "grace_period_s": options.get("gracePeriodSeconds")},
                          entry, {"namespace": namespace, "name": name, "uid": removed,
                                  "gone": True})
    return found


def evict(cluster: Cluster, namespace: str, name: str, *, expected_uid: str | None,
          grace_period_s: int | None = None, dry_run: bool = False,
          journal: Journal | None = None) -> Outcome:
    found = _pinned_pod(cluster, namespace, name, expected_uid)
    if isinstance(found, Outcome):
        if dry_run:
            return found
        return _removed_earlier(journal, found, method="POST",
                                path=f"{pod_path(namespace, name)}/eviction",
                                namespace=namespace, name=name, expected_uid=expected_uid,
                                status="evicted")
    pod, before = found
    delete_options: dict[str, Any] = {"preconditions": {"uid": pod["metadata"]["uid"]}}
    if grace_period_s is not None:
        delete_options["gracePeriodSeconds"] = grace_period_s
    body = {"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": delete_options}
    if dry_run:
        return Outcome("dry_run", {"eviction": body}, before)
    try:
        _send(cluster, journal, request("POST", f"{pod_path(namespace, name)}/eviction", body),
              before, f"evict pod {namespace}/{name}",
              cluster.core.create_namespaced_pod_eviction, name, namespace, body)
    except NotFound:
        return Outcome("already_gone", {"pod": name, "namespace": namespace}, before)
    except Conflict as exc:
        return Outcome("target_changed", {"expected_uid": expected_uid, "error": str(exc)},
                       before)
    except Blocked as exc:
        budget = _BUDGET.search(json.dumps(exc.body))
        return Outcome("blocked_by_pdb", {"pod": name, "namespace": namespace,
                                          "budget": budget.group("name") if budget else None,
                                          "message": str(exc)}, before)
    return Outcome("evicted", {"pod": name, "namespace": namespace,
                               "grace_period_s": grace_period_s}, before)


def delete(cluster: Cluster, namespace: str, name: str, *, expected_uid: str | None,
           grace_period_s: int = 0, dry_run: bool = False,
           journal: Journal | None = None) -> Outcome:
    found = _pinned_pod(cluster, namespace, name, expected_uid)
    if isinstance(found, Outcome):
        if dry_run:
            return found
        return _removed_earlier(journal, found, method="DELETE",
                                path=pod_path(namespace, name), namespace=namespace,
                                name=name, expected_uid=expected_uid, status="deleted")
    pod, before = found
    options = {"gracePeriodSeconds": grace_period_s,
               "preconditions": {"uid": pod["metadata"]["uid"]}}
    if dry_run:
        return Outcome("dry_run", {"delete_options": options}, before)
    try:
        _send(cluster, journal, request("DELETE", pod_path(namespace, name), options), before,
              f"delete pod {namespace}/{name}", cluster.core.delete_namespaced_pod,
              name, namespace, body=options)
    except NotFound:
        return Outcome("already_gone", {"pod": name, "namespace": namespace}, before)
    except Conflict as exc:
        return Outcome("target_changed", {"expected_uid": expected_uid, "error": str(exc)},
                       before)
    return Outcome("deleted", {"pod": name, "namespace": namespace,
                               "grace_period_s": grace_period_s}, before)


def set_metadata(cluster: Cluster, namespace: str, name: str, *, field_name: str,
                 values: dict[str, str | None], expected_uid: str | None,
                 dry_run: bool = False, conflicts: int = 0,
                 journal: Journal | None = None) -> Outcome:
    """Merge labels or annotations (None removes a key)."""
    found = _pinned_pod(cluster, namespace, name, expected_uid)
    if isinstance(found, Outcome):
        return found
    pod, before = found
    current = pod["metadata"].get(field_name) or {}
    if all(current.get(k) == v for k, v in values.items()):
        applied = None if dry_run else _applied_earlier(journal, pod_path(namespace, name), pod)
        if applied is not None:
            return _recovered("updated", {field_name: copy.deepcopy(values)}, applied, before)
        return Outcome("unchanged", {field_name: copy.deepcopy(values)}, before, before)
    patch = {"metadata": {"resourceVersion": pod["metadata"]["resourceVersion"],
                          field_name: values}}
    if dry_run:
        return Outcome("dry_run", {"pod_patch": patch, "patch_content_type": MERGE}, before)
    try:
        after = _send(cluster, journal,
                      request("PATCH", pod_path(namespace, name), patch, MERGE), before,
                      f"patch pod {namespace}/{name}", cluster.core.patch_namespaced_pod,
                      name, namespace, patch, _content_type=MERGE)
    except Conflict as exc:
        return set_metadata(cluster, namespace, name, field_name=field_name, values=values,
                            expected_uid=expected_uid, dry_run=dry_run,
                            conflicts=_again(exc, conflicts,
                                             f"update pod {namespace}/{name} {field_name}"),
                            journal=journal)
    return Outcome("updated", {field_name: copy.deepcopy(values)}, before, summary(after))


def cordon(cluster: Cluster, node: str, *, dry_run: bool = False,
           journal: Journal | None = None) -> Outcome:
    current = cluster.call(f"get node {node}", cluster.core.read_node, node)
    before = {"name": node, "unschedulable": bool(current.get("spec", {}).get("unschedulable"))}
    if before["unschedulable"]:
        applied = None if dry_run else _applied_earlier(journal, node_path(node), current,
                                                        pinned=False)
        if applied is not None:
            return _recovered("cordoned", {"node": node}, applied, before)
        return Outcome("already_cordoned", {"node": node}, before, before)
    patch = {"spec": {"unschedulable": True}}
    if dry_run:
        return Outcome("dry_run", {"node_patch": patch, "patch_content_type": MERGE}, before)
    after = _send(cluster, journal, request("PATCH", node_path(node), patch, MERGE), before,
                  f"cordon node {node}", cluster.core.patch_node, node, patch,
                  _content_type=MERGE)
    return Outcome("cordoned", {"node": node}, before,
                   {"name": node, "unschedulable": bool(after.get("spec", {})
                                                        .get("unschedulable"))})
