"""Fixtures for real backends: SQLite and PostgreSQL stores, Redis, and whole backend sets.

PostgreSQL: one throw-away database per test session (created from DRIFT_TEST_POSTGRES_URL's
server), tables emptied between tests. Redis: a unique key prefix per test, deleted afterwards.
Processes of a finished test that still stop in the background (tests/support/stack.py) have
exited before the database is emptied for the next test, and before their prefix is deleted.

Tests marked `soak` (tests/support/variants.py) are left out unless DRIFT_TEST_SOAK is set, as
`make soak` does; everything under tests/soak is marked `soak` too, so that `make soak` selects
the soak suites and those variants with `-m soak`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import make_url

from responder.intake.backends import Backends, open_backends
from responder.settings import Settings
from responder.store import migrating
from responder.store.engine import make_engine
from responder.store.schema import metadata
from tests.support.processes import background_stops_pending, wait_for_background_stops
from tests.support.variants import soak_run

POSTGRES_URL = os.environ.get("DRIFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DRIFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


SOAK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soak")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.path).startswith(SOAK_DIR + os.sep):
            item.add_marker(pytest.mark.soak)
    if soak_run():
        return
    # Outside `make soak`, a variant marked `soak` is deselected (the soak suites themselves
    # still run when asked for by path: `pytest tests/soak/...`).
    moved = [i for i in items if i.get_closest_marker("soak")
             and not str(i.path).startswith(SOAK_DIR + os.sep)]
    if moved:
        config.hook.pytest_deselected(items=moved)
        left_out = {id(i) for i in moved}
        items[:] = [i for i in items if id(i) not in left_out]


#: Redis key prefixes of finished tests whose processes were still stopping (deleted once
#: they have exited: see settle_shared_servers).
_PREFIXES_LEFT: list[str] = []


def settle_shared_servers(*, everything: bool = False) -> None:
    """Wait for the processes of finished tests that use the shared servers and are still
    stopping in the background (tests/support/stack.py; ``everything``: all of them), then
    delete what they left in Redis. Called before the shared servers are handed to another
    test, and at the end of the session."""
    wait_for_background_stops(shared_only=not everything)
    if _PREFIXES_LEFT:
        client = redis.Redis.from_url(REDIS_URL)
        try:
            while _PREFIXES_LEFT:
                _delete_keys(client, _PREFIXES_LEFT.pop())
        finally:
            client.close()


def _delete_keys(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def pytest_sessionfinish() -> None:
    settle_shared_servers(everything=True)


@pytest.fixture(scope="session")
def postgres_session_url() -> Iterator[str]:
    base = make_url(POSTGRES_URL)
    name = f"drift_test_{uuid.uuid4().hex[:10]}"
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrating.upgrade(engine)
    engine.dispose()
    yield url
    settle_shared_servers()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_reset(postgres_session_url: str) -> Iterator[Callable[[], None]]:
    """Empty every table of the session's database (before each test that uses it)."""
    engine = make_engine(postgres_session_url, pool_size=1, pool_pre_ping=True)
    children_first = [t.name for t in reversed(metadata.sorted_tables)]

    def reset() -> None:
        with engine.begin() as conn:
            # Replica mode switches the append-only triggers off for this reset (superuser
            # only). DELETE, not TRUNCATE: the tables hold a few rows, and a TRUNCATE of all
            # of them costs some 60 ms (new files, synced) where this costs 3.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            for name in children_first:
                conn.execute(text(f"DELETE FROM {name}"))
            # Guards a tampering test switched off (ALTER TABLE ... DISABLE TRIGGER, committed)
            # are on again for the next test.
            disabled = conn.execute(text(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE NOT t.tgisinternal AND t.tgenabled = 'D'")).all()
            for table, trigger in disabled:
                conn.execute(text(f'ALTER TABLE "{table}" ENABLE TRIGGER "{trigger}"'))

    yield reset
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_session_url: str, postgres_reset: Callable[[], None]) -> str:
    settle_shared_servers()  # no process of an earlier test writes to it any more
    postgres_reset()
    return postgres_session_url


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/drift.db"  # type: ignore[str-bytes-safe]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """A migrated, empty store on each supported database."""
    if request.param == "sqlite":
        url: str = request.getfixturevalue("sqlite_url")
        engine = make_engine(url)
        migrating.upgrade(engine)
        engine.dispose()
        return url
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"drift-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    if background_stops_pending(shared_only=True):  # they may still write under it: later
        _PREFIXES_LEFT.append(prefix)
        return
    client = redis.Redis.from_url(REDIS_URL)
    _delete_keys(client, prefix)
    client.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def make_settings(kind: str, request: pytest.FixtureRequest, **overrides: object) -> Settings:
    if kind == "embedded":
        url = request.getfixturevalue("sqlite_url")
        redis_url = None
    else:
        url = request.getfixturevalue("postgres_url")
        redis_url = REDIS_URL
    values: dict[str, object] = {
        "database_url": url, "redis_url": redis_url,
        "redis_prefix": request.getfixturevalue("redis_prefix"),
        "data_dir": request.getfixturevalue("tmp_path"), "ingest_token": "test-token",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["embedded", "production"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """embedded = SQLite + SQL correlator; production = PostgreSQL + Redis correlator."""
    return str(request.param)


@contextlib.contextmanager
def opened_backends(backend_kind: str, request: pytest.FixtureRequest,
                    **overrides: Any) -> Iterator[Backends]:
    """The test's backends with these settings (see make_settings), closed afterwards."""
    opened = open_backends(make_settings(backend_kind, request, **overrides))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def backends(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[Backends]:
    with opened_backends(backend_kind, request) as opened:
        yield opened
