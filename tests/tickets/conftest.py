"""Fixtures for the ticket policy: the desk harness with an agent and a second site."""

from __future__ import annotations

import pytest

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.tickets import registry
from tests.support.harness import DeskHarness

AGENT = "alex@desk.example"
OTHER_EDITOR = "olivier@site5678.example.be"
STRANGER = "someone@elsewhere.example"


def register_more(app: App) -> None:
    with transaction(app.sessions) as s:
        now = app.clock.now()
        registry.add_agent(s, AGENT, now, "Alex Agent")
        registry.add_site(s, "5678", "Other site", now)
        registry.add_editor(s, "5678", OTHER_EDITOR, now, name="Olivier")


@pytest.fixture
def desk(app: App) -> DeskHarness:
    register_more(app)
    return DeskHarness(app)
