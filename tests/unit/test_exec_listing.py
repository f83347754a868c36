"""The fixed exec commands run for real on this machine, and their output parsed and diffed.

A container is a root file system and a pid namespace; here the commands run against a temp
directory (the root is swapped in the test only: the constants always list ``/``) and this
host's /proc, so the parsers are proven on real ``find``/``stat``/``od`` output, with hostile
file names and command lines.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from responder.agent.models import FilesystemDiff
from responder.images import listing
from responder.images.layers import ImageFile, flatten_layers
from responder.images.listing import (
    FILES_ARGV,
    FILES_ARGV_BUSYBOX,
    PROCESSES_ARGV,
    PROCESSES_ARGV_SH,
    ListedFile,
    diff_against_image,
    parse_files,
    parse_processes,
)
from responder.models.times import parse_rfc3339_ns
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

BUSYBOX = shutil.which("busybox")
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed "
                                   "(apt-get install -y busybox-static)")


@pytest.fixture
def busybox_path(tmp_path: Path) -> str:
    """A PATH where find, stat, sh, od and readlink are busybox's, as in an Alpine image."""
    assert BUSYBOX is not None
    bin_dir = tmp_path / "busybox-bin"
    bin_dir.mkdir()
    for applet in ("find", "stat", "sh", "od", "readlink"):
        (bin_dir / applet).symlink_to(BUSYBOX)
    return str(bin_dir)


def run_listing(argv: Sequence[str], root: Path, path_env: str | None = None) -> bytes:
    """Run a FILES_ARGV variant with ``root`` in place of ``/``."""
    assert argv[1] == "/"
    env = dict(os.environ, PATH=path_env) if path_env else None
    result = subprocess.run([argv[0], str(root), *argv[2:]], capture_output=True, env=env,
                            check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def relocate(files: dict[str, ListedFile], root: Path) -> dict[str, ListedFile]:
    prefix = os.fsdecode(os.fsencode(str(root)))
    moved = {}
    for path, item in files.items():
        assert path == prefix or path.startswith(prefix + "/"), path
        new = path[len(prefix):] or "/"
        moved[new] = dataclasses.replace(item, path=new)
    return moved


def hostile_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_bytes(b"root:x:0:0::/root:/bin/sh\n")
    (root / "bin").mkdir()
    tool = root / "bin" / "tool"
    tool.write_bytes(b"\x7fELF" + b"\0" * 60)
    os.chown(tool, 1000, 2000)
    tool.chmod(0o4755)
    (root / "bin" / "sh").symlink_to("tool")
    (root / "bin" / "spaced").symlink_to("../a target/with\nnewline")
    odd = root / "odd dir"
    odd.mkdir()
    (odd / "new\nline file").write_bytes(b"12345")
    (odd / " leading and trailing ").write_bytes(b"")
    os.mkfifo(root / "fifo")
    os.link(tool, root / "bin" / "tool-link")
    (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"x")
    os.utime(root / "etc" / "passwd", (MTIME, MTIME))


def expected_from_disk(root: Path, files: dict[str, ListedFile]) -> None:
    for path, item in files.items():
        real = root / path.lstrip("/") if path != "/" else root
        st = os.lstat(real)
        assert item.size == st.st_size or item.type == "dir", path
        assert item.mode == st.st_mode & 0o7777, path
        assert (item.uid, item.gid) == (st.st_uid, st.st_gid), path
        assert int(item.mtime) == int(st.st_mtime), path
        assert item.dev == st.st_dev, path


def test_the_gnu_listing_reads_every_file_whatever_its_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hostile_tree(root)
    files = relocate(parse_files(run_listing(FILES_ARGV, root)), root)
    assert set(files) == {
        "/", "/etc", "/etc/passwd", "/bin", "/bin/tool", "/bin/sh", "/bin/spaced",
        "/bin/tool-link", "/odd dir", "/odd dir/new\nline file",
        "/odd dir/ leading and trailing ", "/fifo", os.fsdecode(b"/caf\xe9-latin1")}
    assert files["/bin/tool"].mode == 0o4755
    assert (files["/bin/tool"].uid, files["/bin/tool"].gid) == (1000, 2000)
    assert files["/bin/sh"].type == "symlink"
    assert files["/bin/sh"].link_target == "tool"
    assert files["/bin/spaced"].link_target == "../a target/with\nnewline"
    assert files["/fifo"].type == "fifo"
    assert files["/odd dir"].type == "dir"
    assert files["/etc/passwd"].mtime == MTIME
    expected_from_disk(root, files)


@needs_busybox
def test_the_busybox_listing_reads_the_same_files(tmp_path: Path, busybox_path: str) -> None:
    root = tmp_path / "root"
    hostile_tree(root)
    output = run_listing(FILES_ARGV_BUSYBOX, root, busybox_path)
    files = relocate(parse_files(output, busybox=True), root)
    gnu = relocate(parse_files(run_listing(FILES_ARGV, root)), root)
    assert set(files) == set(gnu)
    for path, item in files.items():
        other = gnu[path]
        assert (item.type, item.mode, item.uid, item.gid, item.dev) == (
            other.type, other.mode, other.uid, other.gid, other.dev), path
        assert item.size == other.size or item.type == "dir"
        assert item.link_target is None
    expected_from_disk(root, files)


def test_a_listing_cut_off_mid_record_drops_only_the_last_record(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hostile_tree(root)
    output = run_listing(FILES_ARGV, root)
    whole = parse_files(output)
    cut = parse_files(output[:-5])
    assert len(cut) == len(whole) - 1
    assert parse_files(b"") == {}
    assert parse_files(b"f 1 644 0 0 1.0 1 relative\0\0x 1 zz 0 0 1 1 /bad-mode\0\0") == {}
    assert parse_files(b"\xff" * 1000 + b"\0" * 7) == {}


def test_busybox_records_with_newlines_in_names_are_rejoined() -> None:
    output = (b"41ed 4096 0 0 1700000000 64 /\n"
              b"81a4 5 0 0 1700000000 64 /odd/new\n"
              b"line\n"
              b"a1ff 4 0 0 1700000000 64 /bin/sh\n"
              b"81a4 9 0 0 1700")  # cut off
    files = parse_files(output, busybox=True)
    assert set(files) == {"/", "/odd/new\nline", "/bin/sh"}
    assert files["/bin/sh"].type == "symlink"
    assert files["/odd/new\nline"].mode == 0o644


# --- processes -----------------------------------------------------------------------------

@pytest.fixture
def children(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """A python child with a hostile command line, a process whose binary was deleted, and
    one running from a memfd."""
    dropped = tmp_path / "dropped-sleep"
    shutil.copy("/bin/sleep", dropped)
    procs = {
        "python": subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                                    "arg with\nnewline", "", "\x1b[31mred"]),
        "deleted": subprocess.Popen([str(dropped), "30"]),
        "memfd": subprocess.Popen([sys.executable, "-c", (
            "import os; fd = os.memfd_create('drift-test', 0);"
            "os.write(fd, open('/bin/sleep', 'rb').read());"
            "os.execv(f'/proc/self/fd/{fd}', ['sleep', '30'])")]),
    }
    dropped.unlink()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # until the memfd child has exec'd
        if os.readlink(f"/proc/{procs['memfd'].pid}/exe").startswith("/memfd:"):
            break
        time.sleep(0.02)
    yield procs
    for proc in procs.values():
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("variant", ["gnu-find", "posix-sh", "busybox-sh"])
def test_the_process_listing_reads_this_hosts_proc(
        variant: str, children: dict[str, subprocess.Popen[bytes]], tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    env = None
    argv: Sequence[str] = PROCESSES_ARGV if variant == "gnu-find" else PROCESSES_ARGV_SH
    if variant == "busybox-sh":
        if BUSYBOX is None:
            pytest.skip("busybox is not installed (apt-get install -y busybox-static)")
        env = dict(os.environ, PATH=request.getfixturevalue("busybox_path"))
    result = subprocess.run(list(argv), capture_output=True, env=env, check=False, timeout=60)
    assert result.stdout, result.stderr
    python = children["python"]
    tree = parse_processes(result.stdout, container_id="c0ffee", flag_pid=python.pid)
    assert (tree.method, tree.assurance, tree.container_id) == ("exec", "low", "c0ffee")
    by_pid = {p.pid: p for p in tree.processes}

    child = by_pid[python.pid]
    assert child.cmdline == [sys.executable, "-c", "import time; time.sleep(30)",
                             "arg with\nnewline", "", "\x1b[31mred"]
    assert child.ppid == os.getpid()
    assert child.ns_pid == python.pid
    assert child.uid == os.getuid()
    assert child.flagged
    assert child.exe == os.path.realpath(sys.executable)
    assert child.start_time is not None
    assert abs(parse_rfc3339_ns(child.start_time) / 1e9 - time.time()) < 120
    assert child.hash_skipped == listing.HASH_SKIPPED

    deleted = by_pid[children["deleted"].pid]
    assert deleted.exe_deleted
    assert deleted.exe == str(tmp_path / "dropped-sleep")
    memfd = by_pid[children["memfd"].pid]
    assert (memfd.exe_memfd, memfd.exe_deleted, memfd.exe) == (True, True,
                                                              "/memfd:drift-test")

    # Run from this test, the listing command's parent is visible, so it is listed (from an
    # exec its parent is outside the container: see the synthetic test below).
    assert [p.ppid for p in tree.processes if p.cmdline[:4] == list(argv[:4])] == [
        os.getpid()]
    # Parents come before their children.
    position = {p.pid: i for i, p in enumerate(tree.processes)}
    assert all(position[p.ppid] < position[p.pid] for p in tree.processes
               if p.ppid in position)
    # The rendered tree cannot be forged by control characters in a command line.
    line = next(li for li in tree.rendered.splitlines() if li.strip().startswith(
        f"{python.pid} "))
    assert "arg with\\x0anewline" in line
    assert "\\x1b[31mred" in line
    assert line.endswith("<- flagged")


def test_executables_outside_the_image_are_in_the_upper_layer(
        children: dict[str, subprocess.Popen[bytes]]) -> None:
    output = subprocess.run(list(PROCESSES_ARGV), capture_output=True, check=False).stdout
    python_exe = os.path.realpath(sys.executable)
    image = {python_exe: ImageFile(python_exe, "file", 10, 0o755, 0, 0, float(MTIME))}
    tree = parse_processes(output, container_id="c", image=image, flag_exe=python_exe)
    by_pid = {p.pid: p for p in tree.processes}
    assert by_pid[children["python"].pid].in_upper_layer is False
    assert by_pid[children["python"].pid].flagged
    assert by_pid[children["deleted"].pid].in_upper_layer is True
    assert by_pid[children["memfd"].pid].in_upper_layer is None
    changed = {python_exe: ListedFile(python_exe, "file", 11, 0o755, 0, 0, float(MTIME))}
    tree = parse_processes(output, container_id="c", image=image, listed=changed)
    assert {p.pid: p for p in tree.processes}[children["python"].pid].in_upper_layer is True


def _stat_record(pid: int, ppid: int, comm: bytes = b"sh") -> bytes:
    return (f"{pid} (".encode() + comm + f") S {ppid} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 "
            f"{100 * pid} 0 0".encode())


def _framed(pid: int, ppid: int, cmdline: bytes, comm: bytes = b"sh") -> bytes:
    def hexed(data: bytes) -> bytes:
        return b" " + b" ".join(f"{b:02x}".encode() for b in data) + b"\n"
    return (f"@/proc/{pid}/stat\n".encode() + hexed(_stat_record(pid, ppid, comm))
            + f"@/proc/{pid}/status\n".encode() + hexed(b"Name:\tsh\nUid:\t0\t0\t0\t0\n")
            + f"@/proc/{pid}/cmdline\n".encode() + hexed(cmdline)
            + f"#/proc/{pid}/exe\n".encode() + b"/bin/sh\0")


def test_hostile_process_output_is_skipped_not_trusted() -> None:
    good = _framed(1, 0, b"sh\0")
    tricky_comm = _framed(7, 1, b"x\0", comm=b"a) R 99 (b")  # ')' inside comm
    junk = (b"@/proc/../etc/passwd\n 41\n"  # not a /proc/<pid> header
            b"@/proc/5/stat\n zz yy\n"  # not hex
            b"#/proc/6/exe\n/no/terminator")  # cut off
    tree = parse_processes(b"garbage\0\0" + good + tricky_comm + junk, container_id="c")
    assert [(p.pid, p.ppid) for p in tree.processes] == [(1, 0), (7, 1)]
    assert tree.processes[1].comm == "sh"  # status Name (escaped by the kernel) wins
    assert parse_processes(b"", container_id="c").processes == []
    assert parse_processes(os.urandom(4096), container_id="c").processes == []


def test_the_exec_itself_is_left_out_but_a_process_copying_its_argv_is_not() -> None:
    argv = b"\0".join(a.encode() for a in PROCESSES_ARGV) + b"\0"
    output = (_framed(1, 0, b"app\0") + _framed(40, 0, argv) + _framed(41, 40, b"od\0")
              + _framed(50, 1, argv) + _framed(51, 50, b"miner\0"))
    tree = parse_processes(output, container_id="c")
    assert [p.pid for p in tree.processes] == [1, 50, 51]


def test_the_process_count_is_bounded_and_keeps_the_flagged_one() -> None:
    output = b"".join(_framed(pid, 1 if pid > 1 else 0, b"w\0") for pid in range(1, 60))
    tree = parse_processes(output, container_id="c", flag_pid=59, max_processes=10)
    assert tree.truncated
    assert len(tree.processes) == 10
    assert tree.processes[-1].pid == 59
    assert tree.processes[-1].flagged


def test_long_command_lines_are_bounded() -> None:
    output = _framed(1, 0, b"\0".join([b"a" * 100] * 500) + b"\0")
    info = parse_processes(output, container_id="c").processes[0]
    assert info.cmdline_truncated
    assert sum(map(len, info.cmdline)) <= listing.MAX_CMDLINE_CHARS


# --- the diff ------------------------------------------------------------------------------

def lf(path: str, type: str = "file", size: int = 0, mode: int = 0o644, uid: int = 0,
       gid: int = 0, mtime: float = MTIME, link: str | None = None,
       dev: int = 1) -> ListedFile:
    return ListedFile(path, type, size, mode, uid, gid, mtime, link, dev)  # type: ignore[arg-type]


def imf(path: str, type: str = "file", size: int = 0, mode: int = 0o644, uid: int = 0,
        gid: int = 0, mtime: float | None = MTIME, link: str | None = None) -> ImageFile:
    return ImageFile(path, type, size, mode, uid, gid, mtime, link)  # type: ignore[arg-type]


IMAGE = {
    "/": imf("/", "dir", mode=0o755), "/etc": imf("/etc", "dir", mode=0o755),
    "/etc/passwd": imf("/etc/passwd", size=10), "/usr": imf("/usr", "dir", mode=0o755),
    "/usr/bin": imf("/usr/bin", "dir", mode=0o755),
    "/usr/bin/env": imf("/usr/bin/env", size=100, mode=0o755),
    "/usr/share": imf("/usr/share", "dir", mode=0o755),
    "/usr/share/doc": imf("/usr/share/doc", "dir", mode=0o755),
    "/usr/share/doc/a": imf("/usr/share/doc/a", size=1),
    "/usr/share/doc/b": imf("/usr/share/doc/b", size=1),
    "/bin": imf("/bin", "symlink", size=7, mode=0o777, link="usr/bin"),
    "/data": imf("/data", "dir", mode=0o755), "/data/seed": imf("/data/seed", size=3),
}


def unchanged() -> dict[str, ListedFile]:
    return {p: lf(p, i.type, i.size if i.type != "dir" else 4096, i.mode, i.uid, i.gid,
                  i.mtime or MTIME, i.link_target) for p, i in IMAGE.items()}


def kinds(diff: FilesystemDiff) -> dict[str, str]:
    return {e.path: e.kind for e in diff.changes}


def test_an_untouched_container_has_no_drift() -> None:
    listed = unchanged()
    listed["/etc"] = dataclasses.replace(listed["/etc"], mtime=MTIME + 999)  # dir mtime only
    listed["/proc"] = lf("/proc", "dir", dev=2)
    listed["/proc/1"] = lf("/proc/1", "dir", dev=2)
    diff = diff_against_image(listed, IMAGE, container_id="c")
    assert diff.changes == []
    assert (diff.method, diff.assurance, diff.truncated) == ("exec", "low", False)


def test_added_changed_and_deleted_paths_get_docker_diff_kinds() -> None:
    listed = unchanged()
    listed["/tmp"] = lf("/tmp", "dir", mode=0o1777)
    listed["/tmp/x"] = lf("/tmp/x", size=5000, mode=0o755)
    listed["/etc/passwd"] = dataclasses.replace(listed["/etc/passwd"], size=11)
    listed["/usr/bin/env"] = dataclasses.replace(listed["/usr/bin/env"], mtime=MTIME + 60)
    listed["/bin"] = dataclasses.replace(listed["/bin"], link_target="/tmp")
    for gone in ("/usr/share/doc", "/usr/share/doc/a", "/usr/share/doc/b"):
        del listed[gone]
    diff = diff_against_image(listed, IMAGE, container_id="c", flag_paths=["/tmp/x"])
    assert kinds(diff) == {
        "/tmp": "A", "/tmp/x": "A", "/etc/passwd": "C", "/etc": "C", "/usr/bin/env": "C",
        "/usr/bin": "C", "/usr": "C", "/bin": "C", "/usr/share/doc": "D", "/usr/share": "C"}
    assert diff.changes[0].path == "/tmp/x"
    assert diff.changes[0].flagged
    assert [e.path for e in diff.changes[1:]] == sorted(e.path for e in diff.changes[1:])
    added = diff.changes[0]
    assert (added.type, added.size, added.mode, added.executable, added.sha256,
            added.hash_skipped) == ("file", 5000, "0755", True, None, listing.HASH_SKIPPED)
    assert added.mtime == "2023-11-14T22:13:20.000000000Z"
    deleted = next(e for e in diff.changes if e.kind == "D")
    assert (deleted.type, deleted.size) == (None, None)
    assert diff.summary.model_dump() == {"added": 2, "changed": 7, "deleted": 1,
                                         "executables_added": 1, "bytes_hashed": 0}


@pytest.mark.parametrize(("change", "is_change"), [
    ({"mode": 0o600}, True), ({"uid": 1}, True), ({"gid": 1}, True), ({"size": 9}, True),
    ({"mtime": MTIME + 1}, True), ({"mtime": MTIME + 0.5}, False), ({"type": "symlink"}, True),
])
def test_what_counts_as_a_changed_file(change: dict[str, object], is_change: bool) -> None:
    listed = unchanged()
    listed["/etc/passwd"] = dataclasses.replace(listed["/etc/passwd"], **change)  # type: ignore[arg-type]
    found = kinds(diff_against_image(listed, IMAGE, container_id="c"))
    assert ("/etc/passwd" in found) is is_change


def test_directory_size_and_mtime_are_not_changes_but_its_mode_is() -> None:
    listed = unchanged()
    listed["/usr"] = dataclasses.replace(listed["/usr"], size=8192, mtime=MTIME + 5)
    assert diff_against_image(listed, IMAGE, container_id="c").changes == []
    listed["/usr"] = dataclasses.replace(listed["/usr"], mode=0o777)
    assert kinds(diff_against_image(listed, IMAGE, container_id="c")) == {"/usr": "C"}


def test_a_symlink_without_a_listed_target_is_judged_by_its_size() -> None:
    listed = unchanged()
    listed["/bin"] = dataclasses.replace(listed["/bin"], link_target=None)
    assert diff_against_image(listed, IMAGE, container_id="c").changes == []
    listed["/bin"] = dataclasses.replace(listed["/bin"], size=4)
    assert kinds(diff_against_image(listed, IMAGE, container_id="c")) == {"/bin": "C"}


def test_mounted_directories_hide_the_image_below_them_without_deleting_it() -> None:
    listed = unchanged()
    del listed["/data/seed"]
    listed["/data"] = dataclasses.replace(listed["/data"], dev=9)  # an emptyDir volume
    listed["/etc/hosts"] = lf("/etc/hosts", size=200, dev=1)  # kubelet's, ignored by default
    listed["/var/run/secrets/kubernetes.io/serviceaccount/token"] = lf(
        "/var/run/secrets/kubernetes.io/serviceaccount/token", dev=1)
    assert diff_against_image(listed, IMAGE, container_id="c").changes == []
    assert kinds(diff_against_image(listed, IMAGE, container_id="c", ignore=())) == {
        "/etc/hosts": "A", "/etc": "C",
        "/var/run/secrets/kubernetes.io/serviceaccount/token": "A"}


def test_a_file_on_another_device_is_still_compared() -> None:
    listed = unchanged()
    listed["/usr/bin/env"] = dataclasses.replace(listed["/usr/bin/env"], dev=7, size=1)
    assert kinds(diff_against_image(listed, IMAGE, container_id="c")) == {
        "/usr/bin/env": "C", "/usr/bin": "C", "/usr": "C"}


def test_the_listing_is_bounded_with_exact_counts_and_flagged_paths_first() -> None:
    listed = unchanged()
    for i in range(50):
        listed[f"/drop/{i:02d}"] = lf(f"/drop/{i:02d}", mode=0o755)
    listed["/drop"] = lf("/drop", "dir", mode=0o755)
    diff = diff_against_image(listed, IMAGE, container_id="c", flag_paths=["/drop/49"],
                              max_entries=5)
    assert diff.truncated
    assert [e.path for e in diff.changes] == ["/drop/49", "/drop", "/drop/00", "/drop/01",
                                              "/drop/02"]
    assert (diff.summary.added, diff.summary.executables_added) == (51, 50)


def test_names_that_are_not_utf8_are_reported_escaped() -> None:
    listed = unchanged()
    name = os.fsdecode(b"/caf\xe9")
    listed[name] = lf(name)
    diff = diff_against_image(listed, IMAGE, container_id="c")
    assert [e.path for e in diff.changes] == ["/caf\\xe9"]
    diff.model_dump_json()  # serialisable


# --- listing a real tree against its image -------------------------------------------------

LAYERS: list[list[Member]] = [
    [directory("etc"), file("etc/passwd", b"root:x:0:0\n"), file("etc/shadow", b"s", 0o600),
     directory("usr/bin"), file("usr/bin/env", b"#!env" * 20, 0o755),
     hardlink("usr/bin/printenv", "usr/bin/env", 0o755), symlink("bin", "usr/bin"),
     directory("var/cache/apt"), file("var/cache/apt/pkgcache.bin", b"cache"),
     directory("srv/www"), file("srv/www/index.html", b"<h1>hi</h1>")],
    [whiteout("etc/shadow"), opaque("var/cache/apt"), file("var/cache/apt/fresh", b"new")],
    [file("etc/passwd", b"root:x:0:0:r\n"), whiteout("srv/www")],
]
FINAL: list[Member] = [
    directory("etc"), file("etc/passwd", b"root:x:0:0:r\n"), directory("usr/bin"),
    file("usr/bin/env", b"#!env" * 20, 0o755), hardlink("usr/bin/printenv", "usr/bin/env",
                                                       0o755),
    symlink("bin", "usr/bin"), directory("var/cache/apt"),
    file("var/cache/apt/fresh", b"new"), directory("srv"),
]


def test_a_real_container_tree_diffed_against_its_flattened_layers(tmp_path: Path) -> None:
    image = flatten_layers([io.BytesIO(layer_tar(m)) for m in LAYERS])
    root = tmp_path / "rootfs"
    root.mkdir()
    os.chmod(root, 0o755)
    with tarfile.open(fileobj=io.BytesIO(layer_tar(FINAL))) as archive:
        archive.extractall(root, filter="fully_trusted")
    listed = relocate(parse_files(run_listing(FILES_ARGV, root)), root)
    assert diff_against_image(listed, image, container_id="c").changes == []

    (root / "tmp").mkdir()
    (root / "tmp" / "xmrig").write_bytes(b"\x7fELF")
    os.chmod(root / "tmp" / "xmrig", 0o755)
    env = root / "usr" / "bin" / "env"
    env.write_bytes(b"#!EVL" * 20)  # same size, new mtime
    os.chmod(root / "etc" / "passwd", 0o666)
    (root / "var" / "cache" / "apt" / "fresh").unlink()
    listed = relocate(parse_files(run_listing(FILES_ARGV, root)), root)
    diff = diff_against_image(listed, image, container_id="c", flag_paths=["/tmp/xmrig"])
    assert kinds(diff) == {
        "/tmp/xmrig": "A", "/tmp": "A", "/usr/bin/env": "C", "/usr/bin": "C", "/usr": "C",
        "/usr/bin/printenv": "C",  # the same inode as env
        "/etc/passwd": "C", "/etc": "C", "/var/cache/apt/fresh": "D", "/var/cache/apt": "C",
        "/var/cache": "C", "/var": "C"}
    assert diff.changes[0].path == "/tmp/xmrig"
    assert diff.summary.executables_added == 1
