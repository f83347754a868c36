"""One container of a pod, as the evidence fallback needs it: its name (to exec into), its image
and image digest (to pull the image's own file list), and the pod's pull secrets (to pull it)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from responder.kube import pods
from responder.kube.client import Cluster, ExecOutput, NotFound


class ContainerGone(LookupError):
    pass


@dataclass(frozen=True)
class ContainerRef:
    namespace: str
    pod: str
    name: str
    image: str
    image_id: str
    node: str | None
    pull_secrets: list[str] = field(default_factory=list)


def find(cluster: Cluster, namespace: str, pod: str, container_id: str) -> ContainerRef:
    """The pod's container with this id (12-char or full); ContainerGone when the pod or the
    container is no longer there (the pod was replaced: its evidence is gone with it)."""
    try:
        found = pods.get_pod(cluster, namespace, pod)
    except NotFound:
        raise ContainerGone(f"pod {namespace}/{pod} no longer exists") from None
    wanted = container_id.split("://", 1)[-1].lower()
    status: dict[str, Any] = found.get("status") or {}
    for entry in (status.get("containerStatuses") or []) + \
            (status.get("initContainerStatuses") or []):
        cid = str(entry.get("containerID") or "").split("://")[-1].lower()
        if cid and wanted and cid.startswith(wanted):
            spec = found.get("spec") or {}
            return ContainerRef(
                namespace=namespace, pod=pod, name=str(entry.get("name")),
                image=str(entry.get("image") or ""), image_id=str(entry.get("imageID") or ""),
                node=spec.get("nodeName"),
                pull_secrets=[str(s.get("name")) for s in spec.get("imagePullSecrets") or []
                              if s.get("name")])
    raise ContainerGone(f"pod {namespace}/{pod} no longer runs container {wanted[:12]}")


def exec_in(cluster: Cluster, ref: ContainerRef, argv: list[str], *,
            timeout_s: float = 60.0, max_bytes: int = 64 << 20) -> ExecOutput:
    return cluster.exec(ref.namespace, ref.pod, ref.name, argv, timeout_s=timeout_s,
                        max_bytes=max_bytes)


def pull_secret(cluster: Cluster, namespace: str, name: str) -> bytes | None:
    """The ``.dockerconfigjson`` of a pull secret (None when absent or of another type)."""
    try:
        secret = cluster.call(f"get secret {namespace}/{name}",
                              cluster.core.read_namespaced_secret, name, namespace)
    except NotFound:
        return None
    data = (secret or {}).get("data") or {}
    encoded = data.get(".dockerconfigjson") or data.get(".dockercfg")
    return base64.b64decode(encoded) if encoded else None
