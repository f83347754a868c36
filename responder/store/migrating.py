"""Schema upgrades through Alembic, run from code (``drift-responder db upgrade`` or on start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

_MIGRATIONS = Path(__file__).parent / "migrations"
#: Any constant works; it only has to be the same for every process that may migrate at once.
_PG_MIGRATION_LOCK = 0x6472696674


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.connect() as connection:
        # Several processes starting together must not race to create the same tables.
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        elif connection.dialect.name == "sqlite":
            # SQLite's lock is its write transaction (make_engine begins them IMMEDIATE): one
            # for the whole upgrade, from reading the version to the last migration. Left to
            # itself, Alembic commits after each migration on SQLite, and another process
            # migrating from the version it read before that commit repeats the next one.
            connection.begin()
        try:
            command.upgrade(_config(connection), revision)
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_unlock(:k)"),
                                   {"k": _PG_MIGRATION_LOCK})
                connection.commit()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()
