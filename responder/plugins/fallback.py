"""The evidence fallback when no node agent serves the container's node (low assurance).

An exec into the suspect container with a fixed argv (never a shell string built from alert
fields) lists its processes and files; the file list is compared with the image's own, pulled
from its registry by the digest the pod runs. The container can lie to an exec, so the results
say ``assurance: low`` and ``method: exec``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from responder.agent.models import FilesystemDiff, ProcessTree
from responder.agent.processes import ProcessLimits
from responder.images import listing, references, registry
from responder.kube import containers
from responder.kube.client import Cluster, ExecOutput, KubeError
from responder.plugins import runtime

log = structlog.get_logger("drift.evidence")

if TYPE_CHECKING:
    from responder.plugins.evidence import EvidenceParams, FilesystemDiffParams, ProcessTreeParams


class FallbackFailed(RuntimeError):
    pass


def _target(params: EvidenceParams) -> tuple[Cluster, containers.ContainerRef]:
    if not (params.namespace and params.pod):  # the plug-in checks before it falls back
        raise FallbackFailed("the exec fallback needs the pod's namespace and name")
    cluster = runtime.current().cluster()
    return cluster, containers.find(cluster, params.namespace, params.pod, params.container_id)


def _exec_first(cluster: Cluster, ref: containers.ContainerRef,
                attempts: list[tuple[str, ...]]) -> tuple[int, ExecOutput]:
    """Run the first fixed argv that works (GNU tools, then busybox/sh); the index says which."""
    problems: list[str] = []
    for index, argv in enumerate(attempts):
        out = containers.exec_in(cluster, ref, list(argv))
        if out.stdout and out.returncode in (0, 1):  # 1: some /proc entries vanished meanwhile
            return index, out
        problems.append(f"{argv[0]}: exit {out.returncode}: "
                        f"{out.stderr.decode('utf-8', 'replace').strip()[:200]}")
    raise FallbackFailed(f"exec in {ref.namespace}/{ref.pod} container {ref.name} found no "
                         f"usable tools (distroless image?): {'; '.join(problems)}")


def process_tree(params: ProcessTreeParams, limits: ProcessLimits) -> ProcessTree:
    cluster, ref = _target(params)
    _, out = _exec_first(cluster, ref, [listing.PROCESSES_ARGV, listing.PROCESSES_ARGV_SH])
    # Inside the container pids are its own: Falco's proc.vpid names the process there.
    return listing.parse_processes(out.stdout, container_id=params.container_id,
                                   flag_pid=params.flag_vpid, flag_exe=params.flag_exe,
                                   max_processes=limits.max_processes)


def filesystem_diff(params: FilesystemDiffParams, *, max_entries: int) -> FilesystemDiff:
    cluster, ref = _target(params)
    which, out = _exec_first(cluster, ref, [listing.FILES_ARGV, listing.FILES_ARGV_BUSYBOX])
    listed = listing.parse_files(out.stdout, busybox=which == 1)
    image = _image_reference(ref)
    settings = runtime.current().settings
    options = registry.RegistryOptions(
        insecure_registries=frozenset(settings.insecure_registry_set),
        ca_bundle=settings.registry_ca_bundle, max_download_bytes=settings.registry_max_bytes)
    pulled = registry.pull_image_files(
        image, credentials=_credentials(cluster, ref, image), options=options,
        plain_http=image.registry in settings.insecure_registry_set)
    return listing.diff_against_image(listed, pulled.files, container_id=params.container_id,
                                      flag_paths=params.flag_paths, max_entries=max_entries)


def _image_reference(ref: containers.ContainerRef) -> references.ImageReference:
    """By the digest the pod runs (imageID), never by tag: a tag may have moved since."""
    try:
        return references.pod_image_reference(ref.image, ref.image_id or None)
    except references.ImageReferenceError as exc:
        raise FallbackFailed(f"container {ref.name}: cannot tell which image it runs "
                             f"({exc})") from None


def _credentials(cluster: Cluster, ref: containers.ContainerRef,
                 image: references.ImageReference) -> tuple[str, str] | None:
    for name in ref.pull_secrets:
        try:
            data = containers.pull_secret(cluster, ref.namespace, name)
        except KubeError as exc:  # 403 by default: secret reads are an opt-in grant
            log.info("evidence.pull_secret_unreadable", secret=f"{ref.namespace}/{name}",
                     error=str(exc)[:200])
            continue
        if data is None:
            continue
        found = registry.credentials_from_dockerconfigjson(data, image.registry,
                                                           repository=image.repository)
        if found is not None:
            return found
    configured = runtime.current().settings.registry_credentials
    if configured is not None:
        return registry.credentials_from_dockerconfigjson(
            configured.get_secret_value(), image.registry, repository=image.repository)
    return None
