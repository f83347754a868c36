"""Finding a container's overlay layers and volumes in /proc/<pid>/mountinfo."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.agent.mounts import (
    Mount,
    overlay_layers,
    parse_mountinfo,
    root_overlay,
    split_lowerdir,
    volume_mount_points,
)

SNAPSHOTS = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots"
POD = "/var/lib/kubelet/pods/6f0c2d1e-8a7b-4c3d-9e2f-1a2b3c4d5e6f"
SANDBOX = ("/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/"
           "9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c")

# /proc/<pid>/mountinfo of an nginx container in a Kubernetes pod (containerd 1.7, cgroup v2).
CONTAINERD = f"""\
1380 1250 0:327 / / rw,relatime master:527 - overlay overlay rw,lowerdir={SNAPSHOTS}/1021/fs:\
{SNAPSHOTS}/1020/fs:{SNAPSHOTS}/1019/fs,upperdir={SNAPSHOTS}/1042/fs,workdir={SNAPSHOTS}/1042/work
1381 1380 0:329 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1382 1380 0:330 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64
1383 1382 0:331 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
1384 1382 0:322 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
1385 1380 0:324 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
1386 1385 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
1387 1380 254:1 {POD}/volumes/kubernetes.io~empty-dir/cache /var/cache/nginx rw,relatime - ext4 \
/dev/vda1 rw
1388 1380 254:1 {POD}/etc-hosts /etc/hosts rw,relatime - ext4 /dev/vda1 rw
1389 1380 254:1 {POD}/containers/nginx/1a2b3c4d /dev/termination-log rw,relatime - ext4 /dev/vda1 rw
1390 1380 254:1 {SANDBOX}/hostname /etc/hostname rw,relatime - ext4 /dev/vda1 rw
1391 1380 254:1 {SANDBOX}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda1 rw
1392 1382 0:321 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k,inode64
1393 1380 0:318 / /var/run/secrets/kubernetes.io/serviceaccount ro,relatime - tmpfs tmpfs \
rw,size=262144k,inode64
1251 1381 0:329 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
1260 1382 0:330 /null /proc/kcore rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64
"""


def write_proc(tmp_path: Path, pid: int, text: str) -> Path:
    proc = tmp_path / "proc"
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "mountinfo").write_text(text)
    return proc


def test_a_containerd_root_overlay_is_found_with_its_layers_under_the_host_root(
        tmp_path: Path) -> None:
    proc = write_proc(tmp_path, 4242, CONTAINERD)

    found = root_overlay(proc, 4242, host_root=Path("/host"))

    assert found is not None
    assert found.upperdir == Path(f"/host{SNAPSHOTS}/1042/fs")
    assert found.workdir == Path(f"/host{SNAPSHOTS}/1042/work")
    assert found.lowerdirs == [Path(f"/host{SNAPSHOTS}/{n}/fs") for n in (1021, 1020, 1019)]
    assert found.datadirs == []
    assert found.userxattr is False


def test_volume_mount_points_are_every_container_mount_point_but_root(tmp_path: Path) -> None:
    proc = write_proc(tmp_path, 4242, CONTAINERD)

    assert volume_mount_points(proc, 4242) == [
        "/proc", "/dev", "/dev/pts", "/dev/mqueue", "/sys", "/sys/fs/cgroup", "/var/cache/nginx",
        "/etc/hosts", "/dev/termination-log", "/etc/hostname", "/etc/resolv.conf", "/dev/shm",
        "/var/run/secrets/kubernetes.io/serviceaccount", "/proc/bus", "/proc/kcore",
    ]


def test_relative_lowerdirs_are_resolved_against_the_snapshots_directory(tmp_path: Path) -> None:
    # containerd mounts from <snapshots> with relative lowerdirs when the option is long.
    lowers = ":".join(f"{n}/fs" for n in range(60, 0, -1))
    line = (f"2001 1999 0:412 / / rw,relatime - overlay overlay rw,lowerdir={lowers},"
            f"upperdir={SNAPSHOTS}/142/fs,workdir={SNAPSHOTS}/142/work\n")
    proc = write_proc(tmp_path, 7, line)

    found = root_overlay(proc, 7, host_root=Path("/host"))

    assert found is not None
    assert found.lowerdirs[:2] == [Path(f"/host{SNAPSHOTS}/60/fs"),
                                   Path(f"/host{SNAPSHOTS}/59/fs")]
    assert found.lowerdirs[-1] == Path(f"/host{SNAPSHOTS}/1/fs")
    assert len(found.lowerdirs) == 60


def test_octal_escapes_are_undone_in_mount_points_and_layer_paths() -> None:
    # What the kernel printed for lowerdir='/tmp/ovt/l\:3:/tmp/ovt/l 4::/tmp/ovt/d1'.
    line = (r"46 27 0:39 / /mnt/merged\040dir rw,relatime - overlay overlay rw,"
            r"lowerdir=/tmp/ovt/l\134:3:/tmp/ovt/l\0404::/tmp/ovt/d1,"
            r"upperdir=/tmp/ovt/up\054per,workdir=/tmp/ovt/w")

    (mount,) = parse_mountinfo(line)
    found = overlay_layers(mount)

    assert mount.mount_point == "/mnt/merged dir"
    assert found is not None
    assert found.lowerdirs == [Path("/tmp/ovt/l:3"), Path("/tmp/ovt/l 4")]
    assert found.datadirs == [Path("/tmp/ovt/d1")]
    assert found.upperdir == Path("/tmp/ovt/up,per")


def test_lowerdir_plus_and_datadir_plus_options_give_one_layer_each() -> None:
    # Linux 6.8+ new mount API (fsconfig), as printed on this kernel: colons are not escaped.
    line = ("46 27 0:39 / / rw,relatime - overlay none rw,lowerdir+=/l/one,lowerdir+=/l/t:wo,"
            "datadir+=/d/one,upperdir=/u,workdir=/w,userxattr")

    (mount,) = parse_mountinfo(line)
    found = overlay_layers(mount)

    assert found is not None
    assert found.lowerdirs == [Path("/l/one"), Path("/l/t:wo")]
    assert found.datadirs == [Path("/d/one")]
    assert found.userxattr is True


def test_a_lowerdir_list_splits_on_unescaped_colons_and_data_layers_follow_a_double_colon(
        ) -> None:
    assert split_lowerdir(r"/a:/b\:c:/d\\e::/x::/y") == (["/a", "/b:c", r"/d\e"], ["/x", "/y"])
    assert split_lowerdir("12/fs") == (["12/fs"], [])


def test_optional_fields_are_kept_apart_from_the_filesystem_fields() -> None:
    line = "36 35 98:0 /mnt1 /mnt2 rw,noatime shared:1 master:2 - ext3 /dev/root rw,errors=continue"

    (mount,) = parse_mountinfo(line)

    assert mount == Mount(
        mount_id=36, parent_id=35, major=98, minor=0, root="/mnt1", mount_point="/mnt2",
        options=("rw", "noatime"), optional=("shared:1", "master:2"), fstype="ext3",
        source="/dev/root", super_options=(("rw", None), ("errors", "continue")))


def test_malformed_and_truncated_lines_are_skipped() -> None:
    text = "garbage\n36 35 98:0 / /x rw - ext4\n" + CONTAINERD.splitlines()[1] + "\n1 2 3"

    assert [m.mount_point for m in parse_mountinfo(text)] == ["/proc"]


def test_the_last_mount_on_root_is_the_one_the_container_sees(tmp_path: Path) -> None:
    bind = "1500 1380 254:1 /srv/rootfs / rw,relatime - ext4 /dev/vda1 rw\n"
    proc = write_proc(tmp_path, 9, CONTAINERD.splitlines()[0] + "\n" + bind)

    assert root_overlay(proc, 9) is None


def test_a_read_only_overlay_without_upperdir_cannot_drift(tmp_path: Path) -> None:
    line = f"1380 1250 0:327 / / ro,relatime - overlay overlay ro,lowerdir={SNAPSHOTS}/3/fs\n"
    proc = write_proc(tmp_path, 11, line)

    assert root_overlay(proc, 11) is None


def test_a_process_that_is_gone_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        root_overlay(tmp_path, 123456)


# -- against the kernel ------------------------------------------------------------------------


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, list[Path]]]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting an overlay needs root and mount(8)")
    lowers = [tmp_path / "low 1", tmp_path / "low:2", tmp_path / "low,3"]
    upper, work, merged = tmp_path / "up", tmp_path / "work", tmp_path / "merged"
    for path in (*lowers, upper, work, merged):
        path.mkdir()
    # The overlay option parser takes a backslash as escaping the next character.
    escaped = ":".join(str(p).replace(":", "\\:").replace(",", "\\,") for p in lowers)
    options = f"lowerdir={escaped},upperdir={upper},workdir={work}"
    result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"overlay mount not available here: {result.stderr.strip()}")
    try:
        yield merged, [upper, *lowers]
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_the_kernels_own_mountinfo_gives_back_names_with_spaces_colons_and_commas(
        mounted: tuple[Path, list[Path]]) -> None:
    merged, (upper, *lowers) = mounted
    text = Path("/proc/self/mountinfo").read_text()

    (mount,) = [m for m in parse_mountinfo(text) if m.mount_point == str(merged)]
    found = overlay_layers(mount)

    assert found is not None
    assert found.upperdir == upper
    assert found.lowerdirs == lowers
