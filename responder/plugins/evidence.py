"""Evidence plug-ins: the container's process tree and its filesystem diff against the image.

Both run on the node agent of the container's node (``node_routed``): the host's ``/proc`` and
overlay directories are the view the suspect container cannot tamper with (high assurance).
When no agent is alive on that node the step runs on a worker and, unless ``via: node`` forbids
it, falls back to an exec into the container compared with the image pulled from its registry
(low assurance, and said so). Every artifact is stored content-addressed and recorded in the
audit trail (``evidence.collected``) with the step's result, before any later step can run.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from responder.agent import collecting, overlay, processes
from responder.agent.models import (
    ArtifactRef,
    DiffEntry,
    FilesystemDiff,
    FilesystemDiffResult,
    ProcessTree,
    ProcessTreeResult,
)
from responder.models.times import format_ns, now_ns
from responder.plugins import fallback, runtime
from responder.plugins.registry import RbacRule, StepContext, plugin
from responder.store.artifacts import ArtifactStore

#: The exec fallback reads the pod, execs into it and may read its imagePullSecrets.
EXEC_RBAC = (RbacRule(("",), ("pods",), ("get",)), RbacRule(("",), ("pods/exec",), ("create",)))
NOTABLE_MAX = 20
FLAGGED_MAX = 10


class NoAgent(Exception):
    """The step may not fall back, and no agent on the node ran it."""


class EvidenceParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    container_id: str = Field(min_length=12, max_length=140, description="12-char or full id "
                              "(a runtime prefix such as containerd:// is accepted).")
    node: str | None = Field(default=None, max_length=253, description="The container's node: "
                             "routes the step to that node's agent.")
    via: Literal["auto", "node", "exec"] = Field(
        default="auto", description="node: only the node agent (fail when there is none); "
        "exec: only the exec fallback; auto: the agent, else exec.")
    namespace: str | None = Field(default=None, max_length=253,
                                  description="For the exec fallback.")
    pod: str | None = Field(default=None, max_length=253, description="For the exec fallback.")

    @field_validator("container_id")
    @classmethod
    def _strip_runtime(cls, value: str) -> str:
        return value.split("://", 1)[-1].strip()


class ProcessTreeParams(EvidenceParams):
    flag_pid: int | None = Field(default=None, description="Falco proc.pid (host pid).")
    flag_vpid: int | None = Field(default=None, description="Falco proc.vpid.")
    flag_exe: str | None = Field(default=None, max_length=4096,
                                 description="Falco proc.exepath.")

    @field_validator("flag_pid", "flag_vpid", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value in ("", "None", "<NA>") else value


class FilesystemDiffParams(EvidenceParams):
    flag_paths: list[str] = Field(default_factory=list, max_length=50, description="Paths the "
                                  "alert names (proc.exepath, evt.arg.filename).")
    quarantine: bool = Field(default=False, description="Keep a copy (0400) of each added or "
                             "changed executable in the artifact store.")

    @field_validator("flag_paths", mode="before")
    @classmethod
    def _drop_empty(cls, value: object) -> object:
        if isinstance(value, list):
            return [v for v in value if v not in (None, "", "None", "<NA>")]
        return value


def _store() -> ArtifactStore:
    return ArtifactStore(runtime.current().settings.effective_artifacts_dir)


def _collector_node(params: EvidenceParams) -> str | None:
    agent = runtime.current().agent
    return agent.node if agent is not None else params.node


def _keep(ctx: StepContext, *, name: str, data: bytes, collector: str, method: str,
          node: str | None, media_type: str = "application/json") -> ArtifactRef:
    stored = _store().put_bytes(data)
    _audit_artifact(ctx, sha256=stored.sha256, size=stored.size, name=name,
                    collector=collector, method=method, node=node, media_type=media_type)
    return ArtifactRef(sha256=stored.sha256, size=stored.size, name=name, media_type=media_type)


def _audit_artifact(ctx: StepContext, *, sha256: str, size: int, name: str, collector: str,
                    method: str, node: str | None, media_type: str) -> None:
    ctx.audit("evidence.collected", {
        "sha256": sha256, "size": size, "name": name, "media_type": media_type,
        "collector": collector, "method": method, "node": node,
        "collected_by": socket.gethostname(), "time": format_ns(now_ns())})


def _located_on_node(params: EvidenceParams) -> tuple[runtime.NodeAgent,
                                                      collecting.Located] | None:
    """The container as this node's agent sees it; None when the exec fallback is to run."""
    agent = runtime.current().agent
    if agent is not None and params.via != "exec":
        if params.node and params.node != agent.node:
            raise NoAgent(f"this agent serves node {agent.node!r}, the step asks for "
                          f"{params.node!r}")
        return agent, collecting.locate(params.container_id, proc_root=agent.proc_root,
                                        host_root=agent.host_root)
    if params.via == "node":
        raise NoAgent(f"no live node agent on {params.node or '(unknown node)'} ran this step, "
                      "and via: node forbids the exec fallback")
    if not (params.namespace and params.pod):
        raise NoAgent(f"no live node agent on {params.node or '(unknown node)'}, and the exec "
                      "fallback needs the pod's namespace and name")
    return None


@plugin("evidence.process_tree",
        description="The container's processes from the node's /proc (host and in-container "
                    "pids, user, start time, cmdline, executable with deleted/memfd detection "
                    "and sha256, whether it lies in the upper layer), the alert's process "
                    "flagged; stored as a hashed artifact. Falls back to exec (low assurance).",
        params=ProcessTreeParams, result=ProcessTreeResult, node_routed=True,
        rbac=EXEC_RBAC,
        example={"container_id": "{{ alert.container_full_id or alert.container_id }}",
                 "node": "{{ incident.node }}", "namespace": "{{ incident.namespace }}",
                 "pod": "{{ incident.pod }}",
                 "flag_pid": "{{ alert.fields['proc.pid'] | default(none) }}",
                 "flag_exe": "{{ alert.fields['proc.exepath'] | default(none) }}"},
        default_timeout=60)
def process_tree(ctx: StepContext, params: ProcessTreeParams) -> ProcessTreeResult:
    on_node = _located_on_node(params)
    settings = runtime.current().settings
    limits = processes.ProcessLimits(max_processes=settings.evidence_max_processes)
    if on_node:
        agent, located = on_node
        tree = collecting.process_tree(located, proc_root=agent.proc_root,
                                       flag_pid=params.flag_pid, flag_vpid=params.flag_vpid,
                                       flag_exe=params.flag_exe, limits=limits)
    else:
        tree = fallback.process_tree(params, limits)
    return _tree_result(ctx, tree, params)


def _tree_result(ctx: StepContext, tree: ProcessTree,
                 params: ProcessTreeParams) -> ProcessTreeResult:
    node = _collector_node(params)
    ref = _keep(ctx, name=f"process-tree-{tree.container_id[:12]}.json",
                data=orjson.dumps(tree.model_dump(mode="json"), option=orjson.OPT_INDENT_2),
                collector="evidence.process_tree", method=tree.method, node=node)
    return ProcessTreeResult(
        method=tree.method, assurance=tree.assurance, node=node, container_id=tree.container_id,
        processes_total=len(tree.processes),
        flagged=[p for p in tree.processes if p.flagged][:FLAGGED_MAX],
        excerpt=processes.excerpt(tree), artifact=ref, truncated=tree.truncated)


@plugin("evidence.filesystem_diff",
        description="What changed in the container since its image (docker diff semantics: A/C/"
                    "D from the overlay upper layer, whiteouts and opaque directories), with "
                    "size, mode, owner, sha256, executable/ELF/script for added and changed "
                    "files, the alert's paths flagged, optional quarantine of dropped "
                    "executables; stored as a hashed artifact. Falls back to exec + registry "
                    "(low assurance).",
        params=FilesystemDiffParams, result=FilesystemDiffResult, node_routed=True,
        # Reading pods' imagePullSecrets needs `get secrets`, deliberately not in the default
        # role (cluster-wide secret reads): grant it, or set DRIFT_REGISTRY_CREDENTIALS.
        rbac=EXEC_RBAC,
        example={"container_id": "{{ alert.container_full_id or alert.container_id }}",
                 "node": "{{ incident.node }}", "namespace": "{{ incident.namespace }}",
                 "pod": "{{ incident.pod }}",
                 "flag_paths": ["{{ alert.fields['proc.exepath'] | default(none) }}",
                                "{{ alert.fields['evt.arg.filename'] | default(none) }}"],
                 "quarantine": True},
        default_timeout=120)
def filesystem_diff(ctx: StepContext, params: FilesystemDiffParams) -> FilesystemDiffResult:
    on_node = _located_on_node(params)
    settings = runtime.current().settings
    node = _collector_node(params)
    quarantined: list[ArtifactRef] = []
    if on_node:
        _, located = on_node
        limits = overlay.DiffLimits(
            max_entries=settings.evidence_max_entries,
            hash_file_max_bytes=settings.evidence_hash_file_max_bytes,
            hash_total_max_bytes=settings.evidence_hash_total_max_bytes,
            quarantine=params.quarantine,
            quarantine_max_bytes=settings.evidence_quarantine_max_bytes)

        upperdir = located.overlay.upperdir if located.overlay else Path("/nonexistent")

        def keep(path: Path, entry: DiffEntry) -> str | None:
            # The upper layer is attacker-written: open it following no symlink on the way.
            try:
                source = overlay.open_upper_file(upperdir, path)
            except (OSError, ValueError):
                return None
            with source:
                try:
                    stored = _store().put_file(
                        source, max_bytes=settings.evidence_quarantine_max_bytes)
                except ValueError:
                    return None
            name = f"quarantine{entry.path}"[:256]
            _audit_artifact(ctx, sha256=stored.sha256, size=stored.size, name=name,
                            collector="evidence.filesystem_diff", method="node-agent",
                            node=node, media_type="application/octet-stream")
            quarantined.append(ArtifactRef(sha256=stored.sha256, size=stored.size, name=name,
                                           media_type="application/octet-stream"))
            return stored.sha256

        diff = collecting.filesystem_diff(located, flag_paths=params.flag_paths, limits=limits,
                                          quarantine=keep if params.quarantine else None)
    else:
        diff = fallback.filesystem_diff(params, max_entries=settings.evidence_max_entries)
    return _diff_result(ctx, diff, node, quarantined)


def _diff_result(ctx: StepContext, diff: FilesystemDiff, node: str | None,
                 quarantined: list[ArtifactRef]) -> FilesystemDiffResult:
    ref = _keep(ctx, name=f"filesystem-diff-{diff.container_id[:12]}.json",
                data=orjson.dumps(diff.model_dump(mode="json"), option=orjson.OPT_INDENT_2),
                collector="evidence.filesystem_diff", method=diff.method, node=node)
    flagged = [c for c in diff.changes if c.flagged]
    executables = [c for c in diff.changes if not c.flagged and c.kind != "D" and
                   (c.executable or c.elf or c.script) and c.type == "file"]
    return FilesystemDiffResult(
        method=diff.method, assurance=diff.assurance, node=node, container_id=diff.container_id,
        upperdir=diff.upperdir, summary=diff.summary,
        notable=[*flagged, *executables][:NOTABLE_MAX], artifact=ref, quarantined=quarantined,
        truncated=diff.truncated)
