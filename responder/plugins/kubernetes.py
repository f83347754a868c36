"""Kubernetes plug-ins: enrichment (pod_context) and actions (isolate, release, evict, delete,
label, annotate, cordon). Each declares the RBAC it needs; `drift-responder rbac` prints the sum.

The actions' audit records: ``kubernetes.intent`` before every cluster-changing request, written
ahead and committed on its own (run, step, attempt, action, target, the exact request, the
target's state it was decided on); then, with the step's result, ``kubernetes.before`` and
``kubernetes.after`` naming the intents they answer, or ``kubernetes.failed`` when the API
refused a request. A worker can die between a request and the commit of its result: the step's
next delivery finds the target already changed, finds the unanswered intent the target shows
applied, and records ``kubernetes.before``/``after`` with ``recovered: true`` and that intent's
seq — so the trail says which step changed the pod, even across the crash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from responder.kube import pods
from responder.kube.client import KubeError, NotFound
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


INTENT = "kubernetes.intent"
#: Records that answer intents (by ``intents``: this delivery's, or ``intent``: recovered).
ANSWERS = ("kubernetes.before", "kubernetes.after", "kubernetes.failed")
RECOVERED_NOTE = ("applied by an earlier request of this step whose outcome was never recorded "
                  "(its attempt died or failed before recording it)")


class StepJournal:
    """The step's audit trail as the :class:`pods.Journal` of one action: intents are written
    ahead through the step context; ``earlier`` reads back this step's intents for the same
    action that no record answers yet."""

    def __init__(self, ctx: StepContext, action: str, target: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.action = action
        self.target = dict(target)
        #: seqs of the intents this delivery wrote, answered by the records of its result.
        self.written: list[int] = []
        #: ... and of those the API refused (nothing applied).
        self.refusals: list[int] = []

    def intend(self, request: dict[str, Any], before: dict[str, Any] | None) -> None:
        target = dict(self.target)
        if before is not None and before.get("uid"):
            target["uid"] = before["uid"]
        self.written.append(self.ctx.intend(INTENT, {
            "action": self.action, "target": target, "request": request, "before": before}))

    def refused(self, error: Exception) -> None:
        if self.written and self.written[-1] not in self.refusals:
            self.refusals.append(self.written[-1])

    def earlier(self) -> Sequence[Mapping[str, Any]]:
        recalled = self.ctx.recall((INTENT, *ANSWERS))
        answered: set[int] = set()
        for entry in recalled:
            if entry.kind != INTENT:
                answered.update(int(s) for s in entry.data.get("intents") or ())
                if entry.data.get("intent") is not None:
                    answered.add(int(entry.data["intent"]))
        return [{**entry.data, "seq": entry.seq} for entry in reversed(recalled)
                if entry.kind == INTENT and entry.seq not in answered
                and entry.data.get("action") == self.action]


def _act(ctx: StepContext, journal: StepJournal,
         call: Callable[[], pods.Outcome]) -> pods.Outcome:
    """Run the action. When it fails, the requests the API refused (nothing applied) are
    answered by ``kubernetes.failed``, so that no later delivery takes them for changes it
    made; the others stay unanswered: the API may have applied them before the failure."""
    try:
        return call()
    except KubeError as exc:
        if journal.refusals:
            ctx.audit("kubernetes.failed", {"action": journal.action,
                                            "intents": list(journal.refusals),
                                            "status": exc.status, "error": str(exc)[:1000]})
        raise


def _record(ctx: StepContext, action: str, outcome: pods.Outcome, dry_run: bool,
            journal: StepJournal | None = None) -> ActionResult:
    answers: dict[str, Any] = {"intents": list(journal.written)} \
        if journal is not None and journal.written else {}
    if outcome.recovered is not None:
        # Nothing left to do because an earlier delivery did it and died before recording it:
        # record that change now, as that delivery would have, naming its intent.
        earlier = outcome.recovered
        recovered = {"recovered": True, "intent": earlier.get("seq"), "note": RECOVERED_NOTE,
                     **{f"intent_{k}": earlier[k] for k in ("attempt", "worker")
                        if earlier.get(k) is not None}}
        ctx.audit("kubernetes.before", {"action": action, "state": outcome.before,
                                        **recovered, **answers})
        ctx.audit("kubernetes.after", {"action": action, "state": outcome.after,
                                       **recovered, **answers})
        detail = {**outcome.detail, "recovered": {
            "intent": earlier.get("seq"), "attempt": earlier.get("attempt"),
            "note": RECOVERED_NOTE}}
        return ActionResult(status=outcome.status, dry_run=dry_run, detail=detail)
    if outcome.before is not None:
        ctx.audit("kubernetes.before", {"action": action, "state": outcome.before, **answers})
    if outcome.after is not None and outcome.after != outcome.before:
        ctx.audit("kubernetes.after", {"action": action, "state": outcome.after, **answers})
    return ActionResult(status=outcome.status, dry_run=dry_run, detail=outcome.detail)


def _journal(ctx: StepContext, action: str, target: PodTarget) -> StepJournal:
    return StepJournal(ctx, action, {"namespace": target.namespace, "pod": target.pod,
                                     "uid": target.uid})


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
    journal = _journal(ctx, "isolate", params)
    outcome = _act(ctx, journal, lambda: pods.isolate(
        runtime.current().cluster(), params.namespace, params.pod,
        incident_id=str(ctx.incident.get("id", "manual")), now=format_ns(now_ns()),
        expected_uid=params.uid, strip=configured or None, dry_run=dry_run, journal=journal))
    return _record(ctx, "isolate", outcome, dry_run, journal)


@plugin("kubernetes.release",
        description="Undo isolate: restore the removed labels and drop the quarantine label "
                    "(the namespace's quarantine policy stays for other pods).",
        params=PodTarget, result=ActionResult, changes_cluster=True,
        rbac=(READ_POD, PATCH_POD),
        example={"namespace": "{{ incident.namespace }}", "pod": "{{ incident.pod }}"},
        default_timeout=30)
def release(ctx: StepContext, params: PodTarget) -> ActionResult:
    dry_run = _guard(params)
    journal = _journal(ctx, "release", params)
    outcome = _act(ctx, journal, lambda: pods.release(
        runtime.current().cluster(), params.namespace, params.pod, expected_uid=params.uid,
        dry_run=dry_run, journal=journal))
    return _record(ctx, "release", outcome, dry_run, journal)


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
    journal = _journal(ctx, "evict", params)
    outcome = _act(ctx, journal, lambda: pods.evict(
        runtime.current().cluster(), params.namespace, params.pod, expected_uid=params.uid,
        grace_period_s=params.grace_period_seconds, dry_run=dry_run, journal=journal))
    return _record(ctx, "evict", outcome, dry_run, journal)


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
    journal = _journal(ctx, "delete", params)
    outcome = _act(ctx, journal, lambda: pods.delete(
        runtime.current().cluster(), params.namespace, params.pod, expected_uid=params.uid,
        grace_period_s=params.grace_period_seconds, dry_run=dry_run, journal=journal))
    return _record(ctx, "delete", outcome, dry_run, journal)


class MetadataParams(PodTarget):
    values: dict[str, str | None] = Field(min_length=1, description="null removes a key.")


def _metadata(field_name: str) -> Any:
    def run(ctx: StepContext, params: MetadataParams) -> ActionResult:
        dry_run = _guard(params)
        journal = _journal(ctx, field_name, params)
        outcome = _act(ctx, journal, lambda: pods.set_metadata(
            runtime.current().cluster(), params.namespace, params.pod, field_name=field_name,
            values=params.values, expected_uid=params.uid, dry_run=dry_run, journal=journal))
        return _record(ctx, field_name, outcome, dry_run, journal)

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
    journal = StepJournal(ctx, "cordon", {"node": params.node})
    outcome = _act(ctx, journal, lambda: pods.cordon(
        runtime.current().cluster(), params.node, dry_run=dry_run, journal=journal))
    return _record(ctx, "cordon", outcome, dry_run, journal)

