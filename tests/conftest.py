"""Fixtures for real backends: SQLite and PostgreSQL stores, Redis, and whole backend sets.

PostgreSQL: one throw-away database per test session (created from DRIFT_TEST_POSTGRES_URL's
server), tables truncated between tests. Redis: a unique key prefix per test, deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

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

POSTGRES_URL = os.environ.get("DRIFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DRIFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_postgres(url: str) -> None:
    engine = make_engine(url)
    names = ", ".join(t.name for t in metadata.sorted_tables)
    with engine.begin() as conn:
        # Replica mode switches the append-only triggers off for this reset (superuser only).
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(f"TRUNCATE {names}"))
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_session_url: str) -> str:
    _truncate_postgres(postgres_session_url)
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
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
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


@pytest.fixture
def backends(backend_kind: str, request: pytest.FixtureRequest) -> Iterator[Backends]:
    opened = open_backends(make_settings(backend_kind, request))
    yield opened
    opened.close()
