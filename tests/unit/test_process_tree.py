"""The node-side process tree: finding a container's processes in a proc root and describing them.

Most tests build a synthetic proc root (tests/support/fake_proc.py); the last ones start real
processes in a cgroup v2 scope named like containerd's and read this machine's /proc.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from responder.agent.models import ProcessInfo, ProcessTree
from responder.agent.processes import (
    ProcessLimits,
    collect_process_tree,
    container_pids,
    excerpt,
    render_tree,
)
from tests.support import fake_proc
from tests.support.fake_proc import FakeProc

CID = "3f9a1c0e5b7d2f4a6c8e0b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a"
OTHER = "0123456789abcdef" * 4
IN = fake_proc.containerd_v2(CID)


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[FakeProc]:
    # Thousands of tiny files: a memory filesystem builds them far faster than a disk's journal.
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="fake-proc-") as base:
            yield FakeProc(Path(base))
    else:
        yield FakeProc(tmp_path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def by_pid(tree: ProcessTree) -> dict[int, ProcessInfo]:
    return {p.pid: p for p in tree.processes}


# ----------------------------------------------------------------------------- finding

def test_only_the_containers_processes_are_found(proc: FakeProc) -> None:
    proc.add(100, cgroup=IN)
    proc.add(101, cgroup=fake_proc.containerd_v2(OTHER))
    proc.add(102, cgroup=fake_proc.crio_v2(CID, conmon=True))  # the runtime's monitor
    proc.add(103, cgroup=fake_proc.host_cgroup())
    proc.add(104, cgroup=fake_proc.kubepods_cgroupfs_v1(CID))
    proc.add(105, cgroup=f"0::/kubepods.slice/cri-containerd-{CID}.scope/child\n")
    (proc.root / "self").symlink_to("100")  # not a pid directory: ignored
    assert container_pids(CID, proc.root) == [100, 104, 105]


@pytest.mark.parametrize("wanted", [CID, CID[:12], f"containerd://{CID}", f"docker://{CID[:12]}"])
def test_short_full_and_kubernetes_ids_find_the_same_processes(proc: FakeProc,
                                                                wanted: str) -> None:
    proc.add(100, cgroup=IN)
    proc.add(101, cgroup=fake_proc.containerd_v2(OTHER))
    assert container_pids(wanted, proc.root) == [100]


@pytest.mark.parametrize("wanted", ["", "3f9a", CID[:11], "not-an-id-at-all"])
def test_an_id_shorter_than_twelve_hex_characters_finds_nothing(proc: FakeProc,
                                                                wanted: str) -> None:
    proc.add(100, cgroup=IN)
    assert container_pids(wanted, proc.root) == []
    assert collect_process_tree(wanted, proc_root=proc.root).processes == []


def test_a_missing_proc_root_gives_an_empty_tree(tmp_path: Path) -> None:
    tree = collect_process_tree(CID, proc_root=tmp_path / "absent")
    assert tree.processes == []
    assert tree.rendered == ""


# ------------------------------------------------------------------------------ fields

def test_each_field_is_read_from_stat_status_cmdline_exe_cwd_and_the_containers_passwd(
        proc: FakeProc) -> None:
    content = b"\x7fELF pretend binary"
    exe = proc.executable("app", content)
    rootfs = proc.rootfs("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    proc.add(4242, cgroup=IN, ppid=4000, comm="app", cmdline=["/app", "--port", "8080"],
             exe=exe, cwd="/srv/app", uid=1000, ns_pids=(4242, 17), start_ticks=12345,
             root=rootfs)
    [info] = collect_process_tree(CID, proc_root=proc.root).processes
    assert info.pid == 4242
    assert info.ns_pid == 17  # the innermost NSpid value
    assert info.ppid == 4000
    assert info.uid == 1000
    assert info.user == "app"
    assert info.comm == "app"
    assert info.cmdline == ["/app", "--port", "8080"]
    assert not info.cmdline_truncated
    assert info.exe == str(exe)
    assert not info.exe_deleted
    assert not info.exe_memfd
    assert info.cwd == "/srv/app"
    assert info.sha256 == sha(content)
    assert info.exe_size == len(content)
    assert info.hash_skipped is None
    assert info.in_upper_layer is None  # no upperdir given
    assert not info.flagged
    started_ns = 12345 * 1_000_000_000 // fake_proc.CLK_TCK
    seconds, fraction = divmod(started_ns, 1_000_000_000)
    expected = datetime.fromtimestamp(fake_proc.BTIME + seconds, tz=UTC)
    assert info.start_time == f"{expected:%Y-%m-%dT%H:%M:%S}.{fraction:09d}Z"


@pytest.mark.parametrize("comm", ["a b", "x) S 99 (y", "))", "new\nline"])
def test_a_comm_with_spaces_or_parentheses_does_not_shift_the_stat_fields(
        proc: FakeProc, comm: str) -> None:
    proc.add(300, cgroup=IN, ppid=299, comm=comm, start_ticks=500)
    [info] = collect_process_tree(CID, proc_root=proc.root).processes
    assert info.comm == comm
    assert info.ppid == 299
    assert info.start_time is not None
    assert info.start_time.startswith(
        datetime.fromtimestamp(fake_proc.BTIME + 500 // fake_proc.CLK_TCK, tz=UTC)
        .strftime("%Y-%m-%dT%H:%M:%S"))


def test_a_uid_missing_from_the_containers_passwd_has_no_user_name(proc: FakeProc) -> None:
    rootfs = proc.rootfs("root:x:0:0::/:/bin/sh\n")
    proc.add(10, cgroup=IN, uid=4242, root=rootfs)
    proc.add(11, cgroup=IN, ppid=10, uid=0, root=rootfs)
    tree = by_pid(collect_process_tree(CID, proc_root=proc.root))
    assert [(tree[p].uid, tree[p].user) for p in (10, 11)] == [(4242, None), (0, "root")]


def test_an_image_without_etc_passwd_gives_no_user_names(proc: FakeProc) -> None:
    proc.add(10, cgroup=IN, uid=0, root=proc.rootfs(passwd=None))
    [info] = collect_process_tree(CID, proc_root=proc.root).processes
    assert (info.uid, info.user) == (0, None)


def test_the_passwd_is_the_containers_not_one_a_process_chrooted_into(proc: FakeProc) -> None:
    # The container's init is gone (no root link left); its child still shows the container's
    # root. A grandchild chrooted into a directory with its own passwd does not rename uid 0.
    container = proc.rootfs("root:x:0:0::/:/bin/sh\n")
    jail = proc.rootfs("nobody:x:0:0::/:/bin/sh\n")
    proc.add(10, cgroup=IN, uid=0)
    proc.add(11, cgroup=IN, ppid=10, uid=0, root=container)
    proc.add(12, cgroup=IN, ppid=11, uid=0, root=jail)
    tree = collect_process_tree(CID, proc_root=proc.root)
    assert [p.user for p in tree.processes] == ["root", "root", "root"]


def test_a_passwd_symlink_planted_in_the_container_is_not_followed(proc: FakeProc) -> None:
    outside = proc.base / "host-passwd"
    outside.write_text("hostroot:x:0:0::/:/bin/sh\n")
    rootfs = proc.rootfs(passwd=None)
    (rootfs / "etc" / "passwd").symlink_to(outside)
    proc.add(10, cgroup=IN, uid=0, root=rootfs)
    [info] = collect_process_tree(CID, proc_root=proc.root).processes
    assert info.user is None


def test_a_linked_file_named_like_a_deleted_one_is_not_taken_for_deleted(
        proc: FakeProc) -> None:
    # A directory cannot give the kernel's magic link to an unlinked inode: the link here
    # reaches a real file that is still linked, which is exactly how a dropper named
    # "x (deleted)" looks. Real deletions are covered on real /proc (test_evidence_on_host).
    content = b"dropped payload"
    exe = proc.executable("dropper", content)
    proc.add(50, cgroup=IN, exe=exe, deleted=True)
    [info] = collect_process_tree(CID, proc_root=proc.root, upperdir=proc.base).processes
    assert info.exe == f"{exe} (deleted)"
    assert not info.exe_deleted
    assert not info.exe_memfd
    assert info.sha256 == sha(content)


def test_a_memfd_executable_is_marked_and_lies_in_no_layer(proc: FakeProc) -> None:
    proc.add(51, cgroup=IN, exe="/memfd:payload (deleted)")
    [info] = collect_process_tree(CID, proc_root=proc.root, upperdir=proc.base).processes
    assert info.exe == "/memfd:payload"
    assert info.exe_memfd
    assert info.exe_deleted
    assert info.in_upper_layer is False
    # A directory cannot mimic the kernel's magic link to the memfd (the real-/proc test does).
    assert info.sha256 is None
    assert info.hash_skipped == "unreadable: ENOENT"


def test_an_executable_above_the_hash_cap_is_not_hashed(proc: FakeProc) -> None:
    proc.add(60, cgroup=IN, exe=proc.executable("big", b"x" * 11))
    proc.add(61, cgroup=IN, exe=proc.executable("fits", b"y" * 10))
    tree = by_pid(collect_process_tree(CID, proc_root=proc.root,
                                       limits=ProcessLimits(hash_max_bytes=10)))
    big, fits = tree[60], tree[61]
    assert (big.sha256, big.exe_size, big.hash_skipped) == (
        None, 11, "too large")
    assert (fits.sha256, fits.hash_skipped) == (sha(b"y" * 10), None)


def test_an_unreadable_executable_says_why(proc: FakeProc) -> None:
    proc.add(62, cgroup=IN, exe=str(proc.base / "nowhere"))
    [info] = collect_process_tree(CID, proc_root=proc.root).processes
    assert info.sha256 is None
    assert info.hash_skipped == "unreadable: ENOENT"


class _ExeOpens:
    """Counts files opened through ``<pid>/exe``, seen by a (permanent) audit hook while on."""

    def __init__(self) -> None:
        self.on = False
        self.paths: list[str] = []

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if self.on and event == "open" and args and isinstance(args[0], bytes | str):
            path = os.fsdecode(args[0])
            if path.endswith("/exe"):
                self.paths.append(path)


_EXE_OPENS = _ExeOpens()
sys.addaudithook(_EXE_OPENS)


def test_one_executable_shared_by_many_processes_is_hashed_once(proc: FakeProc) -> None:
    shared = proc.executable("worker", b"worker binary")
    other = proc.executable("other", b"other binary")
    for pid in range(100, 150):
        proc.add(pid, cgroup=IN, exe=shared)
    proc.add(150, cgroup=IN, exe=other)
    proc.add(151, cgroup=IN, exe=shared, deleted=True)  # a hard link: the same inode
    _EXE_OPENS.paths.clear()
    _EXE_OPENS.on = True
    try:
        tree = collect_process_tree(CID, proc_root=proc.root)
    finally:
        _EXE_OPENS.on = False
    hashes = {p.pid: p.sha256 for p in tree.processes}
    assert {hashes[pid] for pid in range(100, 150)} == {sha(b"worker binary")}
    assert hashes[150] == sha(b"other binary")
    assert hashes[151] == sha(b"worker binary")
    # The deleted copy is a hard link (one inode) of the shared file: two distinct files in all.
    assert len(_EXE_OPENS.paths) == 2


def test_the_cmdline_is_bounded_and_marked_truncated(proc: FakeProc) -> None:
    proc.add(70, cgroup=IN, cmdline=["python3", "-c", "x" * 100])
    proc.add(71, cgroup=IN, cmdline=["ok", "12"])  # 6 bytes with NULs: exactly fits
    tree = by_pid(collect_process_tree(CID, proc_root=proc.root,
                                       limits=ProcessLimits(cmdline_bytes=20)))
    long, short = tree[70], tree[71]
    assert long.cmdline == ["python3", "-c", "x" * 9]
    assert long.cmdline_truncated
    assert short.cmdline == ["ok", "12"]
    assert not short.cmdline_truncated


def test_undecodable_argv_bytes_are_kept_visible_and_json_safe(proc: FakeProc) -> None:
    proc.add(72, cgroup=IN, cmdline=b"sh\x00\xff\xfe\x00")
    tree = collect_process_tree(CID, proc_root=proc.root)
    assert tree.processes[0].cmdline == ["sh", "\\xff\\xfe"]
    assert ProcessTree.model_validate_json(tree.model_dump_json()) == tree


# ------------------------------------------------------------------------ upper layer

def test_an_executable_in_the_upperdir_is_in_the_upper_layer(proc: FakeProc) -> None:
    upper = proc.base / "upper"
    dropped = proc.executable("dropped", b"new")
    image = proc.executable("image", b"old")
    copy = upper / str(dropped).lstrip("/")
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"new")
    proc.add(80, cgroup=IN, exe=dropped)
    proc.add(81, cgroup=IN, exe=image)
    with_upper = by_pid(collect_process_tree(CID, proc_root=proc.root, upperdir=upper))
    without = by_pid(collect_process_tree(CID, proc_root=proc.root))
    assert with_upper[80].in_upper_layer is True
    assert with_upper[81].in_upper_layer is False
    assert without[80].in_upper_layer is None


def test_a_symlink_in_the_upperdir_does_not_count_as_the_executable(proc: FakeProc) -> None:
    upper = proc.base / "upper"
    exe = proc.executable("tool", b"tool")
    # The container planted a directory symlink leading out of the upperdir to the real file.
    link = upper / str(exe.parent).lstrip("/")
    link.parent.mkdir(parents=True)
    link.symlink_to(exe.parent)
    proc.add(82, cgroup=IN, exe=exe)
    [info] = collect_process_tree(CID, proc_root=proc.root, upperdir=upper).processes
    assert info.in_upper_layer is False


# ------------------------------------------------------------------- vanishing processes

def test_processes_that_vanished_while_being_read_are_skipped(proc: FakeProc) -> None:
    proc.add(90, cgroup=IN)
    (proc.add(91, cgroup=IN) / "stat").unlink()      # gone after the cgroup scan
    (proc.add(92, cgroup=IN) / "status").unlink()    # gone after stat
    (proc.add(93, cgroup=IN) / "cmdline").unlink()   # gone after status
    gone = proc.add(94, cgroup=IN)
    for child in gone.iterdir():
        child.unlink()
    proc.add(95, cgroup="")                          # an unreadable cgroup file: not ours
    (proc.root / "96").mkdir()                       # a directory with nothing left in it
    tree = collect_process_tree(CID, proc_root=proc.root)
    assert [p.pid for p in tree.processes] == [90]


def test_a_zombie_without_exe_or_cwd_is_kept_with_empty_fields(proc: FakeProc) -> None:
    proc.add(97, cgroup=IN, exe=None, cwd=None, cmdline=b"", comm="defunct")
    [info] = collect_process_tree(CID, proc_root=proc.root).processes
    assert (info.exe, info.cwd, info.cmdline, info.sha256) == (None, None, [], None)
    assert info.hash_skipped == "unreadable: ENOENT"
    assert "[defunct]" in info_line(info.pid, collect_process_tree(CID, proc_root=proc.root))


def info_line(pid: int, tree: ProcessTree) -> str:
    [line] = [line for line in tree.rendered.splitlines() if f" {pid}/" in line]
    return line


# ----------------------------------------------------------------------------- ordering

def test_roots_come_first_then_each_subtree_depth_first_by_pid(proc: FakeProc) -> None:
    for pid, ppid in [(13, 10), (11, 10), (12, 11), (10, 1), (30, 5), (5, 2), (40, 12)]:
        proc.add(pid, cgroup=IN, ppid=ppid)
    tree = collect_process_tree(CID, proc_root=proc.root)
    assert [p.pid for p in tree.processes] == [5, 30, 10, 11, 12, 40, 13]
    indents = [len(line) - len(line.lstrip()) for line in tree.rendered.splitlines()]
    assert indents == [3, 5, 3, 5, 7, 9, 5]


def test_a_parent_loop_loses_no_process(proc: FakeProc) -> None:
    # pids reused while reading can make a loop that reaches no root.
    proc.add(20, cgroup=IN, ppid=21)
    proc.add(21, cgroup=IN, ppid=20)
    proc.add(22, cgroup=IN, ppid=22)
    tree = collect_process_tree(CID, proc_root=proc.root)
    assert sorted(p.pid for p in tree.processes) == [20, 21, 22]
    assert len(tree.rendered.splitlines()) == 3


def test_a_chain_deeper_than_the_recursion_limit_is_ordered(proc: FakeProc) -> None:
    depth = sys.getrecursionlimit() + 100
    for pid in range(2, depth + 2):
        proc.add(pid, cgroup=IN, ppid=pid - 1, cmdline=b"", cwd=None)
    tree = collect_process_tree(CID, proc_root=proc.root,
                                limits=ProcessLimits(max_processes=depth))
    assert [p.pid for p in tree.processes] == list(range(2, depth + 2))
    assert len(excerpt(tree).splitlines()) < 50


# ------------------------------------------------------------------------------ flagging

@pytest.mark.parametrize("flag", [{"flag_pid": 201}, {"flag_vpid": 7},
                                  {"flag_exe": "EXE"}, {"flag_exe": "EXE (deleted)"}])
def test_the_alerts_process_is_flagged_by_host_pid_vpid_or_exe(
        proc: FakeProc, flag: dict[str, object]) -> None:
    sh = proc.executable("sh", b"shell")
    miner = proc.executable("miner", b"miner")
    proc.add(200, cgroup=IN, exe=sh, ns_pids=(200, 1))
    proc.add(201, cgroup=IN, ppid=200, exe=miner, ns_pids=(201, 7))
    proc.add(202, cgroup=IN, ppid=200, exe=sh, ns_pids=(202, 8))
    proc.add(7, cgroup=fake_proc.containerd_v2(OTHER), exe=miner)  # same exe, other container
    if flag.get("flag_exe"):
        flag = {"flag_exe": str(flag["flag_exe"]).replace("EXE", str(miner))}
    tree = collect_process_tree(CID, proc_root=proc.root, **flag)  # type: ignore[arg-type]
    assert [p.pid for p in tree.processes if p.flagged] == [201]
    assert info_line(201, tree).startswith(">> ")
    assert not info_line(202, tree).startswith(">>")


def test_falcos_memfd_exepath_flags_the_fileless_process(proc: FakeProc) -> None:
    proc.add(210, cgroup=IN, exe=proc.executable("python3", b"python"))
    proc.add(211, cgroup=IN, ppid=210, exe="/memfd:payload (deleted)")
    tree = collect_process_tree(CID, proc_root=proc.root, flag_exe="memfd:payload")
    assert [p.pid for p in tree.processes if p.flagged] == [211]


def test_a_pid_outside_the_container_flags_nothing(proc: FakeProc) -> None:
    proc.add(300, cgroup=IN)
    proc.add(301, cgroup=fake_proc.containerd_v2(OTHER))
    tree = collect_process_tree(CID, proc_root=proc.root, flag_pid=301, flag_vpid=999,
                                flag_exe="/nonexistent")
    assert [p.flagged for p in tree.processes] == [False]


def test_truncation_keeps_the_flagged_process_and_its_ancestors(proc: FakeProc) -> None:
    proc.add(1000, cgroup=IN, ppid=1)
    for pid in range(1001, 1040):
        proc.add(pid, cgroup=IN, ppid=1000)
    proc.add(1100, cgroup=IN, ppid=1039)
    proc.add(1101, cgroup=IN, ppid=1100)
    tree = collect_process_tree(CID, proc_root=proc.root, flag_pid=1101,
                                limits=ProcessLimits(max_processes=10))
    assert tree.truncated
    pids = [p.pid for p in tree.processes]
    assert len(pids) == 10
    assert {1000, 1039, 1100, 1101} <= set(pids)
    assert pids[:7] == [1000, 1001, 1002, 1003, 1004, 1005, 1006]
    assert pids[-3:] == [1039, 1100, 1101]
    assert not collect_process_tree(CID, proc_root=proc.root,
                                    limits=ProcessLimits(max_processes=42)).truncated


# ----------------------------------------------------------------------------- rendering

HOSTILE = ["sh", "-c", "echo ok\n>> 1/1 root /fake injected", "\x1b[2J\x1b[31mred",
           "tab\there", "cr\rhere", "\u202eevil-bidi", "line\u2028sep", "nul-free\x7f", "back\\n"]


def test_rendering_keeps_each_process_on_one_line_whatever_its_argv(proc: FakeProc) -> None:
    proc.add(400, cgroup=IN, cmdline=HOSTILE, comm="x\ny")
    proc.add(401, cgroup=IN, ppid=400, cmdline=["sleep", "1"])
    tree = collect_process_tree(CID, proc_root=proc.root)
    lines = tree.rendered.split("\n")
    assert len(lines) == 2
    assert not any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"} for ch in tree.rendered
                   if ch != "\n")
    assert "echo ok\\n>> 1/1 root /fake injected" in lines[0]
    assert "\\x1b[2J\\x1b[31mred" in lines[0]
    assert "\\u202eevil-bidi" in lines[0]
    assert "back\\\\n" in lines[0]  # a literal backslash is escaped too: no ambiguity
    assert lines[1].startswith("     401/401 ")


def test_rendering_marks_deleted_memfd_and_upper_layer_executables(proc: FakeProc) -> None:
    upper = proc.base / "upper"
    dropped = proc.executable("dropped", b"new")
    (upper / str(dropped).lstrip("/")).parent.mkdir(parents=True)
    (upper / str(dropped).lstrip("/")).write_bytes(b"new")
    proc.add(500, cgroup=IN, exe=dropped, cmdline=["./dropped"],
             root=proc.rootfs("root:x:0:0::/:/bin/sh\n"))
    proc.add(501, cgroup=IN, ppid=500, exe=proc.executable("gone", b"g"), deleted=True, uid=7)
    proc.add(502, cgroup=IN, ppid=500, exe="/memfd:x (deleted)", ns_pids=(502, 3))
    tree = collect_process_tree(CID, proc_root=proc.root, upperdir=upper, flag_pid=502)
    assert tree.rendered.split("\n") == [
        f"   500/500 root {dropped} [upper] ./dropped",
        f"     501/501 7 {proc.files / 'gone'} (deleted) sh",
        ">>   502/3 root /memfd:x (deleted) [memfd] sh",
    ]


def test_argv_words_are_quoted_when_their_boundaries_would_not_show(proc: FakeProc) -> None:
    proc.add(700, cgroup=IN, cmdline=["sh", "-c", "echo hi", "", "it's"])
    proc.add(701, cgroup=IN, cmdline=["python3", "-m", "app.worker", "--port=8080"])
    lines = collect_process_tree(CID, proc_root=proc.root).rendered.split("\n")
    assert lines[0].endswith(" sh -c 'echo hi' '' 'it'\"'\"'s'")
    assert lines[1].endswith(" python3 -m app.worker --port=8080")


def test_a_long_argv_is_cut_in_the_rendering_but_kept_in_the_data(proc: FakeProc) -> None:
    proc.add(600, cgroup=IN, cmdline=["python3", "-c", "y" * 1000])
    tree = collect_process_tree(CID, proc_root=proc.root)
    assert tree.processes[0].cmdline[2] == "y" * 1000
    assert len(tree.rendered) < 400
    assert tree.rendered.endswith("chars]")


def test_render_tree_of_nothing_is_empty() -> None:
    assert render_tree([]) == ""


# ------------------------------------------------------------------------------- excerpt

def test_the_excerpt_shows_the_flagged_process_its_ancestors_and_neighbours(
        proc: FakeProc) -> None:
    proc.add(2, cgroup=IN, ppid=1)
    for pid in range(3, 200):
        proc.add(pid, cgroup=IN, ppid=2)
    proc.add(300, cgroup=IN, ppid=150)
    proc.add(301, cgroup=IN, ppid=300)
    tree = collect_process_tree(CID, proc_root=proc.root, flag_pid=301)
    text = excerpt(tree, around=10)
    lines = text.split("\n")
    assert lines[0].startswith("   2/2 ")  # the root ancestor
    assert lines[1] == "   ..."
    flagged = [line for line in lines if line.startswith(">>")]
    assert len(flagged) == 1
    assert " 301/301 " in flagged[0]
    assert any(" 300/300 " in line for line in lines)
    assert any(" 150/150 " in line for line in lines)
    assert lines[-1].startswith("   ... (")
    assert len([line for line in lines if not line.strip().startswith("...")]) == 10


def test_the_excerpt_shows_the_top_of_the_tree_when_nothing_is_flagged(proc: FakeProc) -> None:
    for pid in range(10, 100):
        proc.add(pid, cgroup=IN, ppid=1)
    tree = collect_process_tree(CID, proc_root=proc.root)
    lines = excerpt(tree, around=40).split("\n")
    assert len(lines) == 41
    assert lines[:40] == tree.rendered.split("\n")[:40]
    assert lines[40] == "   ... (50 more below)"


def test_the_excerpt_of_a_small_tree_is_the_whole_tree(proc: FakeProc) -> None:
    proc.add(10, cgroup=IN, ppid=1)
    proc.add(11, cgroup=IN, ppid=10)
    tree = collect_process_tree(CID, proc_root=proc.root, flag_pid=11)
    assert excerpt(tree) == tree.rendered
    assert excerpt(ProcessTree(container_id=CID)) == ""


def test_the_excerpt_says_when_the_tree_was_truncated(proc: FakeProc) -> None:
    for pid in range(10, 20):
        proc.add(pid, cgroup=IN, ppid=1)
    tree = collect_process_tree(CID, proc_root=proc.root, limits=ProcessLimits(max_processes=5))
    assert excerpt(tree).endswith("(tree truncated: more processes than collected)")


# ------------------------------------------------------------------ this machine's /proc

CGROUP2 = Path("/sys/fs/cgroup/unified")


def _cgroup2_root() -> Path | None:
    for candidate in (CGROUP2, Path("/sys/fs/cgroup")):
        if (candidate / "cgroup.procs").exists() and os.access(candidate, os.W_OK):
            with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
                if any(f" {candidate} cgroup2 " in line for line in mounts):
                    return candidate
    return None


@pytest.fixture
def container_scope() -> Iterator[tuple[str, Path]]:
    """A cgroup v2 directory named like a containerd container's scope, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a cgroup and move a process into it")
    root = _cgroup2_root()
    if root is None:
        pytest.skip("no writable cgroup2 hierarchy (looked at /sys/fs/cgroup/unified and "
                    "/sys/fs/cgroup)")
    cid = secrets.token_hex(32)
    pod = str(uuid.uuid4()).replace("-", "_")
    top = root / f"drift-responder-test-{cid[:8]}"
    scope = top / f"kubepods-besteffort-pod{pod}.slice" / f"cri-containerd-{cid}.scope"
    try:
        scope.mkdir(parents=True)
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {root}: {exc}")
    try:
        yield cid, scope
    finally:
        with contextlib.suppress(OSError):
            for pid in (scope / "cgroup.procs").read_text().split():
                (root / "cgroup.procs").write_text(pid)  # out, so the directory can go
        for directory in (scope, scope.parent, top):
            with contextlib.suppress(OSError):
                directory.rmdir()


@contextlib.contextmanager
def started_in(scope: Path, argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             **kwargs)  # type: ignore[call-overload]
    try:
        (scope / "cgroup.procs").write_text(str(child.pid))
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_real_process_in_a_containerd_scope_is_found_on_this_machine(
        container_scope: tuple[str, Path]) -> None:
    cid, scope = container_scope
    sleep = os.path.realpath(shutil.which("sleep") or "/bin/sleep")
    with started_in(scope, [sleep, "60"]) as child:
        tree = collect_process_tree(cid[:12], flag_pid=child.pid)
    [info] = tree.processes
    assert info.pid == child.pid
    assert info.ppid == os.getpid()
    assert info.ns_pid == child.pid  # same pid namespace as the test
    assert info.cmdline == [sleep, "60"]
    assert info.exe == sleep
    assert not info.exe_deleted
    assert info.sha256 == sha(Path(sleep).read_bytes())
    assert info.uid == 0
    assert info.user == "root"  # from /proc/<pid>/root/etc/passwd, here the host's
    assert info.cwd == os.getcwd()
    assert info.flagged
    assert info.start_time is not None


def test_real_deleted_and_memfd_executables_are_hashed_through_proc(
        container_scope: tuple[str, Path], tmp_path: Path) -> None:
    cid, scope = container_scope
    sleep_bytes = Path(os.path.realpath(shutil.which("sleep") or "/bin/sleep")).read_bytes()
    dropper = tmp_path / "dropper"
    dropper.write_bytes(sleep_bytes)
    dropper.chmod(0o755)
    writable = os.memfd_create("payload", 0)
    os.write(writable, sleep_bytes)
    # Exec refuses a file open for writing: keep only a read-only descriptor of the memfd.
    readonly = os.open(f"/proc/self/fd/{writable}", os.O_RDONLY)
    os.close(writable)
    try:
        with started_in(scope, [str(dropper), "61"]) as deleted, \
                started_in(scope, ["payload", "62"], executable=f"/proc/self/fd/{readonly}",
                           pass_fds=(readonly,)) as memfd:
            dropper.unlink()
            tree = collect_process_tree(f"containerd://{cid}", flag_vpid=memfd.pid)
    finally:
        os.close(readonly)
    found = by_pid(tree)
    assert sorted(found) == sorted([deleted.pid, memfd.pid])
    gone, anonymous = found[deleted.pid], found[memfd.pid]
    assert (gone.exe, gone.exe_deleted, gone.exe_memfd) == (
        str(dropper), True, False)
    assert gone.sha256 == sha(sleep_bytes)
    assert (anonymous.exe, anonymous.exe_memfd) == ("/memfd:payload", True)
    assert anonymous.sha256 == sha(sleep_bytes)
    assert anonymous.cmdline == ["payload", "62"]
    assert anonymous.flagged
    assert "(deleted)" in tree.rendered
    assert "[memfd]" in tree.rendered
