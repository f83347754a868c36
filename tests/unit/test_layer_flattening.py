"""Layers applied in order, with OCI whiteouts and opaque directories, into one file list."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence

import pytest

from responder.images.layers import (
    ImageFile,
    LayerError,
    TooManyEntries,
    flatten_layers,
    normalise_path,
)
from tests.support.registry import (
    MTIME,
    Member,
    directory,
    file,
    hardlink,
    layer_tar,
    opaque,
    symlink,
    whiteout,
)


def flatten(*layers: Sequence[Member], max_entries: int = 10_000) -> dict[str, ImageFile]:
    return flatten_layers([io.BytesIO(layer_tar(m)) for m in layers], max_entries=max_entries)


BASE = [directory("etc"), file("etc/passwd", b"root\n"), file("etc/group", b"g\n"),
        directory("usr/lib/app"), file("usr/lib/app/a.so", b"aaaa"),
        file("usr/lib/app/b.so", b"bb")]


def test_a_single_layer_lists_every_path_with_its_metadata() -> None:
    files = flatten([*BASE, file("bin/tool", b"\x7fELF", 0o4755, uid=10, gid=20)])
    tool = files["/bin/tool"]
    assert (tool.type, tool.size, tool.mode, tool.uid, tool.gid, tool.mtime) == (
        "file", 4, 0o4755, 10, 20, float(MTIME))
    assert files["/"].type == "dir"
    assert files["/bin"].implicit  # only implied by its child
    assert not files["/etc"].implicit


def test_a_whiteout_in_a_later_layer_removes_the_file() -> None:
    files = flatten(BASE, [whiteout("etc/passwd")])
    assert "/etc/passwd" not in files
    assert "/etc/group" in files
    assert "/etc/.wh.passwd" not in files


def test_a_whiteout_of_a_directory_removes_everything_below_it() -> None:
    files = flatten(BASE, [whiteout("usr/lib/app")])
    assert not [p for p in files if p.startswith("/usr/lib/app")]
    assert "/usr/lib" in files


def test_a_whiteout_never_hides_a_file_of_its_own_layer() -> None:
    files = flatten(BASE, [file("etc/passwd", b"new\n"), whiteout("etc/passwd")])
    assert files["/etc/passwd"].size == 4


def test_an_opaque_directory_drops_the_lower_contents_but_keeps_its_own() -> None:
    files = flatten(BASE, [opaque("usr/lib/app"), file("usr/lib/app/c.so", b"c")])
    assert sorted(p for p in files if p.startswith("/usr/lib/app")) == [
        "/usr/lib/app", "/usr/lib/app/c.so"]


def test_an_opaque_marker_before_its_directory_entry_still_applies() -> None:
    files = flatten(BASE, [opaque("usr/lib/app"), directory("usr/lib/app", 0o700)])
    assert files["/usr/lib/app"].mode == 0o700
    assert "/usr/lib/app/a.so" not in files


def test_a_later_layer_replaces_a_file_and_a_directory_merges() -> None:
    files = flatten(BASE, [file("etc/passwd", b"changed!", 0o600), directory("etc", 0o750)])
    assert (files["/etc/passwd"].size, files["/etc/passwd"].mode) == (8, 0o600)
    assert files["/etc"].mode == 0o750
    assert "/etc/group" in files  # a directory over a directory keeps the lower contents


def test_a_file_replacing_a_directory_takes_its_whole_tree_away() -> None:
    files = flatten(BASE, [file("usr/lib/app", b"now a file")])
    assert files["/usr/lib/app"].type == "file"
    assert "/usr/lib/app/a.so" not in files


def test_a_directory_replacing_a_file_and_files_under_a_former_file() -> None:
    files = flatten([file("opt", b"x")], [file("opt/inner", b"y")])
    assert files["/opt"].type == "dir"
    assert files["/opt/inner"].size == 1


def test_hard_links_are_files_with_their_targets_size() -> None:
    files = flatten([file("bin/busybox", b"12345678", 0o755), hardlink("bin/sh", "bin/busybox",
                                                                      0o755)])
    assert (files["/bin/sh"].type, files["/bin/sh"].size) == ("file", 8)
    assert files["/bin/sh"].hardlink_to == "/bin/busybox"


def test_symlinks_keep_their_target() -> None:
    files = flatten([symlink("bin", "usr/bin"), symlink("etc/alt", "/etc/alternatives/x")])
    assert files["/bin"].type == "symlink"
    assert files["/bin"].link_target == "usr/bin"
    assert files["/etc/alt"].link_target == "/etc/alternatives/x"


@pytest.mark.parametrize(("name", "path"), [
    ("./etc/passwd", "/etc/passwd"), ("etc//x/", "/etc/x"), ("/abs", "/abs"),
    ("../../etc/shadow", "/etc/shadow"), ("a/../../b", "/b"), ("./", "/"), ("//x", "/x"),
])
def test_paths_are_normalised_and_never_climb_above_the_root(name: str, path: str) -> None:
    assert normalise_path(name) == path


def test_escaping_member_names_land_inside_the_image() -> None:
    files = flatten([file("../../etc/cron.d/evil", b"x"), directory("./")])
    assert "/etc/cron.d/evil" in files
    assert all(p.startswith("/") and ".." not in p.split("/") for p in files)


def test_aufs_bookkeeping_entries_are_not_files() -> None:
    files = flatten([directory(".wh..wh.plnk"), file(".wh..wh.plnk/123.456", b"")], BASE)
    assert not [p for p in files if ".wh." in p]


def test_the_root_is_always_a_directory() -> None:
    files = flatten([Member(".", "file", b"x")])
    assert files["/"].type == "dir"


def test_the_number_of_entries_is_bounded_per_layer_and_in_total() -> None:
    many = [file(f"f{i}", b"") for i in range(20)]
    with pytest.raises(TooManyEntries, match="more than 10"):
        flatten(many, max_entries=10)
    with pytest.raises(TooManyEntries, match="image has more than 10"):
        flatten(many[:8], many[8:16], max_entries=10)
    whiteouts = [whiteout(f"w{i}") for i in range(20)]
    with pytest.raises(TooManyEntries):
        flatten(whiteouts, max_entries=10)


def test_a_layer_that_is_not_a_tar_is_a_layer_error() -> None:
    with pytest.raises(LayerError, match="not a readable tar"):
        flatten_layers([io.BytesIO(b"\x00garbage" * 100)])
    truncated = layer_tar([file("a", b"x" * 5000)])[:1200]
    with pytest.raises(LayerError):
        flatten_layers([io.BytesIO(truncated)])


def test_layers_are_read_as_streams_without_seeking() -> None:
    class OneWay(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
            data = self.inner.read(len(buffer))
            buffer[:len(data)] = data
            return len(data)

    files = flatten_layers([io.BufferedReader(OneWay(layer_tar(BASE)))])  # type: ignore[type-var]
    assert "/usr/lib/app/b.so" in files


def test_special_files_keep_their_type() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, kind in (("dev/null", tarfile.CHRTYPE), ("run/fifo", tarfile.FIFOTYPE),
                           ("dev/sda", tarfile.BLKTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            archive.addfile(info)
    buffer.seek(0)
    files = flatten_layers([buffer])
    assert [files[p].type for p in ("/dev/null", "/run/fifo", "/dev/sda")] == [
        "char", "fifo", "block"]
