"""Manual pod actions (isolate, release, evict): the one code path behind
``drift-responder pods ...`` and Slack's ``/drift`` commands. The same plug-ins as playbooks, the
same audit records (the plug-in's ``kubernetes.intent``, written ahead, ``kubernetes.before``/
``after`` and ``manual.<action>``), with the actor the caller names (``cli:<user>``,
``slack:<user id>``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine

from responder.kube.client import KubeError
from responder.plugins import runtime
from responder.plugins.kubernetes import ProtectedNamespace
from responder.plugins.registry import load_all
from responder.settings import Settings
from responder.store import audit
from responder.workers.journaling import CommittingContext

ACTIONS = ("isolate", "release", "evict")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_POD = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class BadTarget(ValueError):
    pass


@dataclass(frozen=True)
class PodActionResult:
    target: str
    payload: dict[str, Any]
    failed: bool


def parse_target(target: str) -> tuple[str, str]:
    """``NAMESPACE/POD`` with Kubernetes names, else :class:`BadTarget`."""
    namespace, _, pod = target.partition("/")
    if not _NAMESPACE.match(namespace) or not _POD.match(pod):
        raise BadTarget(f"expected NAMESPACE/POD, got {target!r}")
    return namespace, pod


def run_pod_action(settings: Settings, engine: Engine, action: str, target: str,
                   params: dict[str, Any], *, actor: str,
                   incident_id: str | None = None) -> PodActionResult:
    """Run ``kubernetes.<action>`` on NAMESPACE/POD and append its audit records. ``failed``
    when it was blocked (budget, changed target, protected namespace, permission)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    namespace, pod = parse_target(target)
    if runtime.current().settings is not settings:
        runtime.install(settings)
    plugin = load_all(settings.plugin_module_list)[f"kubernetes.{action}"]
    # Intents are committed ahead of each request, as the caller; the rest with the result.
    step = CommittingContext("manual", action, 1, {"id": incident_id or "manual"}, {},
                             engine=engine, actor=actor, incident_id=incident_id,
                             look_back=False)
    try:
        result = plugin.run(step, plugin.params.model_validate(
            {"namespace": namespace, "pod": pod, **params}))
        payload = result.model_dump(mode="json")
        failed = payload["status"] in ("blocked_by_pdb", "target_changed")
    except (KubeError, ProtectedNamespace, ValidationError) as exc:
        payload, failed = {"status": "error", "error": str(exc)}, True
    entries = [audit.AuditEntry(kind=kind, actor=actor, incident_id=incident_id,
                                data={"target": target, **data}) for kind, data in step.records]
    entries.append(audit.AuditEntry(kind=f"manual.{action}", actor=actor,
                                    incident_id=incident_id,
                                    data={"target": target, "result": payload}))
    with engine.begin() as conn:
        audit.append(conn, entries)
    return PodActionResult(target, payload, failed)
