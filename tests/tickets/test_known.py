"""tickets/known.py: the registry once per transaction, never a stale copy of it within."""

from __future__ import annotations

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.tickets import known, registry
from tests.support.desk import EDITOR

OTHER = "olaf@site1234.example.be"


def test_what_the_session_changes_it_reads_anew(app: App) -> None:
    now = app.clock.now()
    with transaction(app.sessions) as session:
        assert known.editor(session, OTHER) is None
        assert known.agent_addresses(session) == set()
        assert known.site_ids(session) == {"1234"}
        registry.add_editor(session, "1234", OTHER, now, name="Olaf")
        registry.add_agent(session, "agent@desk.example", now)
        registry.add_site(session, "5678", "Other site", now)
        editor = known.editor(session, OTHER)
        assert editor is not None and editor.name == "Olaf"
        assert known.agent_addresses(session) == {"agent@desk.example"}
        assert known.site_name(session, "5678") == "Other site"
        registry.remove_agent(session, "agent@desk.example")
        assert known.agent(session, "agent@desk.example") is None


def test_a_rolled_back_savepoint_takes_what_it_wrote_with_it(app: App) -> None:
    now = app.clock.now()
    with transaction(app.sessions) as session:
        assert known.editor(session, EDITOR) is not None
        try:
            with session.begin_nested():
                registry.add_editor(session, "1234", OTHER, now, name="Olaf")
                registry.add_site(session, "5678", "Other site", now)
                assert known.editor(session, OTHER) is not None
                assert "5678" in known.site_ids(session)
                raise RuntimeError("the mail fails")
        except RuntimeError:
            pass
        assert known.editor(session, OTHER) is None
        assert known.site_ids(session) == {"1234"}
        reread = known.editor(session, EDITOR)
        assert reread is not None and reread.name == "Eva Editor"
