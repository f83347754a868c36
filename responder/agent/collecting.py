"""Both collectors over one host view: find the container, then its tree and its diff.

Shared by the evidence plug-ins (on the node agent) and `drift-responder agent collect`, so that
what an analyst runs by hand on a node is exactly what a playbook records.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path

from responder.agent import mounts, overlay, processes
from responder.agent.models import DiffEntry, FilesystemDiff, ProcessTree


class ContainerNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Located:
    container_id: str
    pids: list[int]
    overlay: mounts.RootOverlay | None
    volumes: list[str] = field(default_factory=list)


def locate(container_id: str, *, proc_root: Path = Path("/proc"),
           host_root: Path = Path("/")) -> Located:
    """The container's processes and root overlay, as the host sees them."""
    pids = processes.container_pids(container_id, proc_root)
    if not pids:
        raise ContainerNotFound(f"no process of container {container_id[:12]} under "
                                f"{proc_root}: it has exited, or runs on another node")
    # Any process of the container shares its root mount; the lowest pid is usually its init.
    for pid in pids:
        try:
            found = mounts.root_overlay(proc_root, pid, host_root=host_root)
            volumes = mounts.volume_mount_points(proc_root, pid)
        except OSError:  # exited between the scan and now: try the next one
            continue
        return Located(container_id, pids, found, volumes)
    raise ContainerNotFound(f"every process of container {container_id[:12]} exited while "
                            "it was being read")


def process_tree(located: Located, *, proc_root: Path = Path("/proc"),
                 flag_pid: int | None = None, flag_vpid: int | None = None,
                 flag_exe: str | None = None,
                 limits: processes.ProcessLimits | None = None) -> ProcessTree:
    return processes.collect_process_tree(
        located.container_id, proc_root=proc_root,
        upperdir=located.overlay.upperdir if located.overlay else None, flag_pid=flag_pid,
        flag_vpid=flag_vpid, flag_exe=flag_exe, limits=limits or processes.ProcessLimits())


def filesystem_diff(located: Located, *, flag_paths: Collection[str] = (),
                    limits: overlay.DiffLimits | None = None,
                    quarantine: Callable[[Path, DiffEntry], str | None] | None = None,
                    ) -> FilesystemDiff:
    if located.overlay is None:
        raise ContainerNotFound(f"container {located.container_id[:12]} has no overlay root "
                                "filesystem (not an overlayfs snapshotter?)")
    return overlay.diff_upperdir(
        located.overlay.upperdir, list(located.overlay.lowerdirs),
        container_id=located.container_id, flag_paths=flag_paths, exclude=located.volumes,
        limits=limits or overlay.DiffLimits(), quarantine=quarantine,
        # Only a mount made with userxattr may speak through user.overlay.* marks: otherwise a
        # container could forge a whiteout there and hide what it dropped.
        userxattr=located.overlay.userxattr)
