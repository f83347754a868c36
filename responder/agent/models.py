"""What the evidence collectors return: a process tree and a filesystem diff.

One shape for every method (node agent, exec fallback), so that playbooks, the Slack prompt and
the audit trail read the same fields whatever collected them. ``assurance`` and ``method`` say
how far to trust it: the node agent reads the host's view (``high``); an exec into the suspect
container reads what the container chooses to show (``low``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Assurance = Literal["high", "low"]
Method = Literal["node-agent", "exec"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProcessInfo(_Model):
    pid: int = Field(description="Host pid (the pid the node sees).")
    ns_pid: int | None = Field(description="Pid inside the container's pid namespace (NSpid).")
    ppid: int
    uid: int | None = None
    user: str | None = Field(default=None, description="Name of uid in the container's own "
                             "/etc/passwd; None when unknown.")
    start_time: str | None = Field(default=None, description="RFC 3339, from stat starttime.")
    cmdline: list[str] = Field(default_factory=list, description="argv, bounded.")
    cmdline_truncated: bool = False
    comm: str | None = None
    exe: str | None = Field(default=None, description="Executable path without ' (deleted)'.")
    exe_deleted: bool = False
    exe_memfd: bool = False
    cwd: str | None = None
    sha256: str | None = Field(default=None, description="Of the executable, read through "
                               "/proc/<pid>/exe; None when unreadable or above the size cap.")
    exe_size: int | None = None
    hash_skipped: str | None = Field(default=None, description="Why sha256 is missing.")
    in_upper_layer: bool | None = Field(default=None, description="The executable lies in the "
                                        "container's upper (writable) layer: it was dropped "
                                        "after the image. None when the upperdir is unknown.")
    flagged: bool = Field(default=False, description="The process the alert names.")


class ProcessTree(_Model):
    container_id: str
    method: Method = "node-agent"
    assurance: Assurance = "high"
    processes: list[ProcessInfo] = Field(default_factory=list,
                                         description="The container's roots first, then "
                                         "depth-first, siblings by pid.")
    rendered: str = Field(default="", description="The tree as text, one line per process.")
    truncated: bool = False


class DiffEntry(_Model):
    path: str = Field(description="Absolute path inside the container.")
    kind: Literal["A", "C", "D"]
    type: Literal["file", "dir", "symlink", "other"] | None = Field(
        default=None, description="None for deletions.")
    size: int | None = None
    mode: str | None = Field(default=None, description="Octal permission bits, e.g. '0755'.")
    uid: int | None = None
    gid: int | None = None
    mtime: str | None = None
    sha256: str | None = None
    hash_skipped: str | None = None
    executable: bool = False
    elf: bool = False
    script: bool = Field(default=False, description="Starts with '#!'.")
    link_target: str | None = None
    flagged: bool = Field(default=False, description="A path the alert names.")
    quarantined: str | None = Field(default=None, description="sha256 of the quarantined copy "
                                    "kept in the artifact store.")


class DiffSummary(_Model):
    """Exact counts, even when the listing is truncated."""

    added: int = 0
    changed: int = 0
    deleted: int = 0
    executables_added: int = 0
    bytes_hashed: int = 0


class FilesystemDiff(_Model):
    container_id: str
    method: Method = "node-agent"
    assurance: Assurance = "high"
    upperdir: str | None = None
    lowerdirs: list[str] = Field(default_factory=list)
    summary: DiffSummary = Field(default_factory=DiffSummary)
    changes: list[DiffEntry] = Field(default_factory=list,
                                     description="Flagged entries first, then by path.")
    truncated: bool = False


class ArtifactRef(_Model):
    """An artifact in the content-addressed store (responder.store.artifacts)."""

    sha256: str
    size: int
    name: str
    media_type: str = "application/json"


class ProcessTreeResult(_Model):
    """The result of an ``evidence.process_tree`` step (what playbooks and the prompt read);
    the whole tree is the artifact."""

    method: Method
    assurance: Assurance
    node: str | None = None
    container_id: str
    processes_total: int
    flagged: list[ProcessInfo] = Field(default_factory=list)
    excerpt: str = Field(default="", description="Rendered lines around the flagged process "
                         "(or the top of the tree), at most about 40 lines.")
    artifact: ArtifactRef
    truncated: bool = False


class FilesystemDiffResult(_Model):
    """The result of an ``evidence.filesystem_diff`` step; the whole diff is the artifact."""

    method: Method
    assurance: Assurance
    node: str | None = None
    container_id: str
    upperdir: str | None = None
    summary: DiffSummary
    notable: list[DiffEntry] = Field(default_factory=list, description="Flagged paths first, "
                                     "then added or changed executables; at most 20.")
    artifact: ArtifactRef
    quarantined: list[ArtifactRef] = Field(default_factory=list)
    truncated: bool = False
