"""A real, throwaway container on this machine: a cgroup, namespaces and an overlay root.

Why: the node agent's collectors read the host's ``/proc`` and the container's overlay upper
layer, and the only honest test of that is a container the kernel itself sees as one. Docker or
containerd may not be installed, so this builds one from the same parts a runtime uses:

- an "image": two lower directories (a base layer and an app layer, the top one first in
  ``lowerdir=`` as containerd writes it) holding a statically linked helper at ``/bin/app``;
- an overlay mount of those layers with an upper and a work directory;
- a cgroup v2 scope named as containerd's systemd driver names it
  (``kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
  cri-containerd-<64 hex>.scope``);
- an init process joined to that cgroup before it runs anything, in new pid, mount, uts and ipc
  namespaces, with the overlay pivoted to as its root (so ``/proc/<pid>/mountinfo`` shows the
  overlay at ``/`` and ``/proc/<pid>/exe`` reads the path inside the container, as with runc).

The helper is a small C program compiled once with ``gcc -static`` (cached by source hash). It is
the image's program (``init``, ``sleep``, ``shell``, ``memfd`` modes) and, run from the cache on
the host, the runtime's two moving parts: ``launch`` (like a shim: start the container's init)
and ``enter`` (like ``nsenter`` plus a cgroup join: start a process inside). Doing those in C
keeps them single-threaded and race-free (``setns`` of a mount namespace refuses threaded
callers; Python 3.11 has no ``os.unshare``) and needs no util-linux.

Used by the root-only integration tests, which assert the collectors' output exactly, and by
``make demo`` run as root, so that the evidence it shows is real. Everything is undone on exit:
processes killed through the cgroup, overlay unmounted, cgroup and temporary directories removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

IMAGE_HELPER = "/bin/app"
"""Where the helper lives inside the container (and the container's init is ``app init``)."""

APP_UID = 1000
APP_USER = "app"
MEMFD_NAME = "payload"
DROPPED_PATH = "/tmp/x"  # noqa: S108 (inside the container)
DROPPED_TRAILER = b"\0drift-responder throwaway: dropped after the image was built\0"
"""Appended to the helper when it is dropped into the upper layer, so that the dropped binary's
sha256 differs from the image's copy (ELF loaders ignore trailing bytes)."""

_T = TypeVar("_T")
_PREFIX = "drift-throwaway-"
_OWNER = "owner.json"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/"}
_MNT_DETACH = 2
_WAIT_SECONDS = 10.0

HELPER_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Say which step failed, on fd (a close-on-exec status pipe) or stderr, and exit. */
static void fail(int fd, const char *what) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%s: %s", what, strerror(errno));
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    if (fd >= 0) { ssize_t w = write(fd, msg, (size_t)n); (void)w; }
    else fprintf(stderr, "%s\n", msg);
    _exit(127);
}

/* Parent end of a close-on-exec status pipe: EOF means the child's exec happened. */
static int await_exec(int rfd) {
    char msg[512];
    ssize_t n = read(rfd, msg, sizeof msg - 1);
    close(rfd);
    if (n > 0) { msg[n] = 0; fprintf(stderr, "%s\n", msg); return -1; }
    return 0;
}

static int status_code(pid_t child) {
    int status;
    if (waitpid(child, &status, 0) < 0) return 127;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int sleep_main(void) {
    for (;;) pause();
    return 0;
}

/* pid 1 of the container: reap what is reparented to it, exit on TERM or INT. */
static int init_main(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        int sig = sigwaitinfo(&set, NULL);
        if (sig == SIGTERM || sig == SIGINT) return 0;
    }
}

/* Fileless execution: copy this program into a memfd, fexecve it, then sleep. */
static int memfd_main(char *argv0) {
    int src = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    if (src < 0) fail(-1, "open /proc/self/exe");
    int fd = memfd_create("payload", MFD_CLOEXEC);
    if (fd < 0) fail(-1, "memfd_create");
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0) {
        if (write(fd, buf, (size_t)n) != n) fail(-1, "write memfd");
    }
    if (n < 0) fail(-1, "read /proc/self/exe");
    close(src);
    char *args[] = {argv0, "sleep", NULL};
    fexecve(fd, args, environ);
    fail(-1, "fexecve");
    return 127;
}

/* Shell-like: run argv as a child and stay (reaping), so the tree has a third level. */
static int shell_main(char **argv) {
    int st[2];
    if (pipe2(st, O_CLOEXEC) < 0) fail(-1, "pipe2");
    pid_t c = fork();
    if (c < 0) fail(-1, "fork");
    if (c == 0) {
        close(st[0]);
        execv(argv[0], argv);
        fail(st[1], argv[0]);
    }
    close(st[1]);
    if (await_exec(st[0]) < 0) return 127;
    for (;;) {
        if (waitpid(-1, NULL, 0) < 0 && errno == ECHILD) pause();
    }
}

static int join_cgroup(int procs) {
    /* "0" moves the writer itself. */
    return write(procs, "0", 1) == 1 ? 0 : -1;
}

/* Host side, like a shim: start pid 1 of a new pid namespace, in the cgroup before it runs
   anything, in new mount/uts/ipc namespaces, with the overlay pivoted to as its root. Prints
   its host pid once it has exec'd, then waits for it. */
static int launch_main(const char *procs_path, const char *merged, const char *hostname) {
    int procs = open(procs_path, O_WRONLY | O_CLOEXEC);
    if (procs < 0) fail(-1, procs_path);
    if (unshare(CLONE_NEWPID) < 0) fail(-1, "unshare(CLONE_NEWPID)");
    int st[2];
    if (pipe2(st, O_CLOEXEC) < 0) fail(-1, "pipe2");
    pid_t c = fork();
    if (c < 0) fail(-1, "fork");
    if (c == 0) {
        close(st[0]);
        /* If the launcher dies, so does the container (the pid namespace goes with pid 1).
           The launcher waits on the status pipe, so it cannot die before this is set. */
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) fail(st[1], "prctl");
        if (join_cgroup(procs) < 0) fail(st[1], "join cgroup");
        close(procs);
        if (unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC) < 0) fail(st[1], "unshare");
        /* Private first, so that nothing mounted here propagates back to the host. */
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) fail(st[1], "make-rprivate");
        if (sethostname(hostname, strlen(hostname)) < 0) fail(st[1], "sethostname");
        if (chdir(merged) < 0) fail(st[1], merged);
        /* pivot_root(".", ".") then detach the old root, as runc does (see pivot_root(2)). */
        if (syscall(SYS_pivot_root, ".", ".") < 0) fail(st[1], "pivot_root");
        if (umount2(".", MNT_DETACH) < 0) fail(st[1], "detach the old root");
        if (chdir("/") < 0) fail(st[1], "chdir /");
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            fail(st[1], "mount proc");
        char *args[] = {"/bin/app", "init", NULL};
        execv(args[0], args);
        fail(st[1], "exec /bin/app");
    }
    close(st[1]);
    close(procs);
    if (await_exec(st[0]) < 0) { waitpid(c, NULL, 0); return 127; }
    printf("%d\n", (int)c);
    fflush(stdout);
    return status_code(c);
}

/* Like nsenter plus a cgroup join: run argv inside the container whose init is init_pid.
   "wait": as our child, returning its status. "spawn": double-forked, so that it is reparented
   to the container's init; prints its pid inside the container once it has exec'd. */
static int enter_main(char **argv) {
    const char *init_pid = argv[0], *procs_path = argv[1], *how = argv[2];
    int uid = atoi(argv[3]), gid = atoi(argv[4]);
    char **cmd = &argv[5];
    static const char *names[] = {"ipc", "uts", "pid", "mnt"};
    int ns[4];
    char path[64];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "/proc/%s/ns/%s", init_pid, names[i]);
        ns[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (ns[i] < 0) fail(-1, path);
    }
    int procs = open(procs_path, O_WRONLY | O_CLOEXEC);
    if (procs < 0) fail(-1, procs_path);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) fail(-1, "/dev/null");
    /* The mount namespace last: it also moves our root and cwd to the container's root. */
    for (int i = 0; i < 4; i++) {
        if (setns(ns[i], 0) < 0) fail(-1, names[i]);
        close(ns[i]);
    }
    int spawn = strcmp(how, "spawn") == 0;
    int st[2];
    if (pipe2(st, O_CLOEXEC) < 0) fail(-1, "pipe2");
    pid_t c = fork();
    if (c < 0) fail(-1, "fork");
    if (c == 0) {
        close(st[0]);
        if (join_cgroup(procs) < 0) fail(st[1], "join cgroup");
        if (spawn) {
            pid_t g = fork();
            if (g < 0) fail(st[1], "fork");
            if (g > 0) { printf("%d\n", (int)g); fflush(stdout); _exit(0); }
            setsid();
            if (dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0)
                fail(st[1], "dup2");
        }
        if (gid >= 0 && (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0)) fail(st[1], "setgid");
        if (uid >= 0 && setuid((uid_t)uid) < 0) fail(st[1], "setuid");
        execvp(cmd[0], cmd);  /* a bare name is looked up in PATH, as a runtime's exec does */
        fail(st[1], cmd[0]);
    }
    close(st[1]);
    close(procs);
    if (await_exec(st[0]) < 0) { waitpid(c, NULL, 0); return 127; }
    return status_code(c);
}

/* Mount the overlay from dir, so that relative lowerdirs resolve as containerd's do. */
static int mount_main(const char *dir, const char *target, const char *options) {
    if (chdir(dir) < 0) fail(-1, dir);
    if (mount("overlay", target, "overlay", 0, options) < 0) fail(-1, "mount -t overlay");
    return 0;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "sleep") == 0) return sleep_main();
    if (strcmp(mode, "init") == 0) return init_main();
    if (strcmp(mode, "memfd") == 0) return memfd_main(argv[0]);
    if (strcmp(mode, "shell") == 0 && argc > 2) return shell_main(&argv[2]);
    if (strcmp(mode, "launch") == 0 && argc == 5) return launch_main(argv[2], argv[3], argv[4]);
    if (strcmp(mode, "enter") == 0 && argc > 7) return enter_main(&argv[2]);
    if (strcmp(mode, "mount") == 0 && argc == 5) return mount_main(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: app sleep | init | memfd | shell ARGV... | "
            "launch PROCS MERGED HOSTNAME | enter PID PROCS wait|spawn UID GID ARGV... | "
            "mount DIR TARGET OPTIONS\n");
    return 2;
}
"""

_GCC_FLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")


class ThrowawayUnavailable(RuntimeError):
    """This machine cannot host a throwaway container; the message says why."""


class ThrowawayTeardownError(RuntimeError):
    """Some of the container could not be removed; the message lists what is left."""


@dataclass(frozen=True)
class SampleDrift:
    """What :meth:`ThrowawayContainer.apply_sample_drift` did (host pids)."""

    image_pid: int
    """``/bin/app sleep`` from the image, run as the image's ``app`` user."""
    shell_pid: int
    """``/bin/app shell /tmp/x sleep``: the parent of the dropped binary."""
    dropped_pid: int
    dropped_path: str
    memfd_pid: int


# ------------------------------------------------------------------------------------ the host

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _umount(target: Path, flags: int = 0) -> None:
    if _libc().umount2(os.fsencode(target), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _mounts() -> list[tuple[str, str, str]]:
    """(root, mount point, fstype) of each mount this process sees."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right:
            found.append((_unescape_mountinfo(fields[3]), _unescape_mountinfo(fields[4]),
                          right.split()[0]))
    return found


def mount_points_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` (what a teardown must leave none of)."""
    prefix = str(directory).rstrip("/")
    return [point for _, point, _ in _mounts()
            if point == prefix or point.startswith(prefix + "/")]


def cgroup2_root() -> Path | None:
    """The cgroup v2 hierarchy's mount point: ``/sys/fs/cgroup`` on a pure v2 host,
    ``/sys/fs/cgroup/unified`` on a hybrid one; None when there is none."""
    points = [point for root, point, fstype in _mounts() if fstype == "cgroup2" and root == "/"]
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in points:
            return Path(preferred)
    return Path(points[0]) if points else None


def _overlay_available() -> bool:
    try:
        if "\toverlay\n" in Path("/proc/filesystems").read_text():
            return True
    except OSError:
        return False
    # A module not loaded yet is loaded by the first mount.
    release = os.uname().release
    return any(Path("/lib/modules", release, "kernel/fs/overlayfs").glob("overlay.ko*"))


def unavailable_reason() -> str | None:
    """Why this machine cannot host a throwaway container, or None if it looks able to.

    Cheap checks only (no mount is tried); :class:`ThrowawayContainer` raises
    :class:`ThrowawayUnavailable` with the precise reason when a step fails.
    """
    if os.uname().sysname != "Linux":
        return "a throwaway container needs Linux"
    if os.geteuid() != 0:
        return "a throwaway container needs root (mounts, namespaces and cgroups)"
    if not _overlay_available():
        return "the overlay filesystem is not available (no overlay in /proc/filesystems)"
    root = cgroup2_root()
    if root is None:
        return "no cgroup v2 hierarchy is mounted (neither /sys/fs/cgroup nor .../unified)"
    if not os.access(root / "cgroup.procs", os.W_OK):
        return f"the cgroup v2 hierarchy at {root} is not writable"
    if shutil.which("gcc") is None and not _cached_helper().exists():
        return "gcc is needed to build the container's static helper (apt-get install gcc)"
    return None


# ------------------------------------------------------------------------------------ the helper

def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "drift-responder", "throwaway")


def _source_key() -> str:
    return hashlib.sha256("\0".join([HELPER_SOURCE, *_GCC_FLAGS]).encode()).hexdigest()[:16]


def _cached_helper() -> Path:
    return _cache_dir() / _source_key() / "app"


_built: dict[Path, Path] = {}


def build_helper() -> Path:
    """The compiled helper: built once per source (and cached across sessions), statically
    linked so that it runs in an image with no libc."""
    target = _cached_helper()
    if target in _built:
        return target
    if target.exists():
        st = target.lstat()
        # Root runs this binary: trust only a regular file of ours that nobody else may alter.
        if (target.is_file() and not target.is_symlink() and st.st_uid == os.geteuid()
                and not st.st_mode & 0o022):
            _built[target] = target
            return target
        target.unlink()
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ThrowawayUnavailable("gcc is needed to build the container's static helper "
                                   "(apt-get install gcc)")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        source = Path(scratch, "app.c")
        source.write_text(HELPER_SOURCE)
        built = Path(scratch, "app")
        result = subprocess.run([gcc, *_GCC_FLAGS, "-o", str(built), str(source)],  # noqa: S603
                                capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise ThrowawayUnavailable(
                "gcc -static could not build the container's helper (is the static libc "
                f"installed? apt-get install libc6-dev): {result.stderr.strip()[-2000:]}")
        built.chmod(0o755)
        os.replace(built, target)  # atomic: a concurrent session sees all of it or none
    _built[target] = target
    return target


# ------------------------------------------------------------------------------------ waiting

def _wait_for(check: Callable[[], _T | None], what: str,
              timeout: float = _WAIT_SECONDS) -> _T:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def _read_line(stream: int, timeout: float) -> str:
    """One line from a pipe, or what came before EOF, without waiting past ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            raise TimeoutError(f"no answer from the launcher within {timeout}s")
        chunk = os.read(stream, 256)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").strip()


def _proc_field(pid: int, name: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, names a process for good."""
    stat = _proc_field(pid, "stat")
    if stat is None:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def sweep_stale(base: Path) -> list[Path]:
    """Tear down the throwaway containers under ``base`` whose session died without doing it
    (killed by a timeout, say); returns their directories. Containers of live sessions, and
    directories without a readable owner file, are left alone."""
    swept = []
    for directory in sorted(base.glob(_PREFIX + "*")):
        abandoned = ThrowawayContainer._abandoned(directory)
        if abandoned is None:
            continue
        with contextlib.suppress(ThrowawayTeardownError, OSError, TimeoutError):
            abandoned.teardown()
        swept.append(directory)
    return swept


def ns_pid_of(pid: int) -> int | None:
    """The pid of host pid ``pid`` in its innermost pid namespace (last NSpid field)."""
    status = _proc_field(pid, "status")
    for line in (status or "").splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


def ppid_of(pid: int) -> int | None:
    stat = _proc_field(pid, "stat")
    if stat is None:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def cmdline_of(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [os.fsdecode(arg) for arg in raw.split(b"\0")[:-1]]


def exe_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


# ------------------------------------------------------------------------------------ the image

def _write(root: Path, path: str, data: bytes | str, mode: int = 0o644, uid: int = 0,
           gid: int = 0) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data.encode() if isinstance(data, str) else data)
    target.chmod(mode)
    os.chown(target, uid, gid)


def _dir(root: Path, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    target = root / path.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(mode)
    os.chown(target, uid, gid)


BUSYBOX_APPLETS = ("sh", "find", "stat", "od", "readlink", "cat", "ls")


def _add_busybox(base: Path, busybox: Path) -> None:
    _write(base, "/bin/busybox", busybox.read_bytes(), 0o755)
    for applet in BUSYBOX_APPLETS:
        (base / "bin" / applet).symlink_to("busybox")


def build_image(base: Path, app: Path, helper: Path) -> None:
    """Two layers of a small image. ``base`` is the bottom layer, ``app`` the one above it.

    The layout is what the tests' expectations are written against: a file to change
    (``/etc/app.conf``), a file to delete (``/etc/obsolete.conf``, in the base layer), a
    directory to delete (``/usr/share/doc/app``), a directory to make opaque
    (``/var/cache/app``, with files and a subdirectory), and files nobody touches.
    """
    for path in ("/bin", "/etc", "/usr/share/doc/app", "/var/log", "/srv/www"):
        _dir(base, path)
    _dir(base, "/proc", 0o555)
    _dir(base, "/dev")
    _dir(base, "/tmp", 0o1777)  # noqa: S108 (the image's own /tmp, not the host's)
    _dir(base, "/home/app", 0o750, APP_UID, APP_UID)
    _write(base, IMAGE_HELPER, helper.read_bytes(), 0o755)
    _write(base, "/etc/passwd", "root:x:0:0:root:/root:/bin/app\n"
           f"{APP_USER}:x:{APP_UID}:{APP_UID}:app:/home/app:/bin/app\n")
    _write(base, "/etc/group", f"root:x:0:\n{APP_USER}:x:{APP_UID}:\n")
    _write(base, "/etc/hostname", "throwaway\n")
    _write(base, "/etc/obsolete.conf", "# nothing reads this any more\n")
    _write(base, "/usr/share/doc/app/README", "app: a throwaway container's program\n")
    _write(base, "/usr/share/doc/app/LICENSE", "Apache-2.0\n")
    for path in ("/etc", "/var/cache/app/blobs", "/srv/www"):
        _dir(app, path)
    _write(app, "/etc/app.conf", "mode=safe\n")
    _write(app, "/var/cache/app/index.db", "index\n")
    _write(app, "/var/cache/app/blobs/one", "one\n")
    _write(app, "/var/cache/app/blobs/two", "two\n")
    _write(app, "/srv/www/index.html", "<h1>hello</h1>\n")


# ------------------------------------------------------------------------------------ container

class ThrowawayContainer:
    """A container on this machine, for as long as the ``with`` block lasts.

    ``id`` is 64 hex characters, ``init_pid`` the host pid of its pid 1, ``pids()`` the host pids
    of every process in its cgroup. ``lowerdirs`` (top first), ``upperdir``, ``workdir`` and
    ``merged`` are host paths; ``cgroup_path`` is the scope directory. Drift is made through the
    host's view of the merged root (``write_file``, ``delete``, ...), which lands in the upper
    layer exactly as writes from inside would; processes are started inside with ``exec``
    (waits) and ``spawn`` (long-lived, reparented to the container's init).
    """

    def __init__(self, *, base_dir: Path | None = None, cgroup_root: Path | None = None,
                 pod_uid: str | None = None, relative_lowerdirs: bool = False,
                 overlay_options: Sequence[str] = (), busybox: Path | None = None) -> None:
        """``relative_lowerdirs`` mounts with ``lowerdir=2/fs:1/fs`` from the snapshots
        directory, as containerd does when the option would be too long. ``overlay_options``
        are added to the mount's (e.g. ``redirect_dir=on``, ``metacopy=on``)."""
        self.id = secrets.token_hex(32)
        #: A static busybox for the image's base layer (sh, find, stat, od, readlink), as in an
        #: Alpine image: what an exec into the container can use.
        self.busybox = busybox
        self.relative_lowerdirs = relative_lowerdirs
        self.overlay_options = tuple(overlay_options)
        for option in self.overlay_options:
            if "," in option or option.split("=")[0] in ("lowerdir", "upperdir", "workdir"):
                raise ValueError(f"not an extra overlay option: {option!r}")
        self.pod_uid = pod_uid or str(uuid.uuid4())
        self._base_dir = base_dir
        self._cgroup_root = cgroup_root
        self._started = False
        self._dir: Path | None = None
        self._cgroup_chain: list[Path] = []
        self._launcher: subprocess.Popen[bytes] | None = None
        self._mounted = False
        self._init_pid: int | None = None
        self._cgroup_path: Path | None = None
        self.helper: Path | None = None

    # -------------------------------------------------------------------------------- paths

    @property
    def short_id(self) -> str:
        return self.id[:12]

    # The layout is containerd's overlayfs snapshotter's: snapshots/<n>/fs for each layer,
    # the container's own snapshot's fs (upper) and work beside them, and a rootfs mount point.

    @property
    def root_dir(self) -> Path:
        """The temporary directory holding the snapshots and the rootfs mount point."""
        if self._dir is None:
            raise RuntimeError("the container has not been started")
        return self._dir

    @property
    def snapshots(self) -> Path:
        return self.root_dir / "snapshots"

    @property
    def lowerdirs(self) -> tuple[Path, Path]:
        """The image's layers (app, then base: top first, as in the mount's ``lowerdir=``)."""
        return (self.snapshots / "2" / "fs", self.snapshots / "1" / "fs")

    @property
    def lowerdir(self) -> str:
        """The mount's ``lowerdir=`` value, as mountinfo shows it."""
        if self.relative_lowerdirs:
            return ":".join(str(layer.relative_to(self.snapshots)) for layer in self.lowerdirs)
        return ":".join(str(layer) for layer in self.lowerdirs)

    @property
    def upperdir(self) -> Path:
        return self.snapshots / "3" / "fs"

    @property
    def workdir(self) -> Path:
        return self.snapshots / "3" / "work"

    @property
    def merged(self) -> Path:
        return self.root_dir / "rootfs"

    @property
    def cgroup_path(self) -> Path:
        if self._cgroup_path is None:
            raise RuntimeError("the container has not been started")
        return self._cgroup_path

    @property
    def init_pid(self) -> int:
        if self._init_pid is None:
            raise RuntimeError("the container has not been started")
        return self._init_pid

    @property
    def launcher_pid(self) -> int:
        """The host process that started init and waits for it (its parent, like a shim)."""
        if self._launcher is None:
            raise RuntimeError("the container has not been started")
        return self._launcher.pid

    def host_path(self, path: str) -> Path:
        """Where ``path`` (inside the container) is seen on the host, through the merged root.

        Refuses a path whose directories include a symlink: on the host, as root, an absolute
        link in the container's filesystem would lead out of it (``/srv/link -> /etc``)."""
        if not path.startswith("/") or ".." in Path(path).parts:
            raise ValueError(f"need an absolute path inside the container without '..': {path}")
        target = self.merged / path.lstrip("/")
        for parent in reversed(target.parents):
            if parent.is_relative_to(self.merged) and parent.is_symlink():
                raise ValueError(f"{path}: {parent.relative_to(self.merged)} is a symlink")
        return target

    def pids(self) -> list[int]:
        """Host pids of every process in the container's cgroup, ascending."""
        try:
            text = (self.cgroup_path / "cgroup.procs").read_text()
        except FileNotFoundError:
            return []
        return sorted(int(pid) for pid in text.split())

    # -------------------------------------------------------------------------------- life

    def __enter__(self) -> ThrowawayContainer:
        if not self._started:  # ``start()`` may have been called already, to catch its refusal
            self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.teardown()
        except ThrowawayTeardownError as failed:
            if exc is None:
                raise
            # Do not hide the failure that got us here, but do say what is left behind.
            warnings.warn(str(failed), RuntimeWarning, stacklevel=2)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("a throwaway container starts once")
        self._started = True
        reason = unavailable_reason()
        if reason is not None:
            raise ThrowawayUnavailable(reason)
        try:
            self._start()
        except BaseException:
            with contextlib.suppress(ThrowawayTeardownError):
                self.teardown()  # the start's own failure is the one to report
            raise

    def _start(self) -> None:
        self.helper = build_helper()
        base = self._base_dir or Path(tempfile.gettempdir())
        sweep_stale(base)
        self._dir = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
        self._write_owner()
        if any(char in str(self._dir) for char in ",:\\\n "):
            raise ThrowawayUnavailable(f"{self._dir}: overlay options cannot name this path")
        for directory in (*self.lowerdirs, self.upperdir, self.workdir, self.merged):
            directory.mkdir(parents=True)
        build_image(self.lowerdirs[1], self.lowerdirs[0], self.helper)
        if self.busybox is not None:
            _add_busybox(self.lowerdirs[1], self.busybox)
        mounted = subprocess.run(  # noqa: S603 (fixed argv, our paths)
            [str(self.helper), "mount", str(self.snapshots), str(self.merged),
             ",".join([f"lowerdir={self.lowerdir}", f"upperdir={self.upperdir}",
                       f"workdir={self.workdir}", *self.overlay_options])],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_ENV,
            timeout=_WAIT_SECONDS, check=False)
        if mounted.returncode != 0:
            raise ThrowawayUnavailable("cannot mount an overlay filesystem: "
                                       + mounted.stderr.strip())
        self._mounted = True
        self._make_cgroup()
        self._write_owner()
        self._launch()

    def _write_owner(self) -> None:
        """Who owns this container, so that a later session can remove it if we are killed
        before our teardown runs (``timeout`` sends SIGTERM, which skips ``finally``)."""
        owner = {"pid": os.getpid(), "start": _start_ticks(os.getpid()),
                 "cgroups": [str(path) for path in self._cgroup_chain],
                 "scope": str(self._cgroup_path) if self._cgroup_path else None}
        scratch = self.root_dir / (_OWNER + ".new")
        scratch.write_text(json.dumps(owner))
        os.replace(scratch, self.root_dir / _OWNER)

    @classmethod
    def _abandoned(cls, directory: Path) -> ThrowawayContainer | None:
        """The container left in ``directory`` by a session that is gone, ready to tear down;
        None when its owner lives (or it is not one of ours)."""
        try:
            owner = json.loads((directory / _OWNER).read_text())
            pid, start = int(owner["pid"]), owner["start"]
            cgroups = [Path(path) for path in owner["cgroups"]]
            scope = Path(owner["scope"]) if owner["scope"] else None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # being created right now, or not ours: leave it
        if _start_ticks(pid) == start:
            return None
        found = cls()
        found._started, found._dir, found._mounted = True, directory, True
        found._cgroup_chain, found._cgroup_path = cgroups, scope
        return found

    def _make_cgroup(self) -> None:
        root = self._cgroup_root or cgroup2_root()
        if root is None:
            raise ThrowawayUnavailable("no cgroup v2 hierarchy is mounted")
        kubepods = root / "kubepods.slice"
        # A kubelet's own kubepods.slice has controllers enabled for its children; leave that
        # tree alone (its orphan-pod cleanup would remove ours) and nest under one of our own.
        try:
            controlled = bool((kubepods / "cgroup.subtree_control").read_text().strip())
        except OSError:
            controlled = False
        pod = "kubepods-besteffort-pod" + self.pod_uid.replace("-", "_") + ".slice"
        parts = ["kubepods.slice", "kubepods-besteffort.slice", pod,
                 f"cri-containerd-{self.id}.scope"]
        if controlled:
            parts.insert(0, "drift-responder-throwaway.slice")
        # Every directory of the chain is ours to remove when empty, shared ones included (the
        # last container out removes them); root is not.
        self._cgroup_chain = [root.joinpath(*parts[:n]) for n in range(1, len(parts) + 1)]
        path = self._cgroup_chain[-1]
        for _attempt in range(10):
            try:
                path.mkdir(parents=True)
                break
            except FileNotFoundError:
                continue  # a parent removed by another container's teardown meanwhile
            except OSError as exc:
                raise ThrowawayUnavailable(f"cannot create cgroup {path}: {exc}") from exc
        else:
            raise ThrowawayUnavailable(f"cannot create cgroup {path}: its parents keep vanishing")
        self._cgroup_path = path

    def _launch(self) -> None:
        assert self.helper is not None
        errors = self.root_dir / "launcher.err"
        with errors.open("wb") as err:
            self._launcher = subprocess.Popen(  # noqa: S603 (fixed argv, our paths)
                [str(self.helper), "launch", str(self.cgroup_path / "cgroup.procs"),
                 str(self.merged), self.short_id],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=_ENV,
                start_new_session=True)  # the test runner's Ctrl-C goes to teardown, not here
        assert self._launcher.stdout is not None
        try:
            line = _read_line(self._launcher.stdout.fileno(), _WAIT_SECONDS)
        finally:
            self._launcher.stdout.close()
        if not line.isdigit():
            self._launcher.wait(_WAIT_SECONDS)
            raise RuntimeError(f"the container's init did not start: "
                               f"{errors.read_text(errors='replace').strip() or line}")
        self._init_pid = int(line)

    def teardown(self) -> None:
        """Kill every process of the container, unmount, remove the cgroup and the temporary
        directories. Each step runs even when an earlier one failed; safe to call twice."""
        problems: list[str] = []
        if self._cgroup_path is not None:
            try:
                self._kill_all()
            except (OSError, TimeoutError) as exc:
                problems.append(f"processes: {exc}")
        if self._launcher is not None:
            try:
                self._launcher.wait(_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                self._launcher.kill()
                self._launcher.wait()
        if self._mounted:
            try:
                self._unmount()
                self._mounted = False
            except OSError as exc:
                problems.append(f"mount {self.merged}: {exc}")
        for path in reversed(self._cgroup_chain):
            try:
                self._rmdir_cgroup(path, required=path == self._cgroup_path)
            except OSError as exc:
                problems.append(f"cgroup {path}: {exc}")
        if self._dir is not None and not self._mounted:
            shutil.rmtree(self._dir, ignore_errors=True)
            if self._dir.exists():
                problems.append(f"directory {self._dir} is left")
            else:
                self._dir = None
        if problems:
            raise ThrowawayTeardownError("throwaway container teardown left: "
                                         + "; ".join(problems))

    def _kill_all(self) -> None:
        kill = self.cgroup_path / "cgroup.kill"
        if kill.exists():  # Linux 5.14+: the kernel kills the whole cgroup, forks included
            kill.write_text("1")

        def emptied() -> bool | None:
            pids = self.pids()
            for pid in pids:  # older kernels, or a process forked mid-kill
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return True if not pids else None

        _wait_for(emptied, f"the processes of cgroup {self.cgroup_path} to exit")

    def _unmount(self) -> None:
        if str(self.merged) not in mount_points_under(self.merged):
            return
        deadline = time.monotonic() + 2
        while True:
            try:
                _umount(self.merged)
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        # Still busy (a lingering reference): detach it, so no mount stays visible.
        _umount(self.merged, _MNT_DETACH)

    @staticmethod
    def _rmdir_cgroup(path: Path, *, required: bool) -> None:
        deadline = time.monotonic() + (_WAIT_SECONDS if required else 0)
        while True:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                # A parent shared with another container is not ours to insist on.
                if not required and exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    return
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -------------------------------------------------------------------------------- inside

    def _enter_argv(self, how: str, argv: Sequence[str], user: tuple[int, int] | None,
                    ) -> list[str]:
        if not argv:
            raise ValueError("empty argv")
        if self.helper is None:
            raise RuntimeError("the container has not been started")
        uid, gid = user if user is not None else (-1, -1)
        return [str(self.helper), "enter", str(self.init_pid),
                str(self.cgroup_path / "cgroup.procs"), how, str(uid), str(gid), *argv]

    def exec(self, argv: Sequence[str], *, user: tuple[int, int] | None = None,
             timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the container (its namespaces, root and cgroup) and wait for it.

        ``argv[0]`` is a path inside the container; ``user`` is (uid, gid), root by default.
        """
        result = subprocess.run(  # noqa: S603 (argv list, no shell)
            self._enter_argv("wait", argv, user), stdin=subprocess.DEVNULL, capture_output=True,
            env=_ENV, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"{list(argv)} in the container exited {result.returncode}: "
                               f"{result.stderr.decode(errors='replace').strip()}")
        return result

    def spawn(self, argv: Sequence[str], *, user: tuple[int, int] | None = None) -> int:
        """Start a long-lived ``argv`` inside the container, reparented to its init (as a
        daemonised process is); returns its host pid once it has exec'd."""
        result = subprocess.run(  # noqa: S603 (argv list, no shell)
            self._enter_argv("spawn", argv, user), stdin=subprocess.DEVNULL, capture_output=True,
            env=_ENV, timeout=_WAIT_SECONDS, check=False)
        out = result.stdout.decode(errors="replace").strip()
        if result.returncode != 0 or not out.isdigit():
            raise RuntimeError(f"could not start {list(argv)} in the container: "
                               f"{result.stderr.decode(errors='replace').strip() or out}")
        inner = int(out)
        return _wait_for(lambda: next((pid for pid in self.pids() if ns_pid_of(pid) == inner),
                                      None), f"pid {inner} of the container on the host")

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Create or overwrite ``path`` (parents included) through the merged root."""
        target = self.host_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: never write through a symlink the container's filesystem holds.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode() if isinstance(data, str) else data)
            os.fchmod(out.fileno(), mode)

    def delete(self, path: str) -> None:
        """Delete a file or a whole directory: overlay leaves a whiteout for what the image had."""
        target = self.host_path(path)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    def make_opaque_by_recreating(self, path: str) -> None:
        """``rm -rf`` then ``mkdir`` a directory of the image: overlay makes the new directory
        opaque (``trusted.overlay.opaque=y``), hiding everything the image had below it."""
        target = self.host_path(path)
        mode = target.stat().st_mode & 0o7777
        shutil.rmtree(target)
        target.mkdir()
        target.chmod(mode)

    def dropped_binary(self) -> bytes:
        """The bytes :meth:`drop_and_execute` writes: the helper plus a trailer."""
        if self.helper is None:
            raise RuntimeError("the container has not been started")
        return self.helper.read_bytes() + DROPPED_TRAILER

    def drop_and_execute(self, path: str = DROPPED_PATH, *, via_shell: bool = True) -> int:
        """Write a new executable into the upper layer and run it (long-lived); returns its host
        pid. With ``via_shell`` its parent is a shell-like ``/bin/app shell`` process, else the
        container's init."""
        self.write_file(path, self.dropped_binary(), 0o755)
        if not via_shell:
            return self.spawn([path, "sleep"])
        shell = self.spawn([IMAGE_HELPER, "shell", path, "sleep"])
        return _wait_for(lambda: next(
            (pid for pid in self.pids()
             if ppid_of(pid) == shell and cmdline_of(pid) == [path, "sleep"]), None),
            f"{path} started by pid {shell}")

    def memfd_exec(self) -> int:
        """Run the helper from an anonymous memfd (fileless execution); returns its host pid
        once ``/proc/<pid>/exe`` reads ``/memfd:payload (deleted)``."""
        pid = self.spawn([IMAGE_HELPER, "memfd"])
        _wait_for(lambda: True if (exe_of(pid) or "").startswith("/memfd:") else None,
                  f"pid {pid} to run from a memfd")
        return pid

    def apply_sample_drift(self) -> SampleDrift:
        """The drift the tests and ``make demo`` show: a changed config, a deleted file and
        directory, an opaque directory with a new file, a log, a binary dropped and run under a
        shell, a fileless (memfd) process, and the image's own program run as ``app``."""
        image_pid = self.spawn([IMAGE_HELPER, "sleep"], user=(APP_UID, APP_UID))
        self.write_file("/etc/app.conf", "mode=pwned\n")
        self.delete("/etc/obsolete.conf")
        self.delete("/usr/share/doc/app")
        self.make_opaque_by_recreating("/var/cache/app")
        self.write_file("/var/cache/app/fresh.db", "fresh\n")
        self.write_file("/var/log/app.log", "started\n")
        dropped = self.drop_and_execute(DROPPED_PATH)
        shell = ppid_of(dropped)
        assert shell is not None
        memfd = self.memfd_exec()
        return SampleDrift(image_pid=image_pid, shell_pid=shell, dropped_pid=dropped,
                           dropped_path=DROPPED_PATH, memfd_pid=memfd)
