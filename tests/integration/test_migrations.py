"""Migrations build exactly the schema the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from responder.store import migrating
from responder.store.engine import make_engine
from responder.store.schema import metadata

VERSIONS = Path(migrating.__file__).parent / "migrations" / "versions"


def test_migrated_schema_matches_the_table_definitions(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrading_twice_is_harmless_and_lands_on_head(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        migrating.upgrade(engine)
        newest = max(p.name[:4] for p in VERSIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))
        assert migrating.current_revision(engine) == migrating.head_revision() == newest
    finally:
        engine.dispose()
