"""The desk's registration rules, enforced by the service and by the database itself."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DataError, IntegrityError

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.db.models import Editor, Site
from mailgate.tickets import registry


def test_database_refuses_a_fourth_editor_even_without_the_service(app: App) -> None:
    now = app.clock.now()
    with transaction(app.sessions) as s:
        for i in (2, 3):
            registry.add_editor(s, "1234", f"e{i}@x.example", now)
    for slot in (1, 4):  # a taken slot, or a slot beyond three
        with pytest.raises(IntegrityError), transaction(app.sessions) as s:
            s.add(Editor(site_id="1234", slot=slot, email=f"raw{slot}@x.example", name="",
                         phone="", language="", created_at=now))


def test_database_refuses_a_site_id_that_is_not_four_characters(app: App) -> None:
    for bad in ("123", "12345"):
        # PostgreSQL refuses the long one by column width (DataError), SQLite by the check.
        with pytest.raises((IntegrityError, DataError)), transaction(app.sessions) as s:
            s.add(Site(site_id=bad, name="x", created_at=app.clock.now()))


def test_removing_a_site_removes_its_editors(app: App) -> None:
    with transaction(app.sessions) as s:
        registry.remove_site(s, "1234")
    with transaction(app.sessions) as s, pytest.raises(registry.RegistryError):
        registry.remove_editor(s, "eva@site1234.example.be")
