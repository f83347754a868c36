"""The node agent's collectors against a real container on this machine, output asserted exactly.

Root-only: ``responder.agent.throwaway`` builds the container from the kernel's own parts (a
cgroup v2 scope named as containerd names it, pid/mount/uts/ipc namespaces, an overlay root of
two image layers) and makes drift in it: a changed, an added and a deleted file, a deleted
directory, an opaque directory, a binary dropped into the upper layer and run under a shell,
and a fileless process run from a memfd. The collectors read it all from the host's ``/proc``
and the overlay's upper layer, as they would on a node, and must say exactly what happened.

One container serves the whole module (it starts in about 0.2 s; the drift is made once).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from responder.agent import mounts, overlay, processes, throwaway
from responder.agent.models import FilesystemDiff, ProcessTree
from responder.agent.throwaway import SampleDrift, ThrowawayContainer
from tests.support.processes import REPO, base_env

UNAVAILABLE = throwaway.unavailable_reason()
# Every test but the refusal ones, which check what a machine without root is told.
root_only = pytest.mark.skipif(UNAVAILABLE is not None,
                               reason=f"needs a throwaway container: {UNAVAILABLE}")

PROC = Path("/proc")
CLI = [sys.executable, "-m", "responder"]

# Inside the container's fresh pid namespace pids are handed out in order, and each process the
# container is given costs two: ``enter`` double-forks (like a daemon) so that the process is
# reparented to the container's init. The shell runs the dropped binary itself: one pid.
INIT_NS_PID, IMAGE_NS_PID, SHELL_NS_PID, DROPPED_NS_PID, MEMFD_NS_PID = 1, 3, 5, 6, 8

# The drift of ``apply_sample_drift``, in docker-diff terms, by path. The parents of every change
# are changed directories (they were copied up); the opaque /var/cache/app hides the image's
# index.db and blobs/ (deleted as a whole, like any deleted directory).
EXPECTED_CHANGES = [
    ("C", "/etc"),
    ("C", "/etc/app.conf"),
    ("D", "/etc/obsolete.conf"),
    ("C", "/tmp"),
    ("A", "/tmp/x"),
    ("C", "/usr"),
    ("C", "/usr/share"),
    ("C", "/usr/share/doc"),
    ("D", "/usr/share/doc/app"),
    ("C", "/var"),
    ("C", "/var/cache"),
    ("C", "/var/cache/app"),
    ("D", "/var/cache/app/blobs"),
    ("A", "/var/cache/app/fresh.db"),
    ("D", "/var/cache/app/index.db"),
    ("C", "/var/log"),
    ("A", "/var/log/app.log"),
]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThrowawayContainer]:
    if UNAVAILABLE is not None:
        pytest.skip(f"needs a throwaway container: {UNAVAILABLE}")
    base = tmp_path_factory.mktemp("containers")
    with ThrowawayContainer(base_dir=base) as built:
        yield built
    assert (list(base.iterdir()), throwaway.mount_points_under(base)) == ([], [])


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[..., ThrowawayContainer]]:
    """Containers of one test, made under its own directory: whatever a teardown would leave
    there (a directory, a mount) fails the test."""
    base = tmp_path / "containers"
    base.mkdir()

    def make(**options: Any) -> ThrowawayContainer:
        return ThrowawayContainer(base_dir=base, **options)

    yield make
    assert (list(base.iterdir()), throwaway.mount_points_under(base)) == ([], [])


@pytest.fixture(scope="module")
def drift(container: ThrowawayContainer) -> SampleDrift:
    return container.apply_sample_drift()


@pytest.fixture(scope="module")
def root_overlay(container: ThrowawayContainer, drift: SampleDrift) -> mounts.RootOverlay:
    found = mounts.root_overlay(PROC, drift.dropped_pid)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def tree(container: ThrowawayContainer, drift: SampleDrift,
         root_overlay: mounts.RootOverlay) -> ProcessTree:
    return processes.collect_process_tree(container.id, proc_root=PROC,
                                          upperdir=root_overlay.upperdir,
                                          flag_pid=drift.dropped_pid)


@pytest.fixture(scope="module")
def diff(container: ThrowawayContainer, drift: SampleDrift,
         root_overlay: mounts.RootOverlay) -> FilesystemDiff:
    return overlay.diff_upperdir(root_overlay.upperdir, list(root_overlay.lowerdirs),
                                 container_id=container.id, flag_paths=["/tmp/x"],
                                 exclude=mounts.volume_mount_points(PROC, drift.dropped_pid))


def expected_processes(container: ThrowawayContainer, drift: SampleDrift) -> list[dict[str, Any]]:
    """Every field the collector reports that does not depend on the clock, per process."""
    assert container.helper is not None
    image_binary = container.helper.read_bytes()
    dropped_binary = container.dropped_binary()

    def proc(pid: int, ns_pid: int, ppid: int, cmdline: list[str], *, exe: str,
             binary: bytes, uid: int = 0, user: str = "root", comm: str = "app",
             upper: bool = False, deleted: bool = False, memfd: bool = False,
             flagged: bool = False) -> dict[str, Any]:
        return {"pid": pid, "ns_pid": ns_pid, "ppid": ppid, "uid": uid, "user": user,
                "cmdline": cmdline, "cmdline_truncated": False, "comm": comm, "exe": exe,
                "exe_deleted": deleted, "exe_memfd": memfd, "cwd": "/",
                "sha256": sha256_of(binary), "exe_size": len(binary), "hash_skipped": None,
                "in_upper_layer": upper, "flagged": flagged}

    return [
        proc(container.init_pid, INIT_NS_PID, container.launcher_pid, ["/bin/app", "init"],
             exe="/bin/app", binary=image_binary),
        proc(drift.image_pid, IMAGE_NS_PID, container.init_pid, ["/bin/app", "sleep"],
             exe="/bin/app", binary=image_binary, uid=throwaway.APP_UID,
             user=throwaway.APP_USER),
        proc(drift.shell_pid, SHELL_NS_PID, container.init_pid,
             ["/bin/app", "shell", "/tmp/x", "sleep"], exe="/bin/app", binary=image_binary),
        proc(drift.dropped_pid, DROPPED_NS_PID, drift.shell_pid, ["/tmp/x", "sleep"],
             exe="/tmp/x", binary=dropped_binary, comm="x", upper=True, flagged=True),
        # The memfd holds a copy of /bin/app; comm is "memfd:payload" on Linux 6.x (older
        # kernels named it after the fd's number: see comparable).
        proc(drift.memfd_pid, MEMFD_NS_PID, container.init_pid, ["/bin/app", "sleep"],
             exe=f"/memfd:{throwaway.MEMFD_NAME}", binary=image_binary,
             comm="memfd:payload", deleted=True, memfd=True),
    ]


def comparable(dumped: dict[str, Any]) -> dict[str, Any]:
    fields = dict(dumped)
    fields.pop("start_time")
    if fields["exe_memfd"] and fields["comm"] == "4":  # fexecve's "/dev/fd/4" before Linux 6.x
        fields["comm"] = "memfd:payload"
    return fields


# ------------------------------------------------------------------------------ the container

def test_the_container_is_a_containerd_scope_with_its_own_pid_namespace_and_overlay_root(
        container: ThrowawayContainer, drift: SampleDrift) -> None:
    cgroup = Path(PROC, str(container.init_pid), "cgroup").read_text()
    assert (f"kubepods-besteffort-pod{container.pod_uid.replace('-', '_')}.slice/"
            f"cri-containerd-{container.id}.scope\n") in cgroup
    assert throwaway.ns_pid_of(container.init_pid) == 1
    mountinfo = mounts.read_mountinfo(PROC, container.init_pid)
    assert [(m.mount_point, m.fstype) for m in mountinfo] == [("/", "overlay"), ("/proc", "proc")]
    assert os.readlink(PROC / str(container.init_pid) / "root") == "/"
    assert container.pids() == sorted([container.init_pid, drift.image_pid, drift.shell_pid,
                                       drift.dropped_pid, drift.memfd_pid])


# ------------------------------------------------------------------------------ process tree

def test_the_container_s_processes_are_found_by_their_cgroup_under_any_form_of_its_id(
        container: ThrowawayContainer, drift: SampleDrift) -> None:
    for form in (container.id, container.short_id, f"containerd://{container.id}",
                 container.id.upper()):
        assert processes.container_pids(form, PROC) == container.pids(), form
    assert processes.container_pids(container.id[:11], PROC) == []


def test_the_process_tree_is_exactly_the_container_s_processes(
        container: ThrowawayContainer, drift: SampleDrift, tree: ProcessTree) -> None:
    assert tree.container_id == container.id
    assert (tree.method, tree.assurance, tree.truncated) == ("node-agent", "high", False)
    got = [comparable(proc.model_dump()) for proc in tree.processes]
    assert got == expected_processes(container, drift)


def test_every_process_has_its_real_start_time(tree: ProcessTree) -> None:
    now = datetime.now(UTC)
    for proc in tree.processes:
        assert proc.start_time is not None
        started = datetime.fromisoformat(proc.start_time[:26] + "+00:00")
        # Boot time and clock ticks round; a minute is far more than either.
        assert now - timedelta(minutes=1) < started < now + timedelta(minutes=1), proc


def test_the_rendered_tree_nests_the_dropped_binary_under_its_shell_and_marks_it(
        container: ThrowawayContainer, drift: SampleDrift, tree: ProcessTree) -> None:
    memfd_line = (f"     {drift.memfd_pid}/{MEMFD_NS_PID} root /memfd:payload (deleted) [memfd] "
                  "/bin/app sleep")
    assert tree.rendered.split("\n") == [
        f"   {container.init_pid}/1 root /bin/app /bin/app init",
        f"     {drift.image_pid}/{IMAGE_NS_PID} app /bin/app /bin/app sleep",
        f"     {drift.shell_pid}/{SHELL_NS_PID} root /bin/app /bin/app shell /tmp/x sleep",
        f">>     {drift.dropped_pid}/{DROPPED_NS_PID} root /tmp/x [upper] /tmp/x sleep",
        memfd_line,
    ]


def test_a_binary_dropped_into_the_upper_layer_is_flagged_and_hashed(
        container: ThrowawayContainer, drift: SampleDrift, tree: ProcessTree) -> None:
    (dropped,) = [proc for proc in tree.processes if proc.flagged]
    assert dropped.pid == drift.dropped_pid
    assert dropped.in_upper_layer is True
    assert dropped.sha256 == sha256_of(container.host_path("/tmp/x").read_bytes())
    # Not the image's copy: the dropped one has a trailer, so the hashes differ.
    assert dropped.sha256 != sha256_of(container.host_path("/bin/app").read_bytes())


@pytest.mark.parametrize("how", ["flag_vpid", "flag_exe", "flag_exe_deleted"])
def test_the_dropped_binary_is_flagged_by_its_pid_inside_the_container_or_its_path(
        container: ThrowawayContainer, drift: SampleDrift, root_overlay: mounts.RootOverlay,
        how: str) -> None:
    ways: dict[str, dict[str, Any]] = {"flag_vpid": {"flag_vpid": DROPPED_NS_PID},
                                       "flag_exe": {"flag_exe": "/tmp/x"},
                                       "flag_exe_deleted": {"flag_exe": "/tmp/x (deleted)"}}
    flags = ways[how]
    found = processes.collect_process_tree(container.short_id, proc_root=PROC,
                                           upperdir=root_overlay.upperdir, **flags)
    assert found.container_id == container.short_id
    assert [proc.pid for proc in found.processes if proc.flagged] == [drift.dropped_pid]


def test_a_fileless_process_is_seen_as_a_deleted_memfd_in_no_layer(
        drift: SampleDrift, tree: ProcessTree) -> None:
    (memfd,) = [proc for proc in tree.processes if proc.exe_memfd]
    assert memfd.pid == drift.memfd_pid
    assert (memfd.exe, memfd.exe_deleted, memfd.in_upper_layer) == ("/memfd:payload", True, False)
    # Hashed through /proc/<pid>/exe although no path reaches it.
    assert memfd.sha256 == hashlib.sha256(Path(PROC, str(memfd.pid), "exe").read_bytes()
                                          ).hexdigest()


def test_without_the_upperdir_the_layer_of_an_executable_is_unknown(
        container: ThrowawayContainer) -> None:
    found = processes.collect_process_tree(container.id, proc_root=PROC)
    assert [proc.in_upper_layer for proc in found.processes] == [None, None, None, None, False]


# ------------------------------------------------------------------------------ mounts

def test_the_root_overlay_is_read_from_every_process_s_mountinfo(
        container: ThrowawayContainer, drift: SampleDrift) -> None:
    expected = mounts.RootOverlay(upperdir=container.upperdir,
                                  lowerdirs=list(container.lowerdirs),
                                  workdir=container.workdir)
    for pid in container.pids():
        assert mounts.root_overlay(PROC, pid) == expected, pid
        assert mounts.volume_mount_points(PROC, pid) == ["/proc"]


def test_the_root_overlay_is_mapped_under_the_host_root_the_agent_sees(
        container: ThrowawayContainer) -> None:
    found = mounts.root_overlay(PROC, container.init_pid, host_root=Path("/host"))
    assert found is not None
    assert found.upperdir == Path("/host") / container.upperdir.relative_to("/")
    assert found.lowerdirs == [Path("/host") / p.relative_to("/") for p in container.lowerdirs]


@root_only
def test_relative_lowerdirs_resolve_against_the_snapshots_directory_as_containerd_s_do(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    with fresh(relative_lowerdirs=True) as relative:
        (line,) = [m for m in mounts.read_mountinfo(PROC, relative.init_pid)
                   if m.mount_point == "/"]
        assert line.option("lowerdir") == "2/fs:1/fs"
        found = mounts.root_overlay(PROC, relative.init_pid)
        assert found is not None
        assert found.lowerdirs == list(relative.lowerdirs)
        assert found.upperdir == relative.upperdir


# ------------------------------------------------------------------------------ filesystem diff

def test_the_filesystem_diff_is_exactly_the_drift(
        container: ThrowawayContainer, diff: FilesystemDiff) -> None:
    assert diff.container_id == container.id
    assert (diff.method, diff.assurance, diff.truncated) == ("node-agent", "high", False)
    assert diff.upperdir == str(container.upperdir)
    assert diff.lowerdirs == [str(p) for p in container.lowerdirs]
    # The flagged path first, then the rest by path.
    flagged = ("A", "/tmp/x")
    assert [(c.kind, c.path) for c in diff.changes] == [
        flagged, *[change for change in EXPECTED_CHANGES if change != flagged]]
    assert [c.path for c in diff.changes if c.flagged] == ["/tmp/x"]


def test_the_diff_summary_counts_every_change_and_every_byte_hashed(
        container: ThrowawayContainer, diff: FilesystemDiff) -> None:
    kinds = [kind for kind, _ in EXPECTED_CHANGES]
    hashed = ["/tmp/x", "/etc/app.conf", "/var/cache/app/fresh.db", "/var/log/app.log"]
    assert diff.summary.model_dump() == {
        "added": kinds.count("A"), "changed": kinds.count("C"), "deleted": kinds.count("D"),
        "executables_added": 1,
        "bytes_hashed": sum(len(container.host_path(p).read_bytes()) for p in hashed)}


def test_a_binary_dropped_into_the_upper_layer_is_an_added_flagged_elf_with_its_hash(
        container: ThrowawayContainer, diff: FilesystemDiff) -> None:
    (entry,) = [c for c in diff.changes if c.path == "/tmp/x"]
    binary = container.dropped_binary()
    assert entry.model_dump(exclude={"mtime"}) == {
        "path": "/tmp/x", "kind": "A", "type": "file", "size": len(binary), "mode": "0755",
        "uid": 0, "gid": 0, "sha256": sha256_of(binary), "hash_skipped": None,
        "executable": True, "elf": True, "script": False, "link_target": None,
        "flagged": True, "quarantined": None}
    assert entry.mtime is not None


def test_changed_and_added_files_are_hashed_and_deletions_carry_no_type(
        container: ThrowawayContainer, diff: FilesystemDiff) -> None:
    by_path = {c.path: c for c in diff.changes}
    for path in ("/etc/app.conf", "/var/cache/app/fresh.db", "/var/log/app.log"):
        entry = by_path[path]
        data = container.host_path(path).read_bytes()
        assert (entry.type, entry.size, entry.sha256, entry.executable, entry.elf,
                entry.mode) == ("file", len(data), sha256_of(data), False, False, "0644"), path
    for path in ("/etc", "/var/cache/app", "/tmp"):
        assert by_path[path].type == "dir", path
    assert by_path["/tmp"].mode == "1777"
    for change in diff.changes:
        if change.kind == "D":
            assert (change.type, change.sha256, change.size) == (None, None, None), change.path


def test_an_opaque_directory_hides_the_image_s_entries_below_it(
        container: ThrowawayContainer, diff: FilesystemDiff) -> None:
    upper = container.upperdir / "var/cache/app"
    assert os.getxattr(upper, "trusted.overlay.opaque") == b"y"
    below = [(c.kind, c.path) for c in sorted(diff.changes, key=lambda c: c.path)
             if c.path.startswith("/var/cache/app/")]
    assert below == [("D", "/var/cache/app/blobs"), ("A", "/var/cache/app/fresh.db"),
                     ("D", "/var/cache/app/index.db")]


@root_only
def test_renames_and_metadata_only_copy_ups_read_as_docker_diff_does(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    # redirect_dir=on: renaming an image directory records a redirect instead of failing with
    # EXDEV; metacopy=on: chmod (or a hard link, or a rename) of an image file copies up its
    # metadata only.
    try:
        meta = fresh(overlay_options=["redirect_dir=on", "metacopy=on"])
        meta.start()
    except throwaway.ThrowawayUnavailable as exc:
        pytest.skip(f"this kernel's overlay cannot: {exc}")
    with meta:
        os.chmod(meta.host_path("/srv/www/index.html"), 0o600)
        os.rename(meta.host_path("/var/cache/app"), meta.host_path("/var/cache/moved"))
        os.rename(meta.host_path("/etc/app.conf"), meta.host_path("/etc/app.conf.bak"))
        os.symlink("/etc/shadow", meta.host_path("/srv/link"))
        assert os.getxattr(meta.upperdir / "var/cache/moved", "trusted.overlay.redirect",
                           follow_symlinks=False) == b"app"
        layers = mounts.root_overlay(PROC, meta.init_pid)
        assert layers is not None
        found = overlay.diff_upperdir(layers.upperdir, layers.lowerdirs, container_id=meta.id)
        image = meta.lowerdirs[0]

        def content(path: str) -> str:
            return sha256_of((image / path.lstrip("/")).read_bytes())

        metadata_only = overlay.SKIP_METACOPY
        assert [(c.kind, c.path, c.type, c.mode, c.sha256, c.hash_skipped, c.link_target)
                for c in found.changes] == [
            ("C", "/etc", "dir", "0755", None, None, None),
            ("D", "/etc/app.conf", None, None, None, None, None),
            ("A", "/etc/app.conf.bak", "file", "0644", None, metadata_only, None),
            ("C", "/srv", "dir", "0755", None, None, None),
            ("A", "/srv/link", "symlink", "0777", None, None, "/etc/shadow"),
            ("C", "/srv/www", "dir", "0755", None, None, None),
            ("C", "/srv/www/index.html", "file", "0600", None, metadata_only, None),
            ("C", "/var", "dir", "0755", None, None, None),
            ("C", "/var/cache", "dir", "0755", None, None, None),
            ("D", "/var/cache/app", None, None, None, None, None),
            # The renamed directory's content is the image's, seen under its new name.
            ("A", "/var/cache/moved", "dir", "0755", None, None, None),
            ("A", "/var/cache/moved/blobs", "dir", "0755", None, None, None),
            ("A", "/var/cache/moved/blobs/one", "file", "0644",
             content("/var/cache/app/blobs/one"), None, None),
            ("A", "/var/cache/moved/blobs/two", "file", "0644",
             content("/var/cache/app/blobs/two"), None, None),
            ("A", "/var/cache/moved/index.db", "file", "0644", content("/var/cache/app/index.db"),
             None, None),
        ]


@root_only
def test_drift_made_from_the_host_never_follows_a_symlink_out_of_the_container(
        fresh: Callable[..., ThrowawayContainer], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    with fresh() as sly:
        os.symlink(outside, sly.host_path("/srv/out"))
        os.symlink(outside / "file", sly.host_path("/srv/file"))
        with pytest.raises(ValueError, match="is a symlink"):
            sly.write_file("/srv/out/x", "escaped")
        with pytest.raises(OSError, match="Too many levels of symbolic links"):
            sly.write_file("/srv/file", "escaped")
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------ evasions

@root_only
def test_a_dropped_binary_named_like_a_deleted_one_is_still_in_the_upper_layer(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    with fresh() as sly:
        pid = sly.drop_and_execute("/tmp/x (deleted)", via_shell=False)
        layers = mounts.root_overlay(PROC, pid)
        assert layers is not None
        found = processes.collect_process_tree(sly.id, upperdir=layers.upperdir, flag_pid=pid)
        (proc,) = [p for p in found.processes if p.flagged]
        assert (proc.exe, proc.exe_deleted, proc.in_upper_layer) == ("/tmp/x (deleted)", False,
                                                                     True)


@root_only
def test_a_dropped_binary_at_a_memfd_like_path_is_not_taken_for_a_memfd(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    with fresh() as sly:
        pid = sly.drop_and_execute("/memfd:x", via_shell=False)
        layers = mounts.root_overlay(PROC, pid)
        assert layers is not None
        found = processes.collect_process_tree(sly.id, upperdir=layers.upperdir, flag_pid=pid)
        (proc,) = [p for p in found.processes if p.flagged]
        assert (proc.exe, proc.exe_memfd, proc.in_upper_layer) == ("/memfd:x", False, True)


@root_only
def test_a_dropped_binary_deleted_while_it_runs_is_still_hashed(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    with fresh() as sly:
        pid = sly.drop_and_execute("/tmp/gone", via_shell=False)
        binary = sly.host_path("/tmp/gone").read_bytes()
        sly.delete("/tmp/gone")
        layers = mounts.root_overlay(PROC, pid)
        assert layers is not None
        found = processes.collect_process_tree(sly.id, upperdir=layers.upperdir, flag_pid=pid)
        (proc,) = [p for p in found.processes if p.flagged]
        # Its layer can no longer be told from its path; its content still can.
        assert (proc.exe, proc.exe_deleted, proc.exe_memfd, proc.in_upper_layer,
                proc.sha256) == ("/tmp/gone", True, False, None, sha256_of(binary))
        diff = overlay.diff_upperdir(layers.upperdir, layers.lowerdirs, container_id=sly.id)
        assert [(c.kind, c.path) for c in diff.changes] == [("C", "/tmp")]


# ------------------------------------------------------------------------------ the command

def agent_collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, "agent", "collect", *args], capture_output=True, text=True,
                          env=base_env({"DRIFT_DATA_DIR": str(tmp_path)}), cwd=REPO,
                          timeout=60, check=False)
    if done.returncode == 2 and "No such command" in done.stderr:
        pytest.skip("`drift-responder agent collect` does not exist yet")
    return done


def test_agent_collect_prints_the_same_tree_and_diff_as_json(
        container: ThrowawayContainer, drift: SampleDrift, tmp_path: Path) -> None:
    done = agent_collect(tmp_path, "--container-id", f"containerd://{container.id}",
                         "--flag-pid", str(drift.dropped_pid), "--flag-path", "/tmp/x", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    tree = ProcessTree.model_validate(printed["process_tree"])
    diff = FilesystemDiff.model_validate(printed["filesystem_diff"])
    assert tree.container_id == container.id
    assert [comparable(p.model_dump()) for p in tree.processes] == expected_processes(
        container, drift)
    flagged = ("A", "/tmp/x")
    assert [(c.kind, c.path) for c in diff.changes] == [
        flagged, *[change for change in EXPECTED_CHANGES if change != flagged]]
    assert diff.upperdir == str(container.upperdir)


@root_only
def test_agent_collect_says_when_no_process_has_the_id(tmp_path: Path) -> None:
    done = agent_collect(tmp_path, "--container-id", "0" * 64, "--json")
    assert done.returncode == 1
    assert "no process of container 000000000000" in done.stderr
    assert done.stdout == ""


# ------------------------------------------------------------------------------ teardown

def _leftovers(root_dir: Path, cgroup: Path, pids: list[int]) -> dict[str, Any]:
    return {"mounts": throwaway.mount_points_under(root_dir),
            "directory": root_dir.exists(), "cgroup": cgroup.exists(),
            "pod cgroup": cgroup.parent.exists(),
            "processes": [pid for pid in pids if _running(pid)]}


def _running(pid: int) -> bool:
    """Alive and not a zombie: an orphaned launcher is reaped by pid 1, whenever it gets to it."""
    try:
        stat = Path(PROC, str(pid), "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


NOTHING_LEFT = {"mounts": [], "directory": False, "cgroup": False, "pod cgroup": False,
                "processes": []}


@root_only
def test_teardown_leaves_no_mount_cgroup_or_process_behind(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    with fresh() as doomed:
        drift = doomed.apply_sample_drift()
        root_dir, cgroup = doomed.root_dir, doomed.cgroup_path
        pids = [*doomed.pids(), doomed.launcher_pid]
        assert drift.dropped_pid in pids
    assert _leftovers(root_dir, cgroup, pids) == NOTHING_LEFT
    doomed.teardown()  # twice is harmless


@root_only
def test_teardown_runs_when_the_block_fails(fresh: Callable[..., ThrowawayContainer]) -> None:
    with pytest.raises(ZeroDivisionError), fresh() as failing:  # noqa: PT012
        root_dir, cgroup = failing.root_dir, failing.cgroup_path
        pids = [failing.drop_and_execute(), failing.init_pid, failing.launcher_pid]
        _ = 1 / 0
    assert _leftovers(root_dir, cgroup, pids) == NOTHING_LEFT


KILLED_SESSION = """
import json, os, signal, sys
from pathlib import Path
from responder.agent.throwaway import ThrowawayContainer

container = ThrowawayContainer(base_dir=Path(sys.argv[1]))
container.start()
drift = container.apply_sample_drift()
print(json.dumps({"root_dir": str(container.root_dir), "cgroup": str(container.cgroup_path),
                  "pids": [*container.pids(), container.launcher_pid]}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # as a timeout would: no teardown runs
"""


@root_only
def test_a_container_whose_session_was_killed_is_swept_by_the_next_one(
        fresh: Callable[..., ThrowawayContainer], tmp_path: Path) -> None:
    base = tmp_path / "containers"
    done = subprocess.run([sys.executable, "-c", KILLED_SESSION, str(base)], capture_output=True,
                          text=True, env=base_env({}), cwd=REPO, timeout=60, check=False)
    assert done.returncode == -9, done.stderr
    left = json.loads(done.stdout)
    root_dir, cgroup = Path(left["root_dir"]), Path(left["cgroup"])
    assert throwaway.mount_points_under(root_dir) == [str(root_dir / "rootfs")]
    with fresh() as alive:  # starting sweeps what a dead session left
        assert throwaway.sweep_stale(base) == []  # and never what a live one owns
        assert alive.pids() == [alive.init_pid]
    assert _leftovers(root_dir, cgroup, left["pids"]) == NOTHING_LEFT


@root_only
def test_a_container_started_before_its_block_is_not_started_twice(
        fresh: Callable[..., ThrowawayContainer]) -> None:
    early = fresh()
    early.start()  # as a caller does to turn a refusal into a skip
    with early:
        assert early.pids() == [early.init_pid]
    with pytest.raises(RuntimeError, match="starts once"):
        early.start()


@root_only
def test_a_container_that_cannot_start_leaves_nothing_behind(tmp_path: Path) -> None:
    # A plain directory instead of a cgroup v2 hierarchy: the launcher cannot join it.
    fake_cgroups = tmp_path / "not-cgroup2"
    fake_cgroups.mkdir()
    with pytest.raises(RuntimeError, match=r"init did not start: .*cgroup\.procs"):
        ThrowawayContainer(cgroup_root=fake_cgroups, base_dir=tmp_path).start()
    assert list(fake_cgroups.iterdir()) == []
    assert [p for p in tmp_path.iterdir() if p != fake_cgroups] == []
    assert throwaway.mount_points_under(tmp_path) == []


@pytest.mark.parametrize(("missing", "reason"), [
    ("root", "a throwaway container needs root (mounts, namespaces and cgroups)"),
    ("overlay", "the overlay filesystem is not available (no overlay in /proc/filesystems)"),
    ("cgroup2", "no cgroup v2 hierarchy is mounted (neither /sys/fs/cgroup nor .../unified)"),
])
def test_a_machine_that_cannot_host_one_is_refused_with_the_reason(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, missing: str, reason: str) -> None:
    if missing == "root":
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
    else:
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setattr(throwaway, "_overlay_available", lambda: missing != "overlay")
        monkeypatch.setattr(throwaway, "cgroup2_root",
                            lambda: None if missing == "cgroup2" else tmp_path)
    with pytest.raises(throwaway.ThrowawayUnavailable) as refused:
        ThrowawayContainer(base_dir=tmp_path).start()
    assert str(refused.value) == reason
    assert list(tmp_path.iterdir()) == []
