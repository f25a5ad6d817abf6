"""Alembic environment: runs on the connection handed in by mailgate.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from mailgate.db.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _migrate(conn)
        return
    _migrate(connection)


def _migrate(connection) -> None:  # type: ignore[no-untyped-def]
    # batch mode lets later migrations alter SQLite tables (it cannot ALTER much).
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run()
