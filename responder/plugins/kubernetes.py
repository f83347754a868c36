"""Kubernetes plug-ins: enrichment (pod_context) and actions (isolate, release, evict, delete,
label, annotate, cordon). Each declares the RBAC it needs; `drift-responder rbac` prints the sum.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from responder.kube import pods
from responder.kube.client import NotFound
from responder.models.times import format_ns, now_ns
from responder.plugins import runtime
from responder.plugins.registry import RbacRule, StepContext, plugin

READ_POD = RbacRule(("",), ("pods",), ("get",))
LIST_PODS = RbacRule(("",), ("pods",), ("list",))
PATCH_POD = RbacRule(("",), ("pods",), ("patch",))
READ_OWNERS = (RbacRule(("apps",), ("replicasets", "deployments", "statefulsets", "daemonsets"),
                        ("get",)), RbacRule(("batch",), ("jobs",), ("get",)))
LIST_SERVICES = RbacRule(("",), ("services",), ("list",))
LIST_POLICIES = RbacRule(("networking.k8s.io",), ("networkpolicies",), ("list",))
CREATE_POLICY = RbacRule(("networking.k8s.io",), ("networkpolicies",),
                         ("create", "get", "update"))
LIST_BUDGETS = RbacRule(("policy",), ("poddisruptionbudgets",), ("list",))
EVICT = RbacRule(("",), ("pods/eviction",), ("create",))
DELETE_POD = RbacRule(("",), ("pods",), ("delete",))
NODES = RbacRule(("",), ("nodes",), ("get", "patch"))


class ProtectedNamespace(Exception):
    pass


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PodTarget(_Params):
    namespace: str = Field(min_length=1, max_length=253)
    pod: str = Field(min_length=1, max_length=253)
    uid: str | None = Field(default=None, description="The pod UID that was approved; another "
                            "pod of the same name gets target_changed and nothing is done.")
    dry_run: bool | None = Field(default=None, description="Only say what would be sent "
                                 "(default: DRIFT_DRY_RUN).")
    allow_protected: bool = Field(default=False, description="Allow protected namespaces.")


class ActionResult(BaseModel):
    status: str
    dry_run: bool = False
    detail: dict[str, Any] = Field(default_factory=dict)


def _guard(target: PodTarget) -> bool:
    """Refuse protected namespaces; return the effective dry-run flag."""
    settings = runtime.current().settings
    if target.namespace in settings.protected_namespace_set and not target.allow_protected:
        raise ProtectedNamespace(f"namespace {target.namespace!r} is protected: the step must "
                                 "say allow_protected: true")
    return settings.dry_run if target.dry_run is None else target.dry_run


def _record(ctx: StepContext, action: str, outcome: pods.Outcome, dry_run: bool) -> ActionResult:
    if outcome.before is not None:
        ctx.audit("kubernetes.before", {"action": action, "state": outcome.before})
    if outcome.after is not None and outcome.after != outcome.before:
        ctx.audit("kubernetes.after", {"action": action, "state": outcome.after})
    return ActionResult(status=outcome.status, dry_run=dry_run, detail=outcome.detail)


class ContextParams(_Params):
    namespace: str | None = None
    pod: str | None = None
    container_id: str | None = Field(default=None, description="Used when the pod name is "
                                     "unknown: the pod running this container.")
    node: str | None = None


class ContextResult(BaseModel):
    found: bool
    uid: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None


@plugin("kubernetes.pod_context",
        description="Resolve the alert's pod (by name, or by container id on its node): UID, "
                    "owner chain, images and digests, labels, and the Services, NetworkPolicies "
                    "and PodDisruptionBudgets that select it. Read-only.",
        params=ContextParams, result=ContextResult,
        rbac=(READ_POD, LIST_PODS, *READ_OWNERS, LIST_SERVICES, LIST_POLICIES, LIST_BUDGETS),
        example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}",
                 "container_id": "{{ alert.container_id }}", "node": "{{ incident.node }}"},
        default_timeout=30)
def pod_context(ctx: StepContext, params: ContextParams) -> ContextResult:
    cluster = runtime.current().cluster()
    pod: dict[str, Any] | None = None
    if params.namespace and params.pod:
        try:
            pod = pods.get_pod(cluster, params.namespace, params.pod)
        except NotFound:
            pod = None
    if pod is not None and params.container_id and not pods.runs_container(
            pod, params.container_id):
        # Same name, other containers: the pod was recreated since the alert (a StatefulSet's
        # web-0). Acting on it would quarantine a clean pod.
        return ContextResult(found=False, uid=pod["metadata"]["uid"],
                             reason=f"pod {params.namespace}/{params.pod} no longer runs "
                                    f"container {params.container_id}: it was replaced")
    if pod is None and params.container_id:
        pod = pods.find_pod_by_container(cluster, params.container_id, params.node)
    if pod is None:
        return ContextResult(found=False, reason="no such pod")
    return ContextResult(found=True, uid=pod["metadata"]["uid"],
                         context=pods.context(cluster, pod))


class IsolateParams(PodTarget):
    strip_labels: list[str] | None = Field(default=None, description="Labels to remove "
                                           "(default: what its controller and Services select).")


@plugin("kubernetes.isolate",
        description="Quarantine a pod: remove the labels that put it in its controller and "
                    "Services (a clean replacement starts; the pod stays for forensics), add "
                    "drift-responder.io/quarantine=<incident>, ensure the namespace's deny-all "
                    "NetworkPolicy, annotate, and report what still selects the pod.",
        params=IsolateParams, result=ActionResult, changes_cluster=True,
        rbac=(READ_POD, PATCH_POD, *READ_OWNERS, LIST_SERVICES, LIST_POLICIES, CREATE_POLICY,
              LIST_BUDGETS),
        example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}",
                 "uid": "{{ steps.context.result.uid }}"}, default_timeout=60)
def isolate(ctx: StepContext, params: IsolateParams) -> ActionResult:
    dry_run = _guard(params)
    settings = runtime.current().settings
    configured = params.strip_labels or [k.strip() for k in
                                         settings.isolate_strip_labels.split(",") if k.strip()]
    outcome = pods.isolate(runtime.current().cluster(), params.namespace, params.pod,
                           incident_id=str(ctx.incident.get("id", "manual")),
                           now=format_ns(now_ns()), expected_uid=params.uid,
                           strip=configured or None, dry_run=dry_run)
    return _record(ctx, "isolate", outcome, dry_run)


@plugin("kubernetes.release",
        description="Undo isolate: restore the removed labels and drop the quarantine label "
                    "(the namespace's quarantine policy stays for other pods).",
        params=PodTarget, result=ActionResult, changes_cluster=True,
        rbac=(READ_POD, PATCH_POD),
        example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}"},
        default_timeout=30)
def release(ctx: StepContext, params: PodTarget) -> ActionResult:
    dry_run = _guard(params)
    outcome = pods.release(runtime.current().cluster(), params.namespace, params.pod,
                           expected_uid=params.uid, dry_run=dry_run)
    return _record(ctx, "release", outcome, dry_run)


class EvictParams(PodTarget):
    grace_period_seconds: int | None = Field(default=None, ge=0, le=3600)


@plugin("kubernetes.evict",
        description="Evict the pod through the policy/v1 Eviction API (respects "
                    "PodDisruptionBudgets: blocked_by_pdb names the budget; a pod already gone "
                    "is success).",
        params=EvictParams, result=ActionResult, changes_cluster=True,
        rbac=(READ_POD, EVICT),
        example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}",
                 "uid": "{{ steps.context.result.uid }}", "grace_period_seconds": 30},
        default_timeout=60)
def evict(ctx: StepContext, params: EvictParams) -> ActionResult:
    dry_run = _guard(params)
    outcome = pods.evict(runtime.current().cluster(), params.namespace, params.pod,
                         expected_uid=params.uid, grace_period_s=params.grace_period_seconds,
                         dry_run=dry_run)
    return _record(ctx, "evict", outcome, dry_run)


class DeleteParams(PodTarget):
    grace_period_seconds: int = Field(default=0, ge=0, le=3600,
                                      description="0 forces: no graceful shutdown.")


@plugin("kubernetes.delete",
        description="Delete the pod, ignoring disruption budgets (force with grace 0). Needs its "
                    "own approval: lint requires an `if` on an approval's chosen option.",
        params=DeleteParams, result=ActionResult, changes_cluster=True, needs_own_approval=True,
        rbac=(READ_POD, DELETE_POD),
        example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}",
                 "uid": "{{ steps.context.result.uid }}", "grace_period_seconds": 0},
        default_timeout=60)
def delete(ctx: StepContext, params: DeleteParams) -> ActionResult:
    dry_run = _guard(params)
    outcome = pods.delete(runtime.current().cluster(), params.namespace, params.pod,
                          expected_uid=params.uid, grace_period_s=params.grace_period_seconds,
                          dry_run=dry_run)
    return _record(ctx, "delete", outcome, dry_run)


class MetadataParams(PodTarget):
    values: dict[str, str | None] = Field(min_length=1, description="null removes a key.")


def _metadata(field_name: str) -> Any:
    def run(ctx: StepContext, params: MetadataParams) -> ActionResult:
        dry_run = _guard(params)
        outcome = pods.set_metadata(runtime.current().cluster(), params.namespace, params.pod,
                                    field_name=field_name, values=params.values,
                                    expected_uid=params.uid, dry_run=dry_run)
        return _record(ctx, field_name, outcome, dry_run)

    return run


plugin("kubernetes.label", description="Set or remove pod labels.", params=MetadataParams,
       result=ActionResult, changes_cluster=True, rbac=(READ_POD, PATCH_POD),
       example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}",
                "values": {"security.example.com/suspect": "true"}},
       default_timeout=30)(_metadata("labels"))
plugin("kubernetes.annotate", description="Set or remove pod annotations.",
       params=MetadataParams, result=ActionResult, changes_cluster=True,
       rbac=(READ_POD, PATCH_POD),
       example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}",
                "values": {"security.example.com/incident": "{{ incident.id }}"}},
       default_timeout=30)(_metadata("annotations"))


class CordonParams(_Params):
    node: str = Field(min_length=1, max_length=253)
    dry_run: bool | None = None


@plugin("kubernetes.cordon", description="Mark the node unschedulable (no new pods land on "
        "it while it is investigated).", params=CordonParams, result=ActionResult,
        changes_cluster=True, rbac=(NODES,), example={"node": "{{ incident.node }}"},
        default_timeout=30)
def cordon(ctx: StepContext, params: CordonParams) -> ActionResult:
    settings = runtime.current().settings
    dry_run = settings.dry_run if params.dry_run is None else params.dry_run
    outcome = pods.cordon(runtime.current().cluster(), params.node, dry_run=dry_run)
    if outcome.before is not None:
        ctx.audit("kubernetes.before", {"action": "cordon", "state": outcome.before})
    if outcome.after is not None and outcome.after != outcome.before:
        ctx.audit("kubernetes.after", {"action": "cordon", "state": outcome.after})
    return ActionResult(status=outcome.status, dry_run=dry_run, detail=outcome.detail)

