"""Flatten an image's layers into the file list a container starts from.

The exec fallback compares what a container shows with what its image put there. The image's
file list is its layer tars applied in order, as containerd's applier does: a ``.wh.<name>``
entry deletes ``<name>`` (and everything below it) from the *lower* layers, a ``.wh..wh..opq``
entry drops every lower entry under its directory, and later layers replace earlier entries.
Per the OCI image spec a whiteout never hides an entry of its own layer, so each layer's
whiteouts are applied to the lower state before the layer's own entries are added.

Layer contents are registry-controlled data: paths are normalised lexically and can never climb
above ``/``; nothing is extracted, only headers are read; entry counts are bounded.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Literal

FileType = Literal["file", "dir", "symlink", "char", "block", "fifo", "other"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
META_PREFIX = "/.wh..wh."
DEFAULT_MAX_ENTRIES = 500_000


class LayerError(ValueError):
    """A layer that cannot be read, or an image with more entries than allowed."""


class TooManyEntries(LayerError):
    """More tar members in a layer, or paths in the image, than ``max_entries``."""


@dataclass(frozen=True)
class ImageFile:
    """One path of the flattened image. ``mode`` holds the permission bits (``0o7777``);
    ``mtime`` is seconds since the epoch (``None`` for directories only implied by their
    children); ``link_target`` is a symlink's target; ``hardlink_to`` the path a hard link
    shares its data with (its type is then ``file`` and its size the target's)."""

    path: str
    type: FileType
    size: int
    mode: int
    uid: int
    gid: int
    mtime: float | None
    link_target: str | None = None
    hardlink_to: str | None = None
    implicit: bool = False


def normalise_path(name: str) -> str:
    """An archive member name as an absolute, normalised path that cannot escape ``/``:
    ``./usr//bin/`` → ``/usr/bin``, ``../../etc/x`` → ``/etc/x``."""
    path = posixpath.normpath("/" + name.replace("\x00", ""))
    # normpath keeps a leading '//' (POSIX allows it to mean something else); we never do.
    return "/" + path.lstrip("/")


def _file_type(member: tarfile.TarInfo) -> FileType:
    if member.isreg() or member.islnk():
        return "file"
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.ischr():
        return "char"
    if member.isblk():
        return "block"
    if member.isfifo():
        return "fifo"
    return "other"


class FlattenedImage:
    """The merged file system, built layer by layer (lowest first).

    Keeps a children index so that whiteouts of large directories cost their size, not the
    size of the whole image."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.files: dict[str, ImageFile] = {
            "/": ImageFile("/", "dir", 0, 0o755, 0, 0, None, implicit=True)}
        self._children: dict[str, set[str]] = {"/": set()}
        self.layers = 0

    def add_layer(self, members: Iterable[tarfile.TarInfo]) -> None:
        """Apply one layer, given its tar headers in archive order."""
        deletions: list[str] = []
        opaque: list[str] = []
        entries: dict[str, ImageFile] = {}
        for scanned, member in enumerate(members, 1):
            if scanned > self.max_entries:
                raise TooManyEntries(f"layer {self.layers + 1} has more than "
                                 f"{self.max_entries} entries")
            path = normalise_path(member.name)
            parent, base = posixpath.split(path)
            if base == OPAQUE_MARKER:
                opaque.append(parent)
                continue
            if META_PREFIX in path:
                # '.wh..wh.*' other than the opaque marker is aufs bookkeeping (its hard link
                # directory and what is in it), as in moby: not files of the image.
                continue
            if base.startswith(WHITEOUT_PREFIX):
                deletions.append(posixpath.join(parent, base[len(WHITEOUT_PREFIX):]))
                continue
            if path == "/" and not member.isdir():
                continue  # nothing but a directory can be the root
            entries[path] = self._entry(path, member, entries)
        for directory in opaque:
            self._remove_children(directory)
        for path in deletions:
            self._remove(path)
        for entry in entries.values():
            self._put(entry)
        self.layers += 1

    def _entry(self, path: str, member: tarfile.TarInfo,
               same_layer: dict[str, ImageFile]) -> ImageFile:
        kind = _file_type(member)
        link_target: str | None = None
        hardlink_to: str | None = None
        size = member.size if kind == "file" else 0
        if member.issym():
            link_target = member.linkname
        elif member.islnk():
            hardlink_to = normalise_path(member.linkname)
            # A hard link's header carries no data: it has the size of what it links to, an
            # earlier member of this layer (or, in odd archives, a lower layer). A later layer
            # replacing the target leaves the link's own (lower) data alone, as overlay does.
            target = same_layer.get(hardlink_to) or self.files.get(hardlink_to)
            size = target.size if target is not None and target.type == "file" else 0
        return ImageFile(path=path, type=kind, size=size, mode=member.mode & 0o7777,
                         uid=member.uid, gid=member.gid, mtime=float(member.mtime),
                         link_target=link_target, hardlink_to=hardlink_to)

    def _put(self, entry: ImageFile) -> None:
        existing = self.files.get(entry.path)
        if existing is not None and existing.type == "dir" and entry.type != "dir":
            self._remove(entry.path)  # a non-directory replaces a whole directory tree
        elif existing is not None and existing.type == "dir":
            self.files[entry.path] = entry
            return
        self._ensure_parents(entry.path)
        if entry.path not in self.files and len(self.files) >= self.max_entries:
            raise TooManyEntries(f"the image has more than {self.max_entries} entries")
        self.files[entry.path] = entry
        parent, base = posixpath.split(entry.path)
        self._children.setdefault(parent, set()).add(base)
        if entry.type == "dir":
            self._children.setdefault(entry.path, set())

    def _ensure_parents(self, path: str) -> None:
        missing: list[str] = []
        parent = posixpath.dirname(path)
        while parent not in self.files or self.files[parent].type != "dir":
            missing.append(parent)
            parent = posixpath.dirname(parent)
        for directory in reversed(missing):
            if directory in self.files:
                self._remove(directory)  # a file in the way of a directory is replaced
            self._put(ImageFile(directory, "dir", 0, 0o755, 0, 0, None, implicit=True))

    def _remove(self, path: str) -> None:
        if path == "/" or path not in self.files:
            return
        self._remove_children(path)
        self._children.pop(path, None)
        del self.files[path]
        parent, base = posixpath.split(path)
        self._children.get(parent, set()).discard(base)

    def _remove_children(self, directory: str) -> None:
        stack = [directory]
        while stack:
            current = stack.pop()
            names = self._children.get(current)
            if not names:
                continue
            for name in list(names):
                child = posixpath.join(current, name)
                stack.append(child)
                self.files.pop(child, None)
            if current != directory:
                self._children.pop(current, None)
            else:
                names.clear()


def tar_members(stream: IO[bytes]) -> Iterator[tarfile.TarInfo]:
    """The headers of an uncompressed tar read as a stream (no seeking, contents skipped)."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                yield member
                # Stream mode keeps every header it has read; we need none of them later.
                archive.members = []  # type: ignore[attr-defined]
    except tarfile.TarError as exc:
        raise LayerError(f"not a readable tar layer: {exc}") from None


def flatten_layers(layers: Iterable[IO[bytes]], *,
                   max_entries: int = DEFAULT_MAX_ENTRIES) -> dict[str, ImageFile]:
    """The image's file list, from its layers lowest first, each an uncompressed tar stream.
    Keyed by absolute path; ``/`` is always present."""
    image = FlattenedImage(max_entries=max_entries)
    for layer in layers:
        image.add_layer(tar_members(layer))
    return image.files


