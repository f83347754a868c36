"""What a container changed in its filesystem: ``docker diff`` computed from the overlay upperdir.

Everything a container writes lands in its overlay upperdir, so walking that directory against the
image's lowerdirs gives what ``docker diff`` shows (moby pkg/archive changes, containerd's
continuity fs diff): ``A`` added, ``C`` changed, ``D`` deleted, with the overlay's own encodings:

- a character device 0/0 (or, in a directory marked ``opaque=x``, an empty regular file with the
  ``overlay.whiteout`` xattr) is a whiteout: the lower path was deleted;
- a directory with ``overlay.opaque=y`` replaces the lower one: it is ``C`` and whatever the
  image had in it that the upper does not is ``D``;
- a directory with ``overlay.redirect`` was renamed (``redirect_dir=on``): its lower contents show
  under the new name, and are reported there as added;
- a regular file with ``overlay.metacopy`` holds metadata only (``metacopy=on``, e.g. after a
  chmod): it is a change of metadata and its data, still the image's, is not hashed as new;
- every directory that holds a change and exists in the image is ``C`` (``C /etc`` for a change in
  ``/etc/passwd``), as is one whose mode, owner or mtime differ from the image's.

The upperdir is written by the (possibly hostile) container, and the agent reads it as root on the
host: nothing in it is followed. Directories are opened relative to their parent's descriptor with
``O_NOFOLLOW``, entries are stat'ed with ``fstatat(AT_SYMLINK_NOFOLLOW)``, files are opened with
``O_NOFOLLOW|O_NONBLOCK`` and checked to be the inode that was listed. Files are read with
``O_NOATIME`` when allowed, so that collecting evidence does not change it.

The walk is one pass over the upperdir with one stat per entry and one open per regular file (for
the ELF / ``#!`` header); lower layers are never walked, only looked up (listed once per directory
that the upper touches, when it touches many names). Hashes, the expensive part, are computed
after the listing is bounded, most interesting entries first, within per-file and total caps.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from responder.agent.models import DiffEntry, DiffSummary, FilesystemDiff
from responder.models.times import format_ns

MIB = 1 << 20

Kind = Literal["A", "C", "D"]
FileType = Literal["file", "dir", "symlink", "other"]
#: Called for each listed dropped executable: ``(host path in the upperdir, entry) -> sha256 of the
#: stored copy`` (or None). The path is attacker-controlled: open it with ``open_upper_file``.
Quarantine = Callable[[Path, DiffEntry], str | None]

SKIP_TOO_LARGE = "file larger than cap"
SKIP_BUDGET = "total hash budget spent"
SKIP_UNREADABLE = "unreadable"
SKIP_CHANGED = "changed while collecting"
SKIP_METACOPY = "metadata-only copy-up: the data is the image's (lower layer), not new"

#: Directories deeper than this are listed but not entered (one descriptor is held per level).
MAX_DEPTH = 512
#: An upper directory touching more names than this gets its lower directories listed once
#: instead of one lookup per name.
_PREFETCH_NAMES = 16
_CHUNK = MIB

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)

# What a name is in one lower layer.
_DIR, _NONDIR, _WHITEOUT = 1, 2, 3
# What became of a regular file in the upper listing.
_DONE, _HIDDEN, _GONE, _OTHER = object(), object(), object(), object()


@dataclass(frozen=True, slots=True)
class DiffLimits:
    max_entries: int = 1000
    hash_file_max_bytes: int = 64 * MIB
    hash_total_max_bytes: int = 512 * MIB
    quarantine: bool = False
    quarantine_max_bytes: int = 32 * MIB


DEFAULT_LIMITS = DiffLimits()


class _Xattrs:
    """The overlay xattr names to trust: ``trusted.overlay.*``, or ``user.overlay.*`` on
    ``userxattr`` (rootless) mounts. Never both: on a normal mount the container can set
    ``user.overlay.*`` itself, and a forged whiteout or metacopy mark would hide a dropped file
    (the overlay refuses its own namespace to the container, so the mount's one is safe)."""

    def __init__(self, userxattr: bool) -> None:
        prefixes = ("user.overlay.",) if userxattr else ("trusted.overlay.",)
        self.opaque = tuple(p + "opaque" for p in prefixes)
        self.redirect = tuple(p + "redirect" for p in prefixes)
        self.metacopy = tuple(p + "metacopy" for p in prefixes)
        self.whiteout = tuple(p + "whiteout" for p in prefixes)
        self.metacopy_set = frozenset(self.metacopy)
        self.whiteout_set = frozenset(self.whiteout)

    @staticmethod
    def first(target: int | str, names: tuple[str, ...], present: Sequence[str]) -> bytes | None:
        """The value of the first of ``names`` that is ``present`` on a descriptor or path."""
        for name in names:
            if name in present:
                try:
                    if isinstance(target, int):
                        return os.getxattr(target, name)
                    return os.getxattr(target, name, follow_symlinks=False)
                except OSError:
                    continue
        return None

    @staticmethod
    def listing(target: int | str) -> list[str]:
        try:
            if isinstance(target, int):
                return os.listxattr(target)
            return os.listxattr(target, follow_symlinks=False)
        except OSError:
            return []


class _LowerDir:
    """A directory of one lower layer; looked up name by name, or listed once when many names
    are needed (lower layers are image content, but still never followed)."""

    __slots__ = ("_listing", "path", "xwhiteouts")

    def __init__(self, path: str, xwhiteouts: bool) -> None:
        self.path = path
        self.xwhiteouts = xwhiteouts  # opaque=x: may hold xattr whiteouts
        self._listing: dict[str, int] | None = None

    def kind(self, name: str, xattrs: _Xattrs) -> int | None:
        if self._listing is not None:
            return self._listing.get(name)
        try:
            st = os.lstat(self.path + "/" + name)
        except OSError:
            return None
        return self._classify(st, name, xattrs)

    def listing(self, xattrs: _Xattrs) -> dict[str, int]:
        if self._listing is None:
            found: dict[str, int] = {}
            try:
                with os.scandir(self.path) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            found[entry.name] = _DIR
                        elif entry.is_symlink() or (entry.is_file(follow_symlinks=False)
                                                    and not self.xwhiteouts):
                            found[entry.name] = _NONDIR
                        else:
                            found[entry.name] = self._classify(
                                entry.stat(follow_symlinks=False), entry.name, xattrs)
            except OSError:
                pass
            self._listing = found
        return self._listing

    def _classify(self, st: os.stat_result, name: str, xattrs: _Xattrs) -> int:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return _DIR
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            return _WHITEOUT
        if self.xwhiteouts and stat.S_ISREG(mode) and st.st_size == 0:
            path = self.path + "/" + name
            if xattrs.first(path, xattrs.whiteout, xattrs.listing(path)) is not None:
                return _WHITEOUT
        return _NONDIR


View = list[_LowerDir]


def _lower_kind(view: View, name: str, xattrs: _Xattrs) -> int | None:
    """_DIR or _NONDIR when the image has ``name`` in this directory, else None."""
    for lower in view:
        kind = lower.kind(name, xattrs)
        if kind is not None:
            return None if kind == _WHITEOUT else kind
    return None


def _lower_file(view: View, name: str, xattrs: _Xattrs) -> str | None:
    for lower in view:
        kind = lower.kind(name, xattrs)
        if kind is not None:
            return lower.path + "/" + name if kind == _NONDIR else None
    return None


def _child_view(view: View, name: str, xattrs: _Xattrs) -> View:
    """The lower directories that make up the image's directory ``name``: top down, until a
    layer hides the ones below (opaque directory, whiteout or non-directory)."""
    out: View = []
    for lower in view:
        kind = lower.kind(name, xattrs)
        if kind is None:
            continue
        if kind != _DIR:
            break
        path = lower.path + "/" + name
        opaque = xattrs.first(path, xattrs.opaque, xattrs.listing(path))
        out.append(_LowerDir(path, opaque == b"x"))
        if opaque == b"y":
            break
    return out


def _view_at(root: View, path: str, xattrs: _Xattrs) -> View:
    view = root
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." or not view:
            return []
        view = _child_view(view, part, xattrs)
    return view


def _lower_names(view: View, xattrs: _Xattrs) -> dict[str, int]:
    merged: dict[str, int] = {}
    for lower in view:
        for name, kind in lower.listing(xattrs).items():
            merged.setdefault(name, kind)
    return {name: kind for name, kind in merged.items() if kind != _WHITEOUT}


class _Record:
    """A change found by the walk; becomes a DiffEntry only if it is listed."""

    __slots__ = ("elf", "executable", "flagged", "ftype", "hash_skipped", "kind", "link_target",
                 "metacopy", "path", "runnable", "script", "sha256", "size", "source", "st",
                 "unreadable")

    def __init__(self, path: str, kind: Kind, ftype: FileType | None,
                 st: os.stat_result | None, source: str | None = None) -> None:
        self.path = path
        self.kind: Kind = kind
        self.ftype: FileType | None = ftype
        self.st = st
        self.size = st.st_size if st is not None and ftype == "file" else None
        self.source = source  # host path of a lower file shown at a new path, else None (upper)
        self.link_target: str | None = None
        self.executable = ftype == "file" and st is not None and bool(st.st_mode & 0o111)
        self.elf = False
        self.script = False
        self.metacopy = False
        self.unreadable = False
        self.flagged = False
        self.sha256: str | None = None
        self.hash_skipped: str | None = None
        # A regular file that can be run: an x bit, or an ELF (``ld.so ./file`` needs no x bit).
        self.runnable = self.executable


def _file_type(mode: int) -> FileType:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _open_file(name: str, dir_fd: int | None) -> int:
    try:
        return os.open(name, _FILE_FLAGS | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        # O_NOATIME needs ownership or CAP_FOWNER.
        return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)


def _read_header(fd: int) -> bytes:
    try:
        return os.read(fd, 4)
    except OSError:
        return b""


def _same_times(a: int, b: int) -> bool:
    # Like moby's sameFsTime: some filesystems and tar round-trips drop the nanoseconds.
    return a == b or (a // 1_000_000_000 == b // 1_000_000_000
                      and (a % 1_000_000_000 == 0 or b % 1_000_000_000 == 0))


def _display(path: str) -> str:
    """Names are bytes; keep undecodable ones visible (``\\xff``) rather than unencodable."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return path


def _normalise(paths: Collection[str]) -> set[str]:
    out: set[str] = set()
    for path in paths:
        if isinstance(path, str) and path.startswith("/"):
            normal = posixpath.normpath(path)
            # normpath keeps a leading '//' (POSIX allows it to be special); containers do not.
            out.add("/" + normal.lstrip("/"))
    return out


class _Frame:
    """An upper directory being walked: its descriptor and what the image has at its path."""

    __slots__ = ("base", "changed", "depth", "fd", "in_base", "origin", "path", "pending",
                 "replaced", "st")

    def __init__(self, fd: int, path: str, base: View, origin: View, *, depth: int,
                 st: os.stat_result | None, in_base: int | None, replaced: bool) -> None:
        self.fd = fd
        self.path = path
        self.base = base  # the image's directory at this path
        self.origin = origin  # the lower directories merged into it (base unless cut off)
        self.depth = depth
        self.st = st
        self.in_base = in_base
        self.replaced = replaced  # opaque or redirected: reported as changed
        self.changed = False  # holds a reported change
        self.pending: list[tuple[str, os.stat_result, int | None]] = []


class _Walker:
    def __init__(self, lowerdirs: Sequence[Path], *, exclude: set[str], xattrs: _Xattrs) -> None:
        self.xattrs = xattrs
        self.exclude = exclude
        self.records: list[_Record] = []
        self.truncated = False
        self.root_view: View = []
        for lower in lowerdirs:
            path = str(lower)
            if os.path.isdir(path):
                opaque = xattrs.first(path, xattrs.opaque, xattrs.listing(path))
                self.root_view.append(_LowerDir(path, opaque == b"x"))

    # -- the upper walk -------------------------------------------------------------------

    def walk(self, root_fd: int) -> None:
        xattrs = self.xattrs
        root_x = xattrs.first(root_fd, xattrs.opaque, xattrs.listing(root_fd)) == b"x"
        # The caller owns root_fd; frames above the root own theirs.
        stack = [_Frame(root_fd, "/", self.root_view, self.root_view, depth=0, st=None,
                        in_base=_DIR, replaced=False)]
        try:
            self._list(stack[0], root_x)
            while stack:
                frame = stack[-1]
                if frame.pending:
                    name, st, in_base = frame.pending.pop()
                    child = self._enter(frame, name, st, in_base)
                    if child is not None:
                        stack.append(child)
                    continue
                stack.pop()
                if stack:
                    os.close(frame.fd)
                    if self._finish_dir(frame):
                        stack[-1].changed = True
        finally:
            for frame in stack[1:]:
                os.close(frame.fd)

    def _list(self, frame: _Frame, xwhiteouts: bool) -> None:
        """Classify every entry of an upper directory; subdirectories are queued."""
        xattrs = self.xattrs
        try:
            with os.scandir(frame.fd) as it:
                entries = list(it)
        except OSError:
            entries = []
        base, origin = frame.base, frame.origin
        fast = origin is base
        if len(entries) > _PREFETCH_NAMES or not fast:
            for lower in base:
                lower.listing(xattrs)
        prefix = frame.path if frame.path == "/" else frame.path + "/"
        exclude, records, dir_fd = self.exclude, self.records, frame.fd
        present: set[str] = set()
        hidden: set[str] = set()
        for entry in entries:
            name = entry.name
            path = prefix + name
            if path in exclude:
                present.add(name)  # not a deletion either
                continue
            if entry.is_file(follow_symlinks=False):
                # Regular files are opened anyway (header, xattrs): stat them through that open.
                outcome = self._upper_file(frame, name, path, base, xwhiteouts)
                if outcome is _GONE:
                    continue
                if outcome is _HIDDEN:
                    hidden.add(name)
                    if fast and base and _lower_kind(base, name, xattrs) is not None:
                        records.append(_Record(path, "D", None, None))
                        frame.changed = True
                    continue
                if outcome is _DONE:
                    present.add(name)
                    frame.changed = True
                    continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since listed
            mode = st.st_mode
            if stat.S_ISCHR(mode) and st.st_rdev == 0:
                hidden.add(name)
                if fast and base and _lower_kind(base, name, xattrs) is not None:
                    records.append(_Record(path, "D", None, None))
                    frame.changed = True
                continue
            present.add(name)
            in_base = _lower_kind(base, name, xattrs) if base else None
            if stat.S_ISDIR(mode):
                frame.pending.append((name, st, in_base))
                continue
            record = _Record(path, "C" if in_base is not None else "A", _file_type(mode), st)
            if record.ftype == "symlink":
                try:
                    record.link_target = _display(os.readlink(name, dir_fd=dir_fd))
                except OSError:
                    record.unreadable = True
            elif record.ftype == "file":
                record.unreadable = True  # listed as something else, or could not be opened
            records.append(record)
            frame.changed = True
        if not fast:
            self._merge_lowers(frame, prefix, present, hidden)
        # Popped from the end: reverse so that directories are entered in listing order.
        frame.pending.reverse()

    def _upper_file(self, frame: _Frame, name: str, path: str, base: View,
                    xwhiteouts: bool) -> object:
        """Record a regular upper file (header, metacopy state) through one O_NOFOLLOW open.

        Returns _DONE, _HIDDEN (an xattr whiteout), _GONE, or _OTHER when the name is no longer
        a regular file (swapped since listed) and must be looked at by lstat."""
        try:
            fd = _open_file(name, frame.fd)
        except FileNotFoundError:
            return _GONE
        except OSError:
            return _OTHER  # a symlink swapped in (ELOOP), or unreadable
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _OTHER
            try:
                present = os.listxattr(fd)
            except OSError:
                present = []
            xattrs = self.xattrs
            if present and xwhiteouts and st.st_size == 0 and not xattrs.whiteout_set.isdisjoint(
                    present):
                return _HIDDEN
            in_base = _lower_kind(base, name, xattrs) if base else None
            record = _Record(path, "C" if in_base is not None else "A", "file", st)
            if present and not xattrs.metacopy_set.isdisjoint(present):
                record.metacopy = True
                header = self._metacopy_header(frame, name, fd, present)
            else:
                header = _read_header(fd)
        finally:
            os.close(fd)
        record.elf = header == b"\x7fELF"
        record.script = header[:2] == b"#!"
        record.runnable = record.executable or record.elf
        self.records.append(record)
        return _DONE

    def _merge_lowers(self, frame: _Frame, prefix: str, present: set[str],
                      hidden: set[str]) -> None:
        """For a directory cut off from the image (opaque, under an opaque one, or renamed):
        what the image had and the merged view lacks is deleted; what the merged view shows from
        a renamed origin is added here."""
        xattrs = self.xattrs
        base_names = _lower_names(frame.base, xattrs) if frame.base else {}
        origin_names = _lower_names(frame.origin, xattrs) if frame.origin else {}
        for name in base_names:
            if name in present or (name in origin_names and name not in hidden):
                continue
            path = prefix + name
            if path not in self.exclude:
                self.records.append(_Record(path, "D", None, None))
                frame.changed = True
        for name in origin_names:
            if name in present or name in hidden:
                continue
            path = prefix + name
            if path in self.exclude:
                continue
            base_child = (_child_view(frame.base, name, xattrs)
                          if base_names.get(name) == _DIR else [])
            self._lower_subtree(frame.origin, name, path, base_child, base_names.get(name))
            frame.changed = True

    def _enter(self, parent: _Frame, name: str, st: os.stat_result,
               in_base: int | None) -> _Frame | None:
        xattrs = self.xattrs
        path = (parent.path if parent.path == "/" else parent.path + "/") + name
        kind: Kind = "C" if in_base is not None else "A"
        if parent.depth + 1 >= MAX_DEPTH:
            self.truncated = True
            self._dir_record(path, kind, st)
            parent.changed = True
            return None
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except OSError:
            fd = -1
        if fd >= 0 and os.fstat(fd).st_ino != st.st_ino:
            os.close(fd)
            fd = -1
        if fd < 0:
            # Swapped or unreadable since listed: report what was listed, do not enter.
            self._dir_record(path, kind, st)
            parent.changed = True
            return None
        present = xattrs.listing(fd)
        opaque = xattrs.first(fd, xattrs.opaque, present)
        redirect = xattrs.first(fd, xattrs.redirect, present)
        base = _child_view(parent.base, name, xattrs) if in_base == _DIR else []
        if opaque == b"y":
            origin: View = []
        elif redirect:
            target = redirect.decode("utf-8", "surrogateescape")
            if target.startswith("/"):
                origin = _view_at(self.root_view, target, xattrs)
            elif "/" not in target:
                origin = _child_view(parent.origin, target, xattrs)
            else:
                origin = []
        elif parent.origin is parent.base:
            origin = base  # the same object: the fast path
        else:
            origin = _child_view(parent.origin, name, xattrs) if parent.origin else []
        frame = _Frame(fd, path, base, origin, depth=parent.depth + 1, st=st, in_base=in_base,
                       replaced=opaque == b"y" or bool(redirect))
        self._list(frame, opaque == b"x")
        return frame

    def _finish_dir(self, frame: _Frame) -> bool:
        """Record a walked directory once its children are known; True when reported."""
        st = frame.st
        assert st is not None
        if frame.in_base is None:
            self._dir_record(frame.path, "A", st)
            return True
        report = frame.changed or frame.replaced or frame.in_base != _DIR
        if not report and frame.base:
            try:
                lower = os.lstat(frame.base[0].path)
            except OSError:
                report = True
            else:
                report = (stat.S_IMODE(lower.st_mode) != stat.S_IMODE(st.st_mode)
                          or lower.st_uid != st.st_uid or lower.st_gid != st.st_gid
                          or not _same_times(lower.st_mtime_ns, st.st_mtime_ns))
        if report:
            self._dir_record(frame.path, "C", st)
        return report

    def _dir_record(self, path: str, kind: Kind, st: os.stat_result) -> None:
        self.records.append(_Record(path, kind, "dir", st))

    def _metacopy_header(self, frame: _Frame, name: str, fd: int,
                         present: Sequence[str]) -> bytes:
        """The header of the image data behind a metadata-only upper file."""
        redirect = self.xattrs.first(fd, self.xattrs.redirect, present)
        data: str | None
        if redirect and redirect.startswith(b"/"):
            directory, _, base_name = redirect.decode("utf-8", "surrogateescape").rpartition("/")
            data = _lower_file(_view_at(self.root_view, directory, self.xattrs), base_name,
                               self.xattrs)
        elif redirect and b"/" not in redirect:
            data = _lower_file(frame.origin, redirect.decode("utf-8", "surrogateescape"),
                               self.xattrs)
        else:
            data = _lower_file(frame.origin, name, self.xattrs)
        if data is None:
            return b""
        try:
            lower_fd = _open_file(data, None)
        except OSError:
            return b""
        try:
            return _read_header(lower_fd)
        finally:
            os.close(lower_fd)

    # -- lower content shown at a new path (renamed directories) --------------------------

    def _lower_subtree(self, origin: View, name: str, path: str, base: View,
                       in_base: int | None) -> None:
        """Report an origin entry (and, for a directory, all below it) that the merged view
        shows at ``path``: image content moved there. The image's own ``path`` is ``base``."""
        xattrs = self.xattrs
        work: list[tuple[View, str, str, View, int | None]] = [(origin, name, path, base, in_base)]
        while work:
            origin, name, path, base, in_base = work.pop()
            source = _lower_file(origin, name, xattrs)
            kind: Kind = "C" if in_base is not None else "A"
            if source is not None:
                try:
                    st = os.lstat(source)
                except OSError:
                    continue
                record = _Record(path, kind, _file_type(st.st_mode), st, source)
                if record.ftype == "file":
                    try:
                        fd = _open_file(source, None)
                    except OSError:
                        record.unreadable = True
                    else:
                        try:
                            header = _read_header(fd)
                        finally:
                            os.close(fd)
                        record.elf = header == b"\x7fELF"
                        record.script = header[:2] == b"#!"
                        record.runnable = record.executable or record.elf
                elif record.ftype == "symlink":
                    try:
                        record.link_target = _display(os.readlink(source))
                    except OSError:
                        record.unreadable = True
                self.records.append(record)
                continue
            child_origin = _child_view(origin, name, xattrs)
            if not child_origin:
                continue
            try:
                st = os.lstat(child_origin[0].path)
            except OSError:
                continue
            self.records.append(_Record(path, kind, "dir", st, child_origin[0].path))
            base_names = _lower_names(base, xattrs) if base else {}
            origin_names = _lower_names(child_origin, xattrs)
            for child in base_names.keys() - origin_names.keys():
                child_path = path + "/" + child
                if child_path not in self.exclude:
                    self.records.append(_Record(child_path, "D", None, None))
            for child in origin_names:
                child_path = path + "/" + child
                if child_path in self.exclude:
                    continue
                child_in_base = base_names.get(child)
                child_base = (_child_view(base, child, xattrs)
                              if child_in_base == _DIR else [])
                work.append((child_origin, child, child_path, child_base, child_in_base))


# -- opening upper files without following anything -----------------------------------------


def _open_beneath(root_fd: int, relative: str) -> int:
    """Open a regular file below ``root_fd`` one component at a time, following no symlink."""
    parts = [p for p in relative.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise FileNotFoundError(relative)
    opened: list[int] = []
    try:
        fd = root_fd
        for part in parts[:-1]:
            fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            opened.append(fd)
        return _open_file(parts[-1], fd)
    finally:
        for fd in opened:
            os.close(fd)


class _DirCache:
    """Upper directories opened component by component from the root (no symlink followed),
    kept open while the listed files are hashed so that each directory is opened once."""

    _MAX = 128

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.fds: dict[str, int] = {}

    def open_file(self, path: str) -> int:
        directory, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            raise FileNotFoundError(path)
        return _open_file(name, self.dir_fd(directory))

    def dir_fd(self, directory: str) -> int:
        if not directory:
            return self.root_fd
        fd = self.fds.get(directory)
        if fd is None:
            parent, _, name = directory.rpartition("/")
            if name in ("", ".", ".."):
                raise FileNotFoundError(directory)
            parent_fd = self.dir_fd(parent)
            if len(self.fds) >= self._MAX:
                self.close()
                parent_fd = self.dir_fd(parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            self.fds[directory] = fd
        return fd

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def open_upper_file(upperdir: Path, host_path: Path) -> BinaryIO:
    """Open ``host_path`` (inside ``upperdir``) for reading without following any symlink on
    the way, and only if it is a regular file: what a quarantine callback should use."""
    relative = os.path.relpath(host_path, upperdir)
    if relative.startswith(".."):
        raise ValueError(f"{host_path} is not inside {upperdir}")
    root_fd = os.open(upperdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = _open_beneath(root_fd, relative)
    finally:
        os.close(root_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"not a regular file: {host_path}")
    return os.fdopen(fd, "rb")


def _hash_fd(fd: int, limit: int, buffer: bytearray) -> tuple[str, int] | None:
    """sha256 of the whole file, or None when it holds more than ``limit`` bytes."""
    digest = hashlib.sha256()
    view = memoryview(buffer)
    total = 0
    while True:
        count = os.readv(fd, [buffer])
        if not count:
            return digest.hexdigest(), total
        total += count
        if total > limit:
            return None
        digest.update(view[:count])


# -- the whole diff --------------------------------------------------------------------------


def diff_upperdir(upperdir: Path, lowerdirs: list[Path], *, container_id: str,
                  flag_paths: Collection[str] = (), exclude: Collection[str] = (),
                  limits: DiffLimits = DEFAULT_LIMITS,
                  quarantine: Quarantine | None = None,
                  userxattr: bool = False) -> FilesystemDiff:
    """``docker diff`` of a container from its overlay layers (host paths, top lower first).

    ``flag_paths`` are container paths the alert names (marked ``flagged`` and listed first);
    ``exclude`` are container paths (volume mount points) left out with all below them.
    The listing holds at most ``limits.max_entries`` (flagged entries and added or changed
    executables kept first); the summary counts everything. ``userxattr``: the mount keeps its
    marks in ``user.overlay.*`` xattrs (``RootOverlay.userxattr``), not ``trusted.overlay.*``.
    Raises OSError when the upperdir cannot be opened.
    """
    xattrs = _Xattrs(userxattr)
    walker = _Walker(lowerdirs, exclude=_normalise(exclude) - {"/"}, xattrs=xattrs)
    root_fd = os.open(upperdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        walker.walk(root_fd)
        records = walker.records
        flags = _normalise(flag_paths)
        counts = {"A": 0, "C": 0, "D": 0}
        runnable = 0
        for record in records:
            counts[record.kind] += 1
            if record.runnable:
                runnable += 1
            if flags and (record.path in flags or _display(record.path) in flags):
                record.flagged = True
        # Most interesting first: what the alert names, then what can be run, then by path.
        records.sort(key=lambda r: (0 if r.flagged else 1 if r.runnable else 2, r.path))
        kept = records[:max(limits.max_entries, 0)]
        truncated = walker.truncated or len(kept) < len(records)
        summary = DiffSummary(added=counts["A"], changed=counts["C"], deleted=counts["D"],
                              executables_added=runnable,
                              bytes_hashed=_hash_records(root_fd, kept, limits))
        entries = [_entry(record) for record in kept]
    finally:
        os.close(root_fd)
    if quarantine is not None and limits.quarantine:
        for record, entry in zip(kept, entries, strict=True):
            if (record.source is None and record.kind != "D" and record.ftype == "file"
                    and not record.metacopy and not record.unreadable
                    and (record.executable or record.elf or record.script)
                    and record.size is not None and record.size <= limits.quarantine_max_bytes):
                try:
                    entry.quarantined = quarantine(upperdir / record.path.lstrip("/"), entry)
                except OSError:
                    entry.quarantined = None
    entries.sort(key=lambda e: (not e.flagged, e.path))
    return FilesystemDiff(container_id=container_id, upperdir=str(upperdir),
                          lowerdirs=[str(p) for p in lowerdirs], summary=summary,
                          changes=entries, truncated=truncated)


def _hash_records(root_fd: int, records: list[_Record], limits: DiffLimits) -> int:
    """Hash the listed regular files in priority order within the caps; bytes hashed."""
    directories = _DirCache(root_fd)
    try:
        return _hash_listed(directories, records, limits)
    finally:
        directories.close()


def _hash_listed(directories: _DirCache, records: list[_Record], limits: DiffLimits) -> int:
    spent = 0
    buffer = bytearray(_CHUNK)
    for record in records:
        if record.kind == "D" or record.ftype != "file" or record.hash_skipped:
            continue
        if record.metacopy:
            record.hash_skipped = SKIP_METACOPY
            continue
        if record.unreadable:
            record.hash_skipped = SKIP_UNREADABLE
            continue
        size = record.size or 0
        if size > limits.hash_file_max_bytes:
            record.hash_skipped = SKIP_TOO_LARGE
            continue
        if spent + size > limits.hash_total_max_bytes:
            record.hash_skipped = SKIP_BUDGET
            continue
        try:
            if record.source is None:
                fd = directories.open_file(record.path)
            else:
                fd = _open_file(record.source, None)
        except OSError:
            record.hash_skipped = SKIP_UNREADABLE
            continue
        try:
            now = os.fstat(fd)
            assert record.st is not None
            if not stat.S_ISREG(now.st_mode) or now.st_ino != record.st.st_ino:
                record.hash_skipped = SKIP_CHANGED
                continue
            limit = min(limits.hash_file_max_bytes, limits.hash_total_max_bytes - spent)
            result = _hash_fd(fd, limit, buffer)
        except OSError:
            record.hash_skipped = SKIP_UNREADABLE
            continue
        finally:
            os.close(fd)
        if result is None:
            # It grew past the cap since it was listed.
            record.hash_skipped = (SKIP_TOO_LARGE if limit == limits.hash_file_max_bytes
                                   else SKIP_BUDGET)
            continue
        record.sha256, record.size = result
        spent += result[1]
    return spent


def _entry(record: _Record) -> DiffEntry:
    st = record.st
    if record.kind == "D" or st is None:
        return DiffEntry(path=_display(record.path), kind="D", flagged=record.flagged)
    return DiffEntry(
        path=_display(record.path),
        kind=record.kind,
        type=record.ftype,
        size=record.size,
        mode=f"{stat.S_IMODE(st.st_mode):04o}",
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=format_ns(st.st_mtime_ns),
        sha256=record.sha256,
        hash_skipped=record.hash_skipped,
        executable=record.executable,
        elf=record.elf,
        script=record.script,
        link_target=record.link_target,
        flagged=record.flagged,
    )
