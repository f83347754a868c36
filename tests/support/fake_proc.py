"""Synthetic ``/proc`` trees in a temporary directory, for the process-tree collector.

The collector only reads files and symlinks under a proc root, so a directory shaped like
``/proc`` lets tests (and bench/evidence.py) describe any container — thousands of processes,
hostile names, vanished pids — without a kernel. What a plain directory cannot do is the kernel's
magic links: ``exe`` here is an ordinary symlink, so a deleted executable is mimicked by a link
whose target text really ends in `` (deleted)`` (pointing at a real file of that name, so it can
still be hashed, as the kernel allows), and a memfd by a dangling ``/memfd:<name> (deleted)``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

BTIME = 1_700_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ cgroup file contents

def containerd_v2(container_id: str, pod_uid: str | None = None, qos: str = "besteffort") -> str:
    """cgroup v2, systemd driver, containerd: what the kubelet creates on most nodes."""
    pod = (pod_uid or str(uuid.uuid4())).replace("-", "_")
    return (f"0::/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{pod}.slice/"
            f"cri-containerd-{container_id}.scope\n")


def crio_v2(container_id: str, pod_uid: str | None = None, conmon: bool = False) -> str:
    """cgroup v2, systemd driver, CRI-O; ``conmon`` gives its monitor's scope instead."""
    pod = (pod_uid or str(uuid.uuid4())).replace("-", "_")
    scope = f"crio-conmon-{container_id}" if conmon else f"crio-{container_id}"
    return (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/"
            f"{scope}.scope\n")


def docker_systemd(container_id: str) -> str:
    return f"0::/system.slice/docker-{container_id}.scope\n"


def docker_cgroupfs_v1(container_id: str) -> str:
    return "".join(f"{n}:{c}:/docker/{container_id}\n" for n, c in
                   ((12, "pids"), (11, "memory"), (4, "cpu,cpuacct"), (1, "name=systemd")))


def kubepods_cgroupfs_v1(container_id: str, pod_uid: str | None = None,
                         qos: str = "besteffort") -> str:
    """cgroup v1, cgroupfs driver: one line per hierarchy, all naming the container."""
    pod = pod_uid or str(uuid.uuid4())
    path = f"/kubepods/{qos}/pod{pod}/{container_id}"
    return "".join(f"{n}:{c}:{path}\n" for n, c in
                   ((11, "blkio"), (10, "memory"), (9, "pids"), (3, "cpu,cpuacct"),
                    (1, "name=systemd"))) + "0::/\n"


def host_cgroup(unit: str = "system.slice/kubelet.service") -> str:
    return f"0::/{unit}\n"


# ------------------------------------------------------------------------------ the tree

class FakeProc:
    """A proc root at ``<base>/proc``; executables and root filesystems live beside it."""

    def __init__(self, base: Path, btime: int = BTIME) -> None:
        self.base = base
        self.root = base / "proc"
        self.files = base / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self.files.mkdir(parents=True, exist_ok=True)
        self.btime = btime
        (self.root / "stat").write_text(
            "cpu  1 2 3 4 5 6 7 0 0 0\nintr 1\nctxt 2\n"
            f"btime {btime}\nprocesses 3\nprocs_running 1\nprocs_blocked 0\n")
        self._rootfs_count = 0

    def executable(self, name: str, content: bytes, mode: int = 0o755) -> Path:
        """A real file to point ``exe`` links at (and to hash)."""
        path = self.files / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
        return path

    def rootfs(self, passwd: str | bytes | None = "root:x:0:0:root:/root:/bin/sh\n") -> Path:
        """A container root filesystem holding only ``/etc/passwd`` (None: no passwd file)."""
        self._rootfs_count += 1
        path = self.base / f"rootfs-{self._rootfs_count}"
        (path / "etc").mkdir(parents=True)
        if passwd is not None:
            data = passwd.encode() if isinstance(passwd, str) else passwd
            (path / "etc" / "passwd").write_bytes(data)
        return path

    def add(
        self,
        pid: int,
        *,
        cgroup: str,
        ppid: int = 1,
        comm: str | bytes = "sh",
        cmdline: Sequence[str] | bytes = ("sh",),
        exe: Path | str | None = None,
        deleted: bool = False,
        cwd: str | None = "/",
        uid: int = 0,
        ns_pids: Sequence[int] | None = None,
        start_ticks: int = 100,
        root: Path | None = None,
    ) -> Path:
        """One process directory. ``exe``: a Path links to that real file (with ``deleted``, to a
        copy named ``<file> (deleted)``); a str is the link's literal text; None gives no link,
        as for a zombie. ``ns_pids`` is the NSpid line (outermost first); default ``pid``."""
        d = self.root / str(pid)
        d.mkdir()
        (d / "cgroup").write_text(cgroup)
        comm_b = comm.encode() if isinstance(comm, str) else comm
        rest = [b"S", ppid, pid, pid, 0, -1, 4194560, 100, 0, 0, 0, 1, 2, 0, 0, 20, 0, 1, 0,
                start_ticks, 4_000_000, 200, 18446744073709551615, 1, 1, 0, 0, 0, 0, 0, 0, 0,
                0, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        (d / "stat").write_bytes(b"%d (" % pid + comm_b + b") " +
                                 b" ".join(v if isinstance(v, bytes) else str(v).encode()
                                           for v in rest) + b"\n")
        nspid = "\t".join(str(p) for p in (ns_pids if ns_pids is not None else (pid,)))
        name = comm_b.decode("utf-8", "backslashreplace").replace("\n", "\\n")
        (d / "status").write_text(
            f"Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nNgid:\t0\n"
            f"Pid:\t{pid}\nPPid:\t{ppid}\nTracerPid:\t0\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
            f"Gid:\t0\t0\t0\t0\nFDSize:\t64\nGroups:\t0 \nNStgid:\t{nspid}\nNSpid:\t{nspid}\n"
            f"NSpgid:\t{nspid}\nNSsid:\t{nspid}\nVmPeak:\t    4000 kB\nThreads:\t1\n")
        if isinstance(cmdline, bytes):
            (d / "cmdline").write_bytes(cmdline)
        else:
            (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
        if isinstance(exe, Path):
            target = exe
            if deleted:
                target = exe.with_name(exe.name + " (deleted)")
                if not target.exists():
                    os.link(exe, target)
            os.symlink(target, d / "exe")
        elif isinstance(exe, str):
            os.symlink(exe, d / "exe")
        if cwd is not None:
            os.symlink(cwd, d / "cwd")
        if root is not None:
            os.symlink(root, d / "root")
        return d
