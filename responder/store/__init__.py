"""The system of record: SQLAlchemy Core tables, Alembic migrations, the audit chain."""
