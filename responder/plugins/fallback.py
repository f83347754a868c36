"""The evidence fallback when no node agent serves the container's node (low assurance).

An exec into the suspect container with a fixed argv (never a shell string built from alert
fields) lists its processes and files; the file list is compared with the image's own, pulled
from its registry by the digest the pod runs. The container can lie to an exec, so the results
say ``assurance: low`` and ``method: exec``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from responder.agent.models import FilesystemDiff, ProcessTree
from responder.agent.processes import ProcessLimits

if TYPE_CHECKING:
    from responder.plugins.evidence import FilesystemDiffParams, ProcessTreeParams


def process_tree(params: ProcessTreeParams, limits: ProcessLimits) -> ProcessTree:
    raise NotImplementedError("exec fallback: in progress")


def filesystem_diff(params: FilesystemDiffParams, *, max_entries: int) -> FilesystemDiff:
    raise NotImplementedError("exec fallback: in progress")
