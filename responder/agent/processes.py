"""The process tree of one container, read from the host's ``/proc`` by the node agent.

Why from the host: an ``exec`` into a suspect container asks the attacker's own binaries what is
running; the host's ``/proc`` cannot be lied to from inside the container. Processes are found
through their cgroup (``responder.agent.cgroups``), then each one's ``stat``, ``status``,
``cmdline``, ``exe`` and ``cwd`` are read, and its executable is hashed through
``/proc/<pid>/exe``, which still opens a deleted file or an anonymous ``memfd`` — exactly the
executables drift is about.

Processes come and go while we read: any file of a pid may vanish between two reads. A process
whose ``stat`` or ``status`` is gone is skipped; a missing ``exe`` or ``cwd`` (a zombie, say)
leaves that field empty. Nothing here raises because a process exited.

Everything read is attacker-controlled data (argv, comm, paths, the container's ``/etc/passwd``):
it is decoded, bounded and stored, never interpreted; ``render_tree`` escapes control characters
so one process is always one line.

It must scale to containers with thousands of processes (10,000 in well under a second): every
path is opened relative to one descriptor of the proc root, each ``cgroup`` file is read once
and each distinct content parsed once, there are no subprocesses, each distinct executable is
hashed once, and the container's ``/etc/passwd`` is read once.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import hashlib
import os
import re
import shlex
import stat
import unicodedata
from pathlib import Path

from responder.agent import cgroups
from responder.agent.models import ProcessInfo, ProcessTree
from responder.models.times import format_ns

_NS = 1_000_000_000
_DELETED = b" (deleted)"
_MEMFD = b"/memfd:"
_ENOENT = (errno.ENOENT, errno.ESRCH)
_O_READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_STAT_BYTES = 4096          # /proc/<pid>/stat is well under 1 KiB
_STATUS_BYTES = 256 * 1024  # status carries the Groups: list, which may be long
_CGROUP_BYTES = 64 * 1024
_PASSWD_BYTES = 1024 * 1024
_HASH_CHUNK = 1024 * 1024
_CHUNK = 4096               # first read of a small file: enough for nearly all of them
_ROOT_CANDIDATES = 8        # processes tried for the container's root (the first may be gone)
#: Rendered argv is cut here (the JSON keeps the whole bounded cmdline).
RENDER_CMDLINE_CHARS = 300
FLAG_MARK = ">> "
NO_MARK = "   "
INDENT = "  "


@dataclasses.dataclass(frozen=True)
class ProcessLimits:
    """Bounds on what one collection reads, whatever the container does."""

    max_processes: int = 2000
    cmdline_bytes: int = 4096
    hash_max_bytes: int = 64 * 1024 * 1024


class _Gone(Exception):
    """The process exited while we were reading it."""


# ------------------------------------------------------------------------------------ reading

def _read(path: bytes, limit: int, root_fd: int) -> bytes:
    """Up to ``limit`` bytes of a file below ``root_fd``; raw fds, as this runs 50,000 times."""
    fd = os.open(path, _O_READ, dir_fd=root_fd)
    try:
        data = os.read(fd, limit if limit < _CHUNK else _CHUNK)
        # A short read is the end: procfs hands over a whole stat/status/cgroup/cmdline in one
        # read when the buffer is large enough, and so does a regular file. Only a full chunk
        # may have more behind it (and a limit under one chunk is reached already).
        if len(data) < _CHUNK:
            return data
        chunks = [data]
        total = len(data)
        while total < limit:
            chunk = os.read(fd, min(_CHUNK, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _decode(raw: bytes) -> str:
    # backslashreplace keeps undecodable bytes visible (\xff) and the result JSON-safe.
    return raw.decode("utf-8", "backslashreplace")


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _open_root(proc_root: Path) -> int | None:
    try:
        return os.open(proc_root, _O_DIR)
    except OSError:
        return None


def _boot_time_ns(root_fd: int) -> int | None:
    try:
        data = _read(b"stat", 1024 * 1024, root_fd)
    except OSError:
        return None
    for line in data.splitlines():
        if line.startswith(b"btime "):
            try:
                return int(line.split()[1]) * _NS
            except (IndexError, ValueError):
                return None
    return None


def _clock_ticks() -> int:
    try:
        ticks = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError):
        ticks = 100
    return ticks if ticks > 0 else 100


@dataclasses.dataclass(slots=True)
class _Light:
    """What every member process costs: enough to order, flag and truncate."""

    pid: int
    base: bytes  # the pid as a path relative to the proc root
    ppid: int
    comm: str
    start_ticks: int | None
    uid: int | None
    ns_pid: int | None
    exe_raw: bytes | None
    exe_error: str | None


def _parse_stat(data: bytes) -> tuple[str, int, int | None]:
    """``pid (comm) state ppid ... starttime ...`` -> comm, ppid, starttime (clock ticks).

    comm is whatever the process named itself (spaces, ')' and newlines included), so it is
    delimited by the first '(' and the *last* ')'.
    """
    open_paren, close_paren = data.find(b"("), data.rfind(b")")
    if open_paren < 0 or close_paren < open_paren:
        raise _Gone  # not a stat line: treat like a vanished process
    comm = _decode(data[open_paren + 1:close_paren])
    fields = data[close_paren + 1:].split(None, 20)  # up to starttime, the rest unsplit
    try:
        ppid = int(fields[1])  # field 4
    except (IndexError, ValueError):
        raise _Gone from None
    try:
        start: int | None = int(fields[19])  # field 22
    except (IndexError, ValueError):
        start = None
    return comm, ppid, start


def _parse_status(data: bytes) -> tuple[int | None, int | None]:
    """Real uid (``Uid:`` first value) and the innermost ``NSpid`` (its last value)."""
    uid: int | None = None
    ns_pid: int | None = None
    at = data.find(b"\nUid:")
    if at >= 0:
        end = data.find(b"\n", at + 5)
        values = data[at + 5:end if end >= 0 else len(data)].split(None, 1)
        if values:
            try:
                uid = int(values[0])
            except ValueError:
                uid = None
    at = data.find(b"\nNSpid:")
    if at >= 0:
        end = data.find(b"\n", at + 7)
        values = data[at + 7:end if end >= 0 else len(data)].rsplit(None, 1)
        if values:
            try:
                ns_pid = int(values[-1])
            except ValueError:
                ns_pid = None
    return uid, ns_pid


def _read_light(root_fd: int, pid: int) -> _Light:
    base = b"%d" % pid
    try:
        stat_data = _read(base + b"/stat", _STAT_BYTES, root_fd)
        status_data = _read(base + b"/status", _STATUS_BYTES, root_fd)
    except OSError as exc:
        raise _Gone from exc  # without these two there is no process to describe
    comm, ppid, start = _parse_stat(stat_data)
    uid, ns_pid = _parse_status(status_data)
    exe_raw: bytes | None = None
    exe_error: str | None = None
    try:
        exe_raw = os.readlink(base + b"/exe", dir_fd=root_fd)
    except OSError as exc:
        # A zombie, or not ours to read: the other fields still describe the process.
        exe_error = f"unreadable: {_errno_name(exc)}"
    return _Light(pid, base, ppid, comm, start, uid, ns_pid, exe_raw, exe_error)


def _split_exe(raw: bytes | None) -> tuple[str | None, bool, bool]:
    """readlink text -> (path without ' (deleted)', deleted, memfd)."""
    if raw is None:
        return None, False, False
    deleted = raw.endswith(_DELETED)
    if deleted:
        raw = raw[: -len(_DELETED)]
    return _decode(raw), deleted, raw.startswith(_MEMFD)


# ------------------------------------------------------------------------------------ caches

@dataclasses.dataclass
class _Hash:
    sha256: str | None
    size: int | None
    skipped: str | None
    nlink: int | None = None


class _Collector:
    """Per-collection state: the proc root's descriptor, one hash per executable, one passwd
    per container, and small caches of repeated work."""

    def __init__(self, root_fd: int, upperdir: Path | None, limits: ProcessLimits) -> None:
        self.root_fd = root_fd
        self.upperdir = upperdir
        self.limits = limits
        self.hashes: dict[tuple[int, int, int, int], _Hash] = {}
        self.users: dict[int, str] = {}
        self.exes: dict[bytes, tuple[str | None, bool, bool]] = {}
        self.upper: dict[str, bool] = {}
        self.stamps: dict[int, str] = {}

    def rfc3339(self, ns: int) -> str:
        """``format_ns``, with the seconds part formatted once per second seen."""
        seconds, fraction = divmod(ns, _NS)
        stamp = self.stamps.get(seconds)
        if stamp is None:
            stamp = self.stamps[seconds] = format_ns(seconds * _NS)[:-11]
        return f"{stamp}.{fraction:09d}Z"

    def split_exe(self, raw: bytes | None) -> tuple[str | None, bool, bool]:
        if raw is None:
            return None, False, False
        split = self.exes.get(raw)
        if split is None:
            split = self.exes[raw] = _split_exe(raw)
        return split

    def hash_exe(self, base: bytes) -> _Hash:
        path = base + b"/exe"
        # Identity of the executable itself (stat follows /proc's magic link to the real inode,
        # deleted and memfd files included): processes of one binary are hashed once.
        try:
            st = os.stat(path, dir_fd=self.root_fd)
        except OSError as exc:
            return _Hash(None, None, f"unreadable: {_errno_name(exc)}")
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self.hashes.get(key)
        if cached is not None:
            return cached
        result = self._hash(path, st.st_size)
        result.nlink = st.st_nlink
        self.hashes[key] = result
        return result

    def _hash(self, path: bytes, size: int) -> _Hash:
        cap = self.limits.hash_max_bytes
        if size > cap:
            return _Hash(None, size, "too large")
        try:
            fd = os.open(path, _O_READ, dir_fd=self.root_fd)
        except OSError as exc:
            return _Hash(None, size, f"unreadable: {_errno_name(exc)}")
        digest = hashlib.sha256()
        read = 0
        try:
            while True:
                # Never more than the cap, even if the file grows while we read it.
                chunk = os.read(fd, min(_HASH_CHUNK, cap + 1 - read))
                if not chunk:
                    break
                read += len(chunk)
                if read > cap:
                    return _Hash(None, read, "too large")
                digest.update(chunk)
        except OSError as exc:
            return _Hash(None, size, f"unreadable: {_errno_name(exc)}")
        finally:
            os.close(fd)
        return _Hash(digest.hexdigest(), read, None)

    def load_users(self, order: list[int]) -> None:
        """Read the container's own ``/etc/passwd`` once, through its first process's root.

        One file for the whole container, read through the first process in tree order (the
        container's init) that still has a root: a process that chroots elsewhere cannot
        rename its uid by bringing its own passwd, and 10,000 processes cost no extra stat.
        """
        for pid in order[:_ROOT_CANDIDATES]:
            names = self._passwd(b"%d/root" % pid)
            if names is not None:
                self.users = names
                return

    def _passwd(self, root: bytes) -> dict[int, str] | None:
        """uid -> name from ``<root>/etc/passwd``; None when the root itself is unreadable."""
        names: dict[int, str] = {}
        try:
            os.stat(root, dir_fd=self.root_fd)
        except OSError:
            return None  # the process is gone: try another one
        # The container owns its /etc: refuse symlinks (an absolute link would be resolved
        # against the agent's root, not the container's) and anything but a regular file.
        try:
            if stat.S_ISLNK(os.stat(root + b"/etc", dir_fd=self.root_fd,
                                    follow_symlinks=False).st_mode):
                return names
            fd = os.open(root + b"/etc/passwd", _O_READ | os.O_NOFOLLOW | os.O_NONBLOCK,
                         dir_fd=self.root_fd)
        except OSError:
            return names
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return names
            data = os.read(fd, _PASSWD_BYTES)
        except OSError:
            return names
        finally:
            os.close(fd)
        for line in data.split(b"\n"):
            fields = line.split(b":")
            if len(fields) < 3 or not fields[0] or line.startswith(b"#"):
                continue
            try:
                uid = int(fields[2])
            except ValueError:
                continue
            names.setdefault(uid, _decode(fields[0]))
        return names

    def in_upper(self, exe: str | None, deleted: bool, memfd: bool) -> bool | None:
        """Whether the executable is a regular file in the container's upper layer.

        None when unknown: no upperdir, or the file is deleted (its path no longer tells which
        layer it came from). A memfd is in no layer at all.
        """
        if memfd:
            return False
        if self.upperdir is None or exe is None or deleted:
            return None
        cached = self.upper.get(exe)
        if cached is None:
            cached = self.upper[exe] = self._in_upper(exe)
        return cached

    def _in_upper(self, exe: str) -> bool:
        assert self.upperdir is not None
        upper = os.path.normpath(os.fsencode(self.upperdir))
        candidate = os.path.normpath(upper + b"/" + os.fsencode(exe).lstrip(b"/"))
        # Inside the upperdir, and reached without following a symlink the container planted.
        if not candidate.startswith(upper.rstrip(b"/") + b"/"):
            return False
        if os.path.realpath(candidate) != os.path.realpath(upper) + candidate[len(upper):]:
            return False
        try:
            return stat.S_ISREG(os.lstat(candidate).st_mode)
        except OSError:
            return False


# ------------------------------------------------------------------------------------ finding

def container_pids(container_id: str, proc_root: Path = Path("/proc")) -> list[int]:
    """Host pids of the container's processes (ascending), found through their cgroup files.

    ``container_id`` may be short (12), full (64) or ``containerd://<64>``; anything that is not
    at least 12 hex characters matches no process.
    """
    root_fd = _open_root(proc_root)
    if root_fd is None:
        return []
    try:
        return _scan(container_id, root_fd)
    finally:
        os.close(root_fd)


def _scan(container_id: str, root_fd: int) -> list[int]:
    wanted = cgroups.normalise_id(container_id)
    if not cgroups.is_valid_id(wanted):
        return []
    needle = wanted.encode()
    pids: list[int] = []
    # Processes of one container share one cgroup file's content: parse each content once.
    verdicts: dict[bytes, bool] = {}
    for name in os.listdir(root_fd):
        if not (name.isdigit() and name.isascii()):
            continue
        pid = int(name)
        try:
            data = _read(b"%d/cgroup" % pid, _CGROUP_BYTES, root_fd)
        except OSError:
            continue  # gone, or not a process directory
        # Cheap substring test first: almost every process on a node is in another cgroup.
        if needle not in data:
            continue
        verdict = verdicts.get(data)
        if verdict is None:
            verdict = verdicts[data] = any(
                cgroups.id_matches(found, wanted)
                for found in cgroups.container_ids_from_cgroup(_decode(data)))
        if verdict:
            pids.append(pid)
    pids.sort()
    return pids


def _tree_order(items: dict[int, _Light]) -> list[int]:
    """Roots (parent outside the set) first, then depth-first, siblings by pid."""
    children: dict[int, list[int]] = {}
    roots: list[int] = []
    for pid in sorted(items):
        ppid = items[pid].ppid
        if ppid in items and ppid != pid:
            children.setdefault(ppid, []).append(pid)
        else:
            roots.append(pid)
    order: list[int] = []
    seen: set[int] = set()

    def walk(start: int) -> None:
        stack = [start]  # iterative: a chain of thousands of processes must not recurse
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            order.append(pid)
            stack.extend(reversed(children.get(pid, ())))

    for root in roots:
        walk(root)
    # A parent loop (pids reused while we read) reaches no root: keep those processes anyway.
    for pid in sorted(items):
        if pid not in seen:
            walk(pid)
    return order


def _ancestors(pid: int, items: dict[int, _Light]) -> list[int]:
    chain: list[int] = []
    seen = {pid}
    ppid = items[pid].ppid
    while ppid in items and ppid not in seen:
        chain.append(ppid)
        seen.add(ppid)
        ppid = items[ppid].ppid
    return chain


def collect_process_tree(
    container_id: str,
    *,
    proc_root: Path = Path("/proc"),
    upperdir: Path | None = None,
    flag_pid: int | None = None,
    flag_vpid: int | None = None,
    flag_exe: str | None = None,
    limits: ProcessLimits = ProcessLimits(),  # frozen, so sharing the default is safe
) -> ProcessTree:
    """The container's processes, parents first, the alert's process(es) flagged, rendered.

    ``flag_pid`` is the host pid (Falco ``proc.pid``), ``flag_vpid`` the pid inside the
    container (``proc.vpid``), ``flag_exe`` the executable path (``proc.exepath``). With more
    than ``limits.max_processes`` processes, the flagged ones and their ancestors are kept first,
    then the top of the tree, and ``truncated`` is set. A proc root that cannot be opened gives
    an empty tree.
    """
    tree = ProcessTree(container_id=cgroups.normalise_id(container_id))
    root_fd = _open_root(proc_root)
    if root_fd is None:
        return tree
    # Tens of thousands of short-lived objects, none in a reference cycle, would set off
    # several full garbage collections for nothing (~7% of the time at 10,000 processes).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        tree.processes, tree.truncated = _collect(
            container_id, root_fd, upperdir, flag_pid, flag_vpid, flag_exe, limits)
    finally:
        os.close(root_fd)
        if gc_was_enabled:
            gc.enable()
    tree.rendered = render_tree(tree.processes)
    return tree


def _collect(container_id: str, root_fd: int, upperdir: Path | None, flag_pid: int | None,
             flag_vpid: int | None, flag_exe: str | None,
             limits: ProcessLimits) -> tuple[list[ProcessInfo], bool]:
    flag_exe_path = _normalise_exe(flag_exe) if flag_exe else None
    lights: dict[int, _Light] = {}
    for pid in _scan(container_id, root_fd):
        try:
            lights[pid] = _read_light(root_fd, pid)
        except _Gone:
            continue

    def is_flagged(light: _Light) -> bool:
        if flag_pid is not None and light.pid == flag_pid:
            return True
        if flag_vpid is not None and light.ns_pid == flag_vpid:
            return True
        if flag_exe_path is not None and light.exe_raw is not None:
            return _split_exe(light.exe_raw)[0] == flag_exe_path
        return False

    order = _tree_order(lights)
    flagged = {pid for pid in order if is_flagged(lights[pid])}
    truncated = len(order) > limits.max_processes
    if truncated:
        keep: dict[int, None] = {}  # an ordered set
        for pid in order:
            if pid in flagged:
                for member in [pid, *_ancestors(pid, lights)]:
                    keep[member] = None
        for pid in order:
            if len(keep) >= limits.max_processes:
                break
            keep[pid] = None
        kept = set(list(keep)[: limits.max_processes])
        order = [pid for pid in order if pid in kept]

    collector = _Collector(root_fd, upperdir, limits)
    collector.load_users(order)
    boot_ns = _boot_time_ns(root_fd)
    ticks = _clock_ticks()
    processes: list[ProcessInfo] = []
    for pid in order:
        info = _describe(collector, lights[pid], boot_ns, ticks, pid in flagged)
        if info is not None:
            processes.append(info)
    return processes, truncated


def _normalise_exe(exepath: str) -> str:
    """Falco's ``proc.exepath`` as readlink shows it: Falco writes ``memfd:<name>`` for what the
    kernel calls ``/memfd:<name> (deleted)``."""
    path = exepath.removesuffix(" (deleted)")
    return "/" + path if path.startswith("memfd:") else path


def _describe(collector: _Collector, light: _Light, boot_ns: int | None, ticks: int,
              flagged: bool) -> ProcessInfo | None:
    base = light.base
    root_fd = collector.root_fd
    bound = collector.limits.cmdline_bytes
    try:
        raw = _read(base + b"/cmdline", bound + 1, root_fd)
    except OSError as exc:
        if exc.errno in _ENOENT:
            return None  # exited since the first read
        raw = b""
    cmdline_truncated = len(raw) > bound
    if cmdline_truncated:
        raw = raw[:bound]
    elif raw.endswith(b"\0"):
        raw = raw[:-1]
    # One decode then split: a NUL never belongs to a multi-byte sequence, so this equals
    # decoding argument by argument.
    argv = raw.decode("utf-8", "backslashreplace").split("\0") if raw else []
    try:
        cwd: str | None = _decode(os.readlink(base + b"/cwd", dir_fd=root_fd))
    except OSError:
        cwd = None
    exe, deleted, memfd = collector.split_exe(light.exe_raw)
    hashed = collector.hash_exe(base) if exe is not None else _Hash(None, None, light.exe_error)
    if (deleted or memfd) and hashed.nlink and light.exe_raw is not None:
        # " (deleted)" and "/memfd:" are also text a file can be named (a dropper hiding as
        # deleted or fileless): a file that still has a link is neither.
        exe, deleted, memfd = _decode(light.exe_raw), False, False
    start_time = None
    if boot_ns is not None and light.start_ticks is not None:
        start_time = collector.rfc3339(boot_ns + light.start_ticks * _NS // ticks)
    return ProcessInfo(
        pid=light.pid,
        ns_pid=light.ns_pid,
        ppid=light.ppid,
        uid=light.uid,
        user=collector.users.get(light.uid) if light.uid is not None else None,
        start_time=start_time,
        cmdline=argv,
        cmdline_truncated=cmdline_truncated,
        comm=light.comm,
        exe=exe,
        exe_deleted=deleted,
        exe_memfd=memfd,
        cwd=cwd,
        sha256=hashed.sha256,
        exe_size=hashed.size,
        hash_skipped=hashed.skipped,
        in_upper_layer=collector.in_upper(exe, deleted, memfd),
        flagged=flagged,
    )


# ---------------------------------------------------------------------------------- rendering

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Control and format characters (bidi overrides, zero-width), line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Words shlex.quote leaves alone (its own safe set), separated by NULs; no word empty.
_PLAIN_ARGV = re.compile(r"[\w@%+=:,./-]+(?:\0[\w@%+=:,./-]+)*", re.ASCII)


def escape(text: str) -> str:
    """Alert-controlled text made printable on one line: control characters become escapes."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, fast
    out: list[str] = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in _UNSAFE_CATEGORIES:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _depths(processes: list[ProcessInfo]) -> list[int]:
    depth: dict[int, int] = {}
    result: list[int] = []
    for proc in processes:
        level = depth[proc.ppid] + 1 if proc.ppid in depth and proc.ppid != proc.pid else 0
        depth[proc.pid] = level
        result.append(level)
    return result


class _Renderer:
    """Renders lines, escaping each distinct string once (argv words and paths repeat a lot)."""

    def __init__(self) -> None:
        self.words: dict[str, str] = {}
        self.heads: dict[tuple[object, ...], str] = {}

    def word(self, text: str) -> str:
        """An argv word: escaped, then shell-quoted so word boundaries stay visible."""
        shown = self.words.get(text)
        if shown is None:
            shown = self.words[text] = shlex.quote(escape(text)) if text else "''"
        return shown

    def argv(self, argv: list[str], truncated: bool) -> str:
        # Most argvs need no quoting at all: one test of the whole argv instead of one per word.
        joined = "\0".join(argv)
        if argv and _PLAIN_ARGV.fullmatch(joined):
            text = joined.replace("\0", " ")
        else:
            text = " ".join([self.word(arg) for arg in argv])
        if len(text) > RENDER_CMDLINE_CHARS:
            text = text[:RENDER_CMDLINE_CHARS] + f"…[+{len(text) - RENDER_CMDLINE_CHARS} chars]"
        elif truncated:
            text += "…[truncated]"
        return text

    def who_and_what(self, proc: ProcessInfo) -> str:
        """``user exe markers``: shared by many processes, so built once per distinct value."""
        key = (proc.user, proc.uid, proc.exe, proc.comm if proc.exe is None else None,
               proc.exe_deleted, proc.exe_memfd, proc.in_upper_layer)
        shown = self.heads.get(key)
        if shown is None:
            parts = [escape(proc.user) if proc.user else
                     str(proc.uid) if proc.uid is not None else "?"]
            if proc.exe is not None:
                parts.append(escape(proc.exe))
                if proc.exe_deleted:
                    parts.append("(deleted)")
            else:
                parts.append(f"[{escape(proc.comm or '?')}]")
            if proc.exe_memfd:
                parts.append("[memfd]")
            if proc.in_upper_layer:
                parts.append("[upper]")
            shown = self.heads[key] = " ".join(parts)
        return shown

    def line(self, proc: ProcessInfo, level: int) -> str:
        mark = FLAG_MARK if proc.flagged else NO_MARK
        ns_pid = proc.ns_pid if proc.ns_pid is not None else "?"
        argv = self.argv(proc.cmdline, proc.cmdline_truncated)
        return (f"{mark}{INDENT * level}{proc.pid}/{ns_pid} {self.who_and_what(proc)}"
                f"{' ' if argv else ''}{argv}")


def render_tree(processes: list[ProcessInfo]) -> str:
    """One line per process, indented under its parent: ``pid/ns_pid user exe argv``.

    Markers: ``>>`` opens the line of a flagged process, ``(deleted)`` follows a deleted
    executable, ``[memfd]`` an anonymous one, ``[upper]`` one in the container's writable layer;
    ``[comm]`` stands for the executable when it cannot be read. Alert-controlled text is escaped
    (``\\n``, ``\\x1b``, ...), so a line never breaks inside a process; argv words are
    shell-quoted so that their boundaries show (display only: nothing is ever run).
    """
    renderer = _Renderer()
    return "\n".join([renderer.line(proc, level)
                      for proc, level in zip(processes, _depths(processes), strict=True)])


def excerpt(tree: ProcessTree, around: int = 40) -> str:
    """About ``around`` rendered lines: the flagged processes with their ancestors and the lines
    near them, or the top of the tree when nothing is flagged. Elisions read ``...``."""
    processes = tree.processes
    lines = render_tree(processes).split("\n") if processes else []
    budget = max(around, 1)
    index = {proc.pid: i for i, proc in enumerate(processes)}
    flagged = [i for i, proc in enumerate(processes) if proc.flagged]
    chosen: set[int] = set()
    if not flagged:
        chosen.update(range(min(budget, len(lines))))
    else:
        for i in flagged:
            if len(chosen) >= budget:
                break
            chosen.add(i)
            # Its ancestors, nearest first, so a deep chain keeps the context that matters.
            seen = {processes[i].pid}
            ppid = processes[i].ppid
            while ppid in index and ppid not in seen and len(chosen) < budget:
                seen.add(ppid)
                chosen.add(index[ppid])
                ppid = processes[index[ppid]].ppid
        # Then widen a window around each flagged line, after it first (its children).
        distance = 1
        while len(chosen) < min(budget, len(lines)):
            grew = False
            for i in flagged:
                for j in (i + distance, i - distance):
                    if 0 <= j < len(lines) and len(chosen) < budget and j not in chosen:
                        chosen.add(j)
                        grew = True
            if not grew and all(i - distance < 0 and i + distance >= len(lines)
                                for i in flagged):
                break
            distance += 1
    out: list[str] = []
    previous = -1
    for i in sorted(chosen):
        if i != previous + 1:
            out.append("   ...")
        out.append(lines[i])
        previous = i
    if previous != len(lines) - 1 and lines:
        out.append(f"   ... ({len(lines) - 1 - previous} more below)")
    if tree.truncated:
        out.append("   ... (tree truncated: more processes than collected)")
    return "\n".join(out)
