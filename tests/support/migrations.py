"""Moving a test database to a given Alembic revision, up or down (the migrations' own
tests: data written under the old schema, then the upgrade)."""

from __future__ import annotations

from alembic import command
from sqlalchemy.engine import Engine

from mailgate.db.migrate import alembic_config


def migrate_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)
