"""What an exec into the container shows, read as evidence: fixed commands and their parsers.

Without the node agent the responder can only ask the container itself: ``pods/exec`` runs a
command in it, and the answer is whatever the container's own binaries print (``assurance:
low``; a compromised container can lie). The commands are constants: no word of an alert, a
pod or an image is ever put into them, and none is a shell string built at run time. The
only ``sh -c`` is :data:`PROCESSES_ARGV_SH`, a literal script with no interpolation, for
images whose ``find`` is busybox's.

Output is parsed as untrusted bytes: every record is validated, file names may hold any byte
but NUL (so the GNU commands separate records with NUL, and the process command hex-encodes
file contents), and malformed records are skipped rather than trusted.

:func:`diff_against_image` then compares the listing with the image's flattened file list
(:mod:`responder.images.layers`) with ``docker diff``'s A/C/D meanings.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from responder.agent.models import (
    DiffEntry,
    DiffSummary,
    FilesystemDiff,
    ProcessInfo,
    ProcessTree,
)
from responder.images.layers import ImageFile
from responder.models.times import format_ns

ListedType = Literal["file", "dir", "symlink", "char", "block", "fifo", "socket", "other"]

#: Lists the root file system (not /proc, /sys, volumes or other mounts: ``-xdev``) with GNU
#: find. One record per file: ``type size mode uid gid mtime dev path`` NUL ``link-target``
#: NUL; the path comes last so that spaces and newlines in it stay unambiguous. ``%D``
#: (device) lets the diff tell mount points (bind-mounted /etc/hosts, volumes) from drift.
#: The escapes (``\\0``) are find's own, not a shell's.
FILES_ARGV: tuple[str, ...] = (
    "find", "/", "-xdev", "-printf", "%y %s %m %U %G %T@ %D %p\\0%l\\0")

#: For images whose ``find`` is busybox's (Alpine, distroless-busybox), which has no
#: ``-printf``: ``stat`` (busybox's or coreutils') batched by ``-exec … {} +``. Records are
#: newline-terminated ``rawmode-hex size uid gid mtime dev path``; a name holding a newline
#: continues on the next line (:func:`parse_files` rejoins it). No symlink targets: a symlink's
#: size is its target's length, so a re-pointed link still shows as changed, mostly.
#: Try it when FILES_ARGV fails with no output (busybox says "unrecognized: -printf").
FILES_ARGV_BUSYBOX: tuple[str, ...] = (
    "find", "/", "-xdev", "-exec", "stat", "-c", "%f %s %u %g %Y %d %n", "{}", "+")

#: Every process of the container, without a shell: GNU find walks /proc and, for each pid,
#: prints a header ``@/proc/<pid>/<file>`` and runs ``od`` to hex-encode ``stat``, ``status``
#: and ``cmdline`` (hex, because cmdline holds NULs and comm may hold newlines), then prints
#: ``#/proc/<pid>/exe`` and the exe link's target NUL-terminated. ``/proc/stat`` gives the
#: boot time for start times. find flushes its own output before each ``-exec``, so headers
#: and contents arrive in order.
PROCESSES_ARGV: tuple[str, ...] = (
    "find", "/proc", "-maxdepth", "2",
    "(", "-path", "/proc/stat", "-o", "-path", "/proc/[0-9]*/stat",
    "-o", "-path", "/proc/[0-9]*/status", "-o", "-path", "/proc/[0-9]*/cmdline", ")",
    "-printf", "@%p\\n", "-exec", "od", "-An", "-v", "-tx1", "{}", ";",
    "-o", "-path", "/proc/[0-9]*/exe", "-printf", "#%p\\n%l\\0")

# A LITERAL CONSTANT script: nothing is ever interpolated into it (no alert, pod or image
# field reaches it); the only variables are the shell's own loop variables over /proc. It
# prints the same framing as PROCESSES_ARGV, with the exe target hex-encoded too.
_PROCESSES_SCRIPT = """\
echo @/proc/stat; od -An -v -tx1 /proc/stat
for d in /proc/[0-9]*; do
  for f in stat status cmdline; do
    echo "@$d/$f"; od -An -v -tx1 "$d/$f" 2>/dev/null
  done
  echo "@$d/exe"; readlink "$d/exe" 2>/dev/null | od -An -v -tx1
done
"""
#: For images without GNU find (busybox): a POSIX sh running a constant script.
PROCESSES_ARGV_SH: tuple[str, ...] = ("sh", "-c", _PROCESSES_SCRIPT)

#: Paths the diff leaves out by default: kernel file systems and what the kubelet mounts into
#: every container (these are also mounts, which ``-xdev`` and the device check catch; the
#: list covers runtimes that show them on the root device).
DEFAULT_IGNORE: tuple[str, ...] = (
    "/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
    "/run/secrets", "/var/run/secrets")

HASH_SKIPPED = "exec listing has no content hashes"
CLOCK_TICKS = 100  # USER_HZ: 100 on every Linux architecture Kubernetes runs on
MAX_CMDLINE_ARGS = 256
MAX_CMDLINE_CHARS = 4096
DEFAULT_MAX_PROCESSES = 4096
_OWN_COMMANDS = (PROCESSES_ARGV, PROCESSES_ARGV_SH)

_TYPES: dict[bytes, ListedType] = {
    b"f": "file", b"d": "dir", b"l": "symlink", b"c": "char", b"b": "block", b"p": "fifo",
    b"s": "socket"}
_FORMAT_BITS: dict[int, ListedType] = {
    0o100000: "file", 0o040000: "dir", 0o120000: "symlink", 0o020000: "char",
    0o060000: "block", 0o010000: "fifo", 0o140000: "socket"}
_INT_RE = re.compile(rb"-?[0-9]{1,20}")
_MTIME_RE = re.compile(rb"-?[0-9]{1,20}(?:\.[0-9]{1,12})?")
_OCTAL_RE = re.compile(rb"[0-7]{1,6}")
_BUSYBOX_RE = re.compile(
    rb"([0-9a-f]{1,8}) ([0-9]{1,20}) ([0-9]{1,10}) ([0-9]{1,10}) (-?[0-9]{1,20}) "
    rb"([0-9]{1,20}) (/.*)", re.DOTALL)
_HEADER_RE = re.compile(rb"/proc/(?:([0-9]{1,10})/(stat|status|cmdline|exe)|(stat))")
_NEXT_HEADER_RE = re.compile(rb"[@#]")


@dataclass(frozen=True)
class ListedFile:
    """One file as the container's ``find`` reported it; ``mode`` holds permission bits,
    ``mtime`` seconds since the epoch, ``dev`` the device number (a mount point's differs
    from ``/``'s); ``link_target`` is ``None`` when the command does not report it."""

    path: str
    type: ListedType
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float
    link_target: str | None = None
    dev: int | None = None


# --- files ---------------------------------------------------------------------------------

def parse_files(output: bytes, *, busybox: bool = False) -> dict[str, ListedFile]:
    """Parse :data:`FILES_ARGV` output (or :data:`FILES_ARGV_BUSYBOX` output with
    ``busybox=True``) into files keyed by absolute path. Malformed records are skipped; a
    record cut off at the end (output capped by the exec) is dropped."""
    if busybox:
        return _parse_busybox(output)
    files: dict[str, ListedFile] = {}
    parts = output.split(b"\0")
    # Pairs of (fields + path, link target); an odd tail is a record cut short.
    for index in range(0, len(parts) - 1, 2):
        listed = _gnu_record(parts[index], parts[index + 1])
        if listed is not None:
            files[listed.path] = listed
    return files


def _gnu_record(record: bytes, link: bytes) -> ListedFile | None:
    fields = record.split(b" ", 7)
    if len(fields) != 8:
        return None
    kind, size, mode, uid, gid, mtime, dev, raw_path = fields
    if not (_INT_RE.fullmatch(size) and _OCTAL_RE.fullmatch(mode) and _INT_RE.fullmatch(uid)
            and _INT_RE.fullmatch(gid) and _MTIME_RE.fullmatch(mtime)
            and _INT_RE.fullmatch(dev) and raw_path.startswith(b"/")):
        return None
    listed_type = _TYPES.get(kind, "other")
    return ListedFile(
        path=_path(raw_path), type=listed_type, size=int(size), mode=int(mode, 8),
        uid=int(uid), gid=int(gid), mtime=float(mtime),
        link_target=os.fsdecode(link) if listed_type == "symlink" else None, dev=int(dev))


def _parse_busybox(output: bytes) -> dict[str, ListedFile]:
    files: dict[str, ListedFile] = {}
    records: list[bytes] = []
    lines = output.split(b"\n")
    lines.pop()  # after the last newline: empty, or a record cut off by the output cap
    for line in lines:
        if _BUSYBOX_RE.fullmatch(line) or not records:
            records.append(line)
        else:
            records[-1] += b"\n" + line  # a newline inside a file name
    for record in records:
        match = _BUSYBOX_RE.fullmatch(record)
        if match is None:
            continue
        raw_mode, size, uid, gid, mtime, dev, raw_path = match.groups()
        mode = int(raw_mode, 16)
        listed = ListedFile(
            path=_path(raw_path), type=_FORMAT_BITS.get(mode & 0o170000, "other"),
            size=int(size), mode=mode & 0o7777, uid=int(uid), gid=int(gid),
            mtime=float(mtime), dev=int(dev))
        files[listed.path] = listed
    return files


def _path(raw: bytes) -> str:
    # Same decoding as tarfile's for layer names (UTF-8, undecodable bytes kept as
    # surrogates), so that listing and image keys compare equal byte for byte.
    text = os.fsdecode(raw)
    return "/" + posixpath.normpath(text).lstrip("/") if text != "/" else "/"


# --- processes -----------------------------------------------------------------------------

@dataclass
class _RawProcess:
    pid: int
    stat: bytes = b""
    status: bytes = b""
    cmdline: bytes = b""
    exe: bytes | None = None


def _frames(output: bytes) -> Iterable[tuple[bytes, bytes, bool]]:
    """(header, payload, payload-is-hex) for each framed record of the process commands."""
    position = 0
    length = len(output)
    while position < length:
        marker = output[position:position + 1]
        if marker not in (b"@", b"#"):
            found = _NEXT_HEADER_RE.search(output, position)
            if found is None:
                return
            position = found.start()
            continue
        newline = output.find(b"\n", position)
        if newline < 0:
            return
        header = output[position + 1:newline]
        if marker == b"#":
            end = output.find(b"\0", newline + 1)
            if end < 0:
                return  # cut off
            yield header, output[newline + 1:end], False
            position = end + 1
        else:
            found = _NEXT_HEADER_RE.search(output, newline + 1)
            end = found.start() if found else length
            yield header, output[newline + 1:end], True
            position = end


def _read_processes(output: bytes) -> tuple[dict[int, _RawProcess], int | None]:
    processes: dict[int, _RawProcess] = {}
    boot_time: int | None = None
    for header, payload, is_hex in _frames(output):
        match = _HEADER_RE.fullmatch(header)
        if match is None:
            continue
        if is_hex:
            try:
                data = bytes.fromhex(payload.decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                continue
        else:
            data = payload
        if match.group(3):
            found = re.search(rb"^btime ([0-9]+)$", data, re.MULTILINE)
            boot_time = int(found.group(1)) if found else boot_time
            continue
        pid, field = int(match.group(1)), match.group(2).decode()
        process = processes.setdefault(pid, _RawProcess(pid))
        if field == "exe":
            # readlink (the sh script) ends its output with a newline; find's %l does not.
            if is_hex and data.endswith(b"\n"):
                data = data[:-1]
            process.exe = data or None
        else:
            setattr(process, field, data)
    return processes, boot_time


def _status_fields(status: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in status.split(b"\n"):
        name, sep, value = line.partition(b":")
        if sep and name in (b"Name", b"PPid", b"Uid", b"NSpid"):
            fields[name.decode()] = value.strip().decode("utf-8", "backslashreplace")
    return fields


def _text(raw: bytes) -> str:
    """Container-controlled bytes as JSON-safe text (undecodable bytes escaped)."""
    return raw.decode("utf-8", "backslashreplace")


def _process_info(raw: _RawProcess, boot_time: int | None) -> ProcessInfo | None:
    stat = raw.stat
    close = stat.rfind(b")")
    open_ = stat.find(b"(")
    if close < 0 or open_ < 0 or not stat.startswith(str(raw.pid).encode() + b" "):
        return None
    after = stat[close + 1:].split()
    if len(after) < 20 or not after[1].isdigit():
        return None
    ppid = int(after[1])
    comm = _text(stat[open_ + 1:close])
    status = _status_fields(raw.status)
    uid: int | None = None
    uids = status.get("Uid", "").split()
    if uids and uids[0].isdigit():
        uid = int(uids[0])
    ns_pids = status.get("NSpid", "").split()
    ns_pid = int(ns_pids[-1]) if ns_pids and ns_pids[-1].isdigit() else raw.pid
    start_time: str | None = None
    if boot_time is not None and after[19].isdigit():
        start_ns = boot_time * 1_000_000_000 + int(after[19]) * (1_000_000_000 // CLOCK_TICKS)
        start_time = format_ns(start_ns)
    args = raw.cmdline.split(b"\0")
    if args and args[-1] == b"":
        args.pop()
    cmdline: list[str] = []
    truncated = len(args) > MAX_CMDLINE_ARGS
    budget = MAX_CMDLINE_CHARS
    for arg in args[:MAX_CMDLINE_ARGS]:
        text = _text(arg)
        if len(text) > budget:
            cmdline.append(text[:budget])
            truncated = True
            break
        cmdline.append(text)
        budget -= len(text)
    exe: str | None = None
    deleted = memfd = False
    if raw.exe:
        exe = _text(raw.exe)
        if exe.endswith(" (deleted)"):
            exe, deleted = exe[: -len(" (deleted)")], True
        memfd = exe.startswith("/memfd:")
    return ProcessInfo(
        pid=raw.pid, ns_pid=ns_pid, ppid=ppid, uid=uid,
        user=str(uid) if uid is not None else None, start_time=start_time, cmdline=cmdline,
        cmdline_truncated=truncated, comm=status.get("Name") or comm, exe=exe,
        exe_deleted=deleted, exe_memfd=memfd, hash_skipped=HASH_SKIPPED)


def parse_processes(output: bytes, *, container_id: str, flag_pid: int | None = None,
                    flag_exe: str | None = None,
                    image: Mapping[str, ImageFile] | None = None,
                    listed: Mapping[str, ListedFile] | None = None,
                    max_processes: int = DEFAULT_MAX_PROCESSES) -> ProcessTree:
    """Parse :data:`PROCESSES_ARGV` (or :data:`PROCESSES_ARGV_SH`) output into the process
    tree (``method='exec'``, ``assurance='low'``). Pids are the container's own (its pid
    namespace); the listing command itself and its children are left out (when started from
    outside the container, as an exec is).

    ``flag_pid`` (a container pid, Falco's ``proc.vpid``) and ``flag_exe`` mark the processes
    the alert names. With the image's file list, ``in_upper_layer`` says whether each
    executable is absent from the image or (with the file listing) differs from it."""
    raw, boot_time = _read_processes(output)
    infos = {pid: info for pid, proc in raw.items()
             if (info := _process_info(proc, boot_time)) is not None}
    # Our own command was started by the runtime from outside the container, so its parent
    # is not in the container's pid namespace (ppid 0). A process inside that merely copies
    # our argv (to hide) has a parent here, and stays.
    own = [pid for pid, info in infos.items()
           if _is_own_command(info.cmdline) and pid != 1
           and (info.ppid == 0 or info.ppid not in infos)]
    for pid in _descendants(infos, own):
        infos.pop(pid, None)
    ordered = _tree_order(infos)
    truncated = len(ordered) > max_processes
    kept: list[ProcessInfo] = []
    for pid, _depth in ordered:
        info = infos[pid]
        updates: dict[str, object] = {}
        if (flag_pid is not None and pid == flag_pid) or (
                flag_exe is not None and info.exe == flag_exe):
            updates["flagged"] = True
        if image is not None and info.exe and not info.exe_memfd:
            updates["in_upper_layer"] = _exe_in_upper_layer(info.exe, image, listed)
        kept.append(info.model_copy(update=updates) if updates else info)
    # Bounded: flagged processes are kept whatever their place.
    if truncated:
        flagged = [p for p in kept[max_processes:] if p.flagged]
        kept = kept[:max_processes - len(flagged)] + flagged if flagged else kept[:max_processes]
    depth = dict(ordered)
    rendered = "\n".join(_render(info, depth.get(info.pid, 0)) for info in kept)
    return ProcessTree(container_id=container_id, method="exec", assurance="low",
                       processes=kept, rendered=rendered, truncated=truncated)


def _is_own_command(cmdline: list[str]) -> bool:
    """Whether a command line is one of ours. GNU find rewrites its -printf escapes in place
    in its own argv (``\\n`` becomes a newline and a stray ``n``), so only the arguments
    before the first escape are compared."""
    for argv in _OWN_COMMANDS:
        stable = next((i for i, arg in enumerate(argv) if "\\" in arg), len(argv))
        if len(cmdline) >= stable and tuple(cmdline[:stable]) == argv[:stable]:
            return True
    return False


def _descendants(infos: Mapping[int, ProcessInfo], roots: list[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, info in infos.items():
        children.setdefault(info.ppid, []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(children.get(pid, []))
    return found


def _tree_order(infos: Mapping[int, ProcessInfo]) -> list[tuple[int, int]]:
    """(pid, depth), parents first, siblings by pid; processes whose parent is outside the
    container (the runtime's, pid 0) are roots."""
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    for pid, info in infos.items():
        if info.ppid in infos and info.ppid != pid:
            children.setdefault(info.ppid, []).append(pid)
        else:
            roots.append(pid)
    ordered: list[tuple[int, int]] = []
    seen: set[int] = set()
    stack = [(pid, 0) for pid in sorted(roots, reverse=True)]
    while stack:
        pid, depth = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        ordered.append((pid, depth))
        stack.extend((child, depth + 1) for child in sorted(children.get(pid, []),
                                                            reverse=True))
    # A cycle (impossible from a real /proc, possible from a lying one) leaves pids unseen.
    ordered.extend((pid, 0) for pid in sorted(set(infos) - seen))
    return ordered


def _exe_in_upper_layer(exe: str, image: Mapping[str, ImageFile],
                        listed: Mapping[str, ListedFile] | None) -> bool:
    original = image.get(exe)
    if original is None:
        return True
    if listed is None or exe not in listed:
        return False
    return _differs(listed[exe], original)


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _render(info: ProcessInfo, depth: int) -> str:
    """One line per process; control characters escaped so a command line cannot forge
    lines of the tree."""
    what = " ".join(info.cmdline) if info.cmdline else f"[{info.comm or '?'}]"
    line = f"{'  ' * depth}{info.pid} {info.exe or '?'}"
    if info.exe_deleted:
        line += " (deleted)"
    line += f" {what}"
    if info.cmdline_truncated:
        line += " …"
    if info.flagged:
        line += "  <- flagged"
    return _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", line)


# --- diff ----------------------------------------------------------------------------------

def _diff_type(kind: str) -> Literal["file", "dir", "symlink", "other"]:
    return kind if kind in ("file", "dir", "symlink") else "other"  # type: ignore[return-value]


def _differs(now: ListedFile, then: ImageFile) -> bool:
    """Whether a path present in both changed.

    Type, owner and permission bits always count. Size counts for regular files and
    symlinks (a symlink's size is its target's length). A symlink's target counts when the
    listing has it. Directories' sizes and mtimes do not: both change whenever an entry is
    added or removed, and those entries are reported themselves. A regular file's mtime
    counts even with the same size: the runtime keeps the layer's mtimes when it unpacks the
    image, so an untouched file has exactly its tar mtime, and overwriting a binary with one
    of the same size (patched in place) is otherwise invisible without content hashes. Times
    compare to the whole second, as tar headers usually carry them; an attacker who resets
    the mtime (``touch -r``) still evades this, which is part of why assurance is low."""
    if now.type != then.type:
        return True
    if now.uid != then.uid or now.gid != then.gid:
        return True
    if now.type != "symlink" and now.mode != then.mode:
        return True
    if now.type == "file":
        if now.size != then.size:
            return True
        return then.mtime is not None and math.floor(now.mtime) != math.floor(then.mtime)
    if now.type == "symlink":
        if now.link_target is not None and then.link_target is not None:
            return now.link_target != then.link_target
        return now.size != len(os.fsencode(then.link_target or ""))
    return False


def _under(path: str, prefixes: Collection[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def _json_safe(path: str) -> str:
    # Undecodable name bytes (kept as surrogates for matching) become \xNN for the report.
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _entry(path: str, kind: Literal["A", "C", "D"], now: ListedFile | None,
           flagged: bool) -> DiffEntry:
    if now is None:
        return DiffEntry(path=_json_safe(path), kind=kind, flagged=flagged)
    executable = now.type == "file" and bool(now.mode & 0o111)
    mtime = format_ns(int(now.mtime * 1_000_000_000)) if math.isfinite(now.mtime) else None
    return DiffEntry(
        path=_json_safe(path), kind=kind, type=_diff_type(now.type),
        size=now.size, mode=f"{now.mode:04o}", uid=now.uid, gid=now.gid, mtime=mtime,
        hash_skipped=HASH_SKIPPED if now.type == "file" else None, executable=executable,
        link_target=_json_safe(now.link_target) if now.link_target is not None else None,
        flagged=flagged)


def diff_against_image(listed: Mapping[str, ListedFile], image: Mapping[str, ImageFile], *,
                       container_id: str, flag_paths: Collection[str] = (),
                       max_entries: int = 1000,
                       ignore: Collection[str] = DEFAULT_IGNORE) -> FilesystemDiff:
    """The container's drift from its image, ``docker diff`` style, from an exec listing.

    A: listed now, not in the image. D: in the image, not listed (only the top of a removed
    tree, as overlay records one whiteout for it). C: present in both but different (see
    :func:`_differs`), and every directory above an A, C or D present in both (its contents
    changed). Paths under ``ignore`` and under mount points (a device other than ``/``'s:
    volumes, bind-mounted files; their image contents are hidden, not deleted) are left out.
    No content hashes. ``summary`` counts everything; ``changes`` holds at most
    ``max_entries``, flagged paths first, then by path."""
    root_dev = listed["/"].dev if "/" in listed else None
    # Directories on another device are mount points. Files are not judged by device:
    # overlayfs may report a per-layer pseudo device for files when its layers sit on
    # different file systems, and skipping those would hide real drift; a file mounted by
    # subPath shows as changed instead (noise rather than silence).
    mounts = [path for path, item in listed.items()
              if root_dev is not None and item.type == "dir" and item.dev is not None
              and item.dev != root_dev]
    skip = [*ignore, *mounts]
    flags = {_path(os.fsencode(p)) for p in flag_paths if p}
    kinds: dict[str, Literal["A", "C", "D"]] = {}
    for path, now in listed.items():
        if path == "/" or _under(path, skip):
            continue
        then = image.get(path)
        if then is None:
            kinds[path] = "A"
        elif _differs(now, then):
            kinds[path] = "C"
    for path in image:
        if path == "/" or path in listed or _under(path, skip):
            continue
        parent = posixpath.dirname(path)
        # Only the top of a deleted tree, as overlay's single whiteout shows it.
        if parent != "/" and parent in image and parent not in listed:
            continue
        kinds[path] = "D"
    for path in list(kinds):
        parent = posixpath.dirname(path)
        while parent != "/" and parent not in kinds and parent in listed and parent in image:
            kinds[parent] = "C"
            parent = posixpath.dirname(parent)
    summary = DiffSummary()
    entries: list[DiffEntry] = []
    for path, kind in kinds.items():
        current = listed.get(path) if kind != "D" else None
        entry = _entry(path, kind, current, path in flags)
        entries.append(entry)
        if kind == "A":
            summary.added += 1
            summary.executables_added += entry.executable
        elif kind == "C":
            summary.changed += 1
        else:
            summary.deleted += 1
    entries.sort(key=lambda e: (not e.flagged, e.path))
    return FilesystemDiff(container_id=container_id, method="exec", assurance="low",
                          summary=summary, changes=entries[:max_entries],
                          truncated=len(entries) > max_entries)
