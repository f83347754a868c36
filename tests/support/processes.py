"""Real drift-responder processes for integration tests: start, wait until ready, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "responder"]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, and not handed out before in this session: services started together
    (each binds its port a second or so after it starts) never get the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Service:
    """One `drift-responder <args>` process with its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_dir: Path, name: str) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = self.log_path.open("wb")
        self.proc = subprocess.Popen([*CLI, *args], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        """Ask to stop (SIGTERM to its process group) without waiting."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    def stop_in_background(self, *, shared: bool = False) -> None:
        """Ask to stop now; wait for the exit (and SIGKILL after the same timeout as ``stop``)
        in a thread, so that the caller goes on meanwhile: for a process whose state is all its
        own (a stack on the embedded default in its own directory), or one that nothing else
        uses the shared servers before it has exited (tests/conftest.py waits for it before it
        hands them to the next test). The threads are not daemons: the test session waits for
        every one of them (``wait_for_background_stops``) before it ends. ``shared``: the
        process uses the shared servers (``wait_for_background_stops(shared_only=True)``)."""
        self.terminate()
        thread = threading.Thread(target=self.stop, name=f"stop {self.name} {self.pid}")
        thread.start()
        _STOPPING[:] = [(t, s) for t, s in _STOPPING if t.is_alive()]
        _STOPPING.append((thread, shared))


#: Services being stopped in the background (``Service.stop_in_background``), and whether each
#: uses the shared servers.
_STOPPING: list[tuple[threading.Thread, bool]] = []


def wait_for_background_stops(*, shared_only: bool = False) -> None:
    """Wait until every service stopped in the background (``shared_only``: every one that
    uses the shared servers) has exited."""
    for thread, shared in list(_STOPPING):
        if shared or not shared_only:
            thread.join()
            _STOPPING.remove((thread, shared))


def background_stops_pending(*, shared_only: bool = False) -> bool:
    return any(thread.is_alive() for thread, shared in _STOPPING if shared or not shared_only)


def wait_http(url: str, service: Service, timeout: float = 30.0) -> None:
    def ready() -> bool:
        if not service.alive():
            raise AssertionError(f"{service.name} exited:\n{service.output()}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(ready, timeout, 0.05, what=f"{service.name} at {url}")


def base_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFT_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env
