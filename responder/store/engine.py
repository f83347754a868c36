"""Engines for the two supported stores: SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_S = 30.0


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3, the driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database {parsed.get_backend_name()!r}: use sqlite or "
                         "postgresql")
    # No pre-ping: it costs a round trip per transaction on the hot path. A connection broken by
    # a server restart fails once (a 503 to the sender) and the pool then replaces it.
    kwargs.setdefault("pool_recycle", 300)
    # Reuse the most recently returned connection: the intake commits one batch at a time, and
    # a FIFO pool would rotate it over every pooled connection, each preparing its statements and
    # growing libpq buffers for large batches of its own.
    kwargs.setdefault("pool_use_lifo", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(url, **kwargs)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_sqlite_directory(url: str) -> None:
    """SQLite creates its file but not the file's directory (a fresh data directory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    make_sqlite_directory(url)
    kwargs.setdefault("connect_args", {"check_same_thread": False,
                                       "timeout": SQLITE_BUSY_TIMEOUT_S})
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Take the write lock up front: a deferred transaction that reads then writes can fail
        # with SQLITE_BUSY under concurrency instead of waiting its turn.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _switch_to_wal(cursor: Any) -> None:
    """WAL mode, waiting for other connections: on a fresh file (still in rollback-journal mode)
    that another process is writing or switching, SQLite refuses the switch at once with
    "database is locked" instead of waiting its busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
