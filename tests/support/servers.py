"""Private Redis and PostgreSQL servers for fault tests: ours to kill and restart.

The machine's shared servers (Redis on 6379, PostgreSQL on 5432) serve other tests at the same
time, so restarting them is never an option. These start their own on a free port of 127.0.0.1,
with their data in a directory of their own, and keep it across restarts:

- ``PrivateRedis``: ``redis-server`` with an append-only file fsynced on every write
  (``--appendonly yes --appendfsync always``), so a SIGKILL loses nothing it acknowledged.
- ``PrivatePostgres``: a cluster made by ``initdb`` (as the ``postgres`` user when we are root,
  since PostgreSQL refuses to run as root), trust auth on 127.0.0.1, started and stopped with
  ``pg_ctl`` (``-m immediate`` is a crash: no checkpoint, recovery from the WAL on start).

Both are context managers that stop the server and remove its directory, even on failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import psycopg
import redis

from tests.support.processes import free_port, wait_for

LOCALHOST = "127.0.0.1"


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (with initdb and pg_ctl), if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path and shutil.which("initdb") else None


class PrivateRedis:
    """A redis-server with AOF on its own port and directory; ``restart`` keeps the data."""

    def __init__(self, *, appendonly: bool = True, port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.appendonly = appendonly
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="drift-redis-"))
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host=LOCALHOST, port=self.port, socket_timeout=5,
                           socket_connect_timeout=2)

    def start(self) -> PrivateRedis:
        if self.proc is not None and self.proc.poll() is None:
            return self
        args = [self.binary, "--bind", LOCALHOST, "--port", str(self.port),
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--protected-mode", "no", "--logfile", "", "--dbfilename", "dump.rdb"]
        args += (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                 else ["--appendonly", "no"])
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(self._answers, 20, 0.05, what=f"private redis on {self.port}")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited:\n{self.output()}")
        client = self.client()
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:  # connection refused, or still loading the AOF
            return False
        finally:
            client.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: what the AOF (fsynced on every write) acknowledged survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def shutdown(self) -> None:
        """A clean SHUTDOWN (the AOF is flushed; no RDB snapshot: --save "")."""
        if self.proc is None or self.proc.poll() is not None:
            return
        client = self.client()
        try:
            client.shutdown(nosave=True)
        except redis.exceptions.ConnectionError:
            pass  # the server closes the connection as it goes: that is the answer
        finally:
            client.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()

    def restart(self, *, hard: bool = True, down_s: float = 0.0) -> None:
        """Kill (or shut down) and start again on the same port and directory."""
        if hard:
            self.kill()
        else:
            self.shutdown()
        if down_s:
            time.sleep(down_s)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        """Stop and remove the data directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateRedis:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on its own port; stop, start and crash it at will."""

    def __init__(self, *, port: int | None = None, database: str = "drift") -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.database = database
        self.root = Path(tempfile.mkdtemp(prefix="drift-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        self._initialised = False
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / args[0]), *args[1:]]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}):\n"
                               f"{done.stdout}\n{done.stderr}\n{self.output()[-3000:]}")
        return done

    def _initdb(self) -> None:
        self.socket_dir.mkdir()
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-instructions", "--no-sync")
        self._initialised = True

    def start(self) -> PrivatePostgres:
        if not self._initialised:
            self._initdb()
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses={LOCALHOST} "
                   "-c max_connections=200 -c shared_buffers=32MB")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log_path),
                  "-w", "-t", "60", "start")
        if not self._database_exists():
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def _database_exists(self) -> bool:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                 (self.database,)).fetchone()
        return found is not None

    def running(self) -> bool:
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, timeout=30,
                              check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (disconnect clients, checkpoint) or ``immediate`` (a crash)."""
        if self._initialised and self.running():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def kill(self) -> None:
        self.stop("immediate")

    def restart(self, *, mode: str = "immediate", down_s: float = 0.0) -> None:
        self.stop(mode)
        if down_s:
            time.sleep(down_s)
        self.start()
        self.restarts += 1

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
