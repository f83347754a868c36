"""Where a container's root filesystem lives on the node, read from ``/proc/<pid>/mountinfo``.

The filesystem diff needs the container's overlay layers (the writable ``upperdir`` and the image's
``lowerdir`` list) and the mount points of its volumes, which are not part of the image and must
be left out of the diff. Both come from the kernel's own account of the container's mounts, read
through the host's ``/proc`` (the agent runs in a DaemonSet and sees the host at ``host_root``).

Formats handled (proc(5) and Documentation/filesystems/overlayfs.rst): octal escapes (``\\040``),
optional fields up to ``-``, ``lowerdir=a:b::data`` with ``\\:`` for a colon in a name and ``::``
before data-only layers, the ``lowerdir+=`` / ``datadir+=`` options (one layer each, Linux 6.8+
new mount API), and relative lowerdirs (containerd shortens a long option by mounting from the
snapshotter's ``snapshots`` directory with lowerdirs like ``12/fs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of mountinfo, unescaped."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    options: tuple[str, ...]
    optional: tuple[str, ...]
    fstype: str
    source: str
    #: In order and with repeats (``lowerdir+=`` may come many times); ``None`` for a bare flag.
    super_options: tuple[tuple[str, str | None], ...]

    def option(self, name: str) -> str | None:
        """The last value of a super option, or None when absent or a bare flag."""
        value = None
        for key, val in self.super_options:
            if key == name:
                value = val
        return value

    def has_flag(self, name: str) -> bool:
        return any(key == name for key, _ in self.super_options)


@dataclass(frozen=True, slots=True)
class RootOverlay:
    """The layers of a container's root overlay, as host paths seen from the agent."""

    upperdir: Path
    #: Top layer first, as overlayfs stacks them.
    lowerdirs: list[Path]
    workdir: Path | None
    #: Data-only layers (``::`` or ``datadir+=``): reachable only through metacopy redirects,
    #: never part of the merged namespace, so not part of the diff.
    datadirs: list[Path] = field(default_factory=list)
    #: Mounted with ``userxattr``: overlay xattrs are ``user.overlay.*`` instead of
    #: ``trusted.overlay.*``. Pass it to the diff so that one namespace only is trusted.
    userxattr: bool = False


def unescape(text: str) -> str:
    """Undo the kernel's octal escapes (space, tab, newline, backslash, comma...)."""
    if "\\" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)
    return raw.decode("utf-8", "surrogateescape")


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse mountinfo text; malformed lines are skipped (the file is the kernel's, but a proc
    read can race a mount and a truncated last line must not fail the collection)."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        mount = _parse_line(line)
        if mount is not None:
            mounts.append(mount)
    return mounts


def _parse_line(line: str) -> Mount | None:
    fields = line.split(" ")
    try:
        dash = fields.index("-", 6)
    except ValueError:
        return None
    if dash + 3 > len(fields):
        return None
    try:
        mount_id, parent_id = int(fields[0]), int(fields[1])
        major_text, minor_text = fields[2].split(":", 1)
        major, minor = int(major_text), int(minor_text)
    except ValueError:
        return None
    # Commas are escaped in values, so splitting before unescaping is safe.
    super_options: list[tuple[str, str | None]] = []
    for item in fields[dash + 3].split(",") if fields[dash + 3] else ():
        key, sep, value = item.partition("=")
        super_options.append((unescape(key), unescape(value) if sep else None))
    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        major=major,
        minor=minor,
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        options=tuple(fields[5].split(",")),
        optional=tuple(f for f in fields[6:dash] if f),
        fstype=unescape(fields[dash + 1]),
        source=unescape(fields[dash + 2]),
        super_options=tuple(super_options),
    )


def split_lowerdir(value: str) -> tuple[list[str], list[str]]:
    """``a:b\\:c::d`` -> (["a", "b:c"], ["d"]): layers, then data-only layers after ``::``.

    The overlay option parser treats a backslash as escaping the next character."""
    layers: list[str] = []
    data: list[str] = []
    current: list[str] = []
    in_data = False
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            i += 2
            continue
        if char == ":":
            (data if in_data else layers).append("".join(current))
            current = []
            if value.startswith("::", i):
                in_data = True
                i += 1
            i += 1
            continue
        current.append(char)
        i += 1
    (data if in_data else layers).append("".join(current))
    return [p for p in layers if p], [p for p in data if p]


def under_host_root(path: PurePosixPath | str, host_root: Path) -> Path:
    """A node path as the agent sees it (``/var/lib/x`` -> ``/host/var/lib/x``)."""
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        raise ValueError(f"not an absolute path: {str(path)!r}")
    return host_root / pure.relative_to("/")


def overlay_layers(mount: Mount, *, host_root: Path = Path("/")) -> RootOverlay | None:
    """The layers of an overlay mount, or None when it is not an overlay or has no upperdir
    (a read-only overlay cannot drift)."""
    if mount.fstype != "overlay":
        return None
    upper = mount.option("upperdir")
    if not upper:
        return None
    upper_path = PurePosixPath(upper)
    if not upper_path.is_absolute():
        return None
    lowers: list[str] = []
    datadirs: list[str] = []
    for key, value in mount.super_options:
        if value is None:
            continue
        if key == "lowerdir":
            layers, data = split_lowerdir(value)
            lowers.extend(layers)
            datadirs.extend(data)
        elif key == "lowerdir+":
            lowers.append(value)
        elif key == "datadir+":
            datadirs.append(value)
    # Relative lowerdirs are relative to the directory the runtime mounted from: containerd's
    # <snapshots> (upperdir <snapshots>/<id>/fs, lowerdir 12/fs), like Docker's and
    # containers/storage's overlay home (upperdir <home>/<id>/diff, lowerdir l/<short id>):
    # the upperdir's grandparent either way.
    base = upper_path.parent.parent

    def resolve(text: str) -> Path:
        pure = PurePosixPath(text)
        return under_host_root(pure if pure.is_absolute() else base / pure, host_root)

    work = mount.option("workdir")
    work_path = PurePosixPath(work) if work else None
    return RootOverlay(
        upperdir=under_host_root(upper_path, host_root),
        lowerdirs=[resolve(p) for p in lowers],
        workdir=(under_host_root(work_path, host_root)
                 if work_path is not None and work_path.is_absolute() else None),
        datadirs=[resolve(p) for p in datadirs],
        userxattr=mount.has_flag("userxattr"),
    )


def read_mountinfo(proc_root: Path, pid: int) -> list[Mount]:
    text = (proc_root / str(pid) / "mountinfo").read_bytes().decode("utf-8", "surrogateescape")
    return parse_mountinfo(text)


def root_overlay(proc_root: Path, pid: int, *,
                 host_root: Path = Path("/")) -> RootOverlay | None:
    """The overlay mounted at the container's ``/``, or None (not an overlay: a bind-mounted
    single-layer view, or a runtime without overlay). Raises OSError when the process is gone."""
    roots = [m for m in read_mountinfo(proc_root, pid) if m.mount_point == "/"]
    if not roots:
        return None
    # Later lines are mounted on top of earlier ones: the last is what the container sees.
    top = roots[-1]
    if top.root != "/":
        return None
    return overlay_layers(top, host_root=host_root)


def volume_mount_points(proc_root: Path, pid: int) -> list[str]:
    """Container-side mount points other than ``/`` (volumes, tmpfs, proc, sys, bind-mounted
    files like /etc/hosts): their contents are not the container's writable layer."""
    seen: dict[str, None] = {}
    for mount in read_mountinfo(proc_root, pid):
        if mount.mount_point != "/":
            seen.setdefault(mount.mount_point, None)
    return list(seen)
