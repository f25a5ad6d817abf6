"""The worker's groups: several mails in one transaction; a group with a failing mail runs
again with a savepoint per mail."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select

from mailgate import worker
from mailgate.app import App
from mailgate.db.migrate import upgrade
from mailgate.db.models import Inbound, Outbox, Ticket
from mailgate.inbound.store import store_raw
from mailgate.outbound.render import LANGUAGES
from tests.support.desk import EDITOR, SettingsFactory, register_demo
from tests.support.mails import make_mail, wire

PACKAGED = Path(__file__).resolve().parent.parent / "mailgate" / "templates"


@pytest.fixture
def poisoned(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[App]:
    """A desk whose acknowledgement template fails for one subject: the failure comes after
    the ticket, its message and its events were written (a rollback has work to do)."""
    overrides = tmp_path / "templates"
    for lang in LANGUAGES:
        (overrides / lang).mkdir(parents=True)
        source = (PACKAGED / lang / "ack.txt.j2").read_text(encoding="utf-8")
        (overrides / lang / "ack.txt.j2").write_text(
            "{% if 'POISON' in ticket.subject %}{{ 1 // 0 }}{% endif %}" + source,
            encoding="utf-8")
    app = App(make_settings(templates_dir=str(overrides)))
    upgrade(app.engine)
    register_demo(app)
    yield app
    app.close()


@pytest.fixture
def grouped(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process counts as warmed up: groups from the first mail on."""
    monkeypatch.setattr(worker, "_committed_in_process", worker._WARM_AFTER)


def _store(app: App, subject: str) -> int:
    return store_raw(app.sessions, app.clock, wire(make_mail(EDITOR, subject)),
                     "smtp").inbound_id


@pytest.mark.usefixtures("grouped")
def test_a_failing_mail_is_quarantined_alone_and_the_group_goes_on(poisoned: App) -> None:
    ids = [_store(poisoned, f"Melding {i}") for i in range(3)]
    ids.insert(1, _store(poisoned, "POISON melding"))
    result = worker.process_pending(poisoned)
    assert (result.processed, result.quarantined) == (4, 1)
    with poisoned.sessions() as s:
        rows = {r.id: r for r in s.execute(select(Inbound)).scalars()}
        assert rows[ids[1]].status == "quarantined"
        assert "ZeroDivisionError" in rows[ids[1]].reason
        assert rows[ids[1]].ticket_id is None
        assert [rows[i].status for i in ids if i != ids[1]] == ["ticket"] * 3
        # Nothing of the poisoned mail's work survived: the group ran again, the poisoned
        # mail in a savepoint of its own.
        tickets = s.execute(select(Ticket.ref, Ticket.subject).order_by(Ticket.number)).all()
        assert [t.subject for t in tickets] == [f"Melding {i}" for i in range(3)]
        if poisoned.engine.dialect.name == "sqlite":  # the counter row rolls back too
            assert [t.ref for t in tickets] == ["SD-1", "SD-2", "SD-3"]
        # (A PostgreSQL sequence gives no number back: the first run's numbers are gaps.)
        acks = s.execute(select(func.count()).select_from(Outbox)
                         .where(Outbox.kind == "ack")).scalar_one()
        assert acks == 3


@pytest.mark.usefixtures("grouped")
def test_a_reply_in_the_same_group_finds_the_ticket_made_before_it(app: App) -> None:
    first = make_mail(EDITOR, "Contactformulier kapot")
    store_raw(app.sessions, app.clock, wire(first), "smtp")
    reply = make_mail(EDITOR, "Re: [SD-1] Contactformulier kapot",
                      headers={"In-Reply-To": str(first["Message-ID"])},
                      body="Nog een detail: het gebeurt ook op de Franse pagina.")
    store_raw(app.sessions, app.clock, wire(reply), "smtp")
    assert worker.process_pending(app).processed == 2
    with app.sessions() as s:
        statuses = s.execute(select(Inbound.status, Inbound.ticket_id)
                             .order_by(Inbound.id)).all()
    assert [st for st, _ in statuses] == ["ticket", "ticket"]
    assert statuses[0].ticket_id == statuses[1].ticket_id


def test_a_fresh_process_counts_its_mails_before_it_groups_them(
        poisoned: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker, "_committed_in_process", 0)
    for i in range(3):
        _store(poisoned, f"Melding {i}")
    _store(poisoned, "POISON melding")
    result = worker.process_pending(poisoned)
    assert (result.processed, result.quarantined) == (4, 1)
    assert worker._committed_in_process == 4


@contextlib.contextmanager
def _statements(app: App) -> Iterator[list[str]]:
    """The SQL statements the engine sends meanwhile."""
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sa_event.listen(app.engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        sa_event.remove(app.engine, "before_cursor_execute", seen)


@pytest.mark.usefixtures("grouped")
def test_a_group_without_a_failure_runs_without_savepoints(app: App) -> None:
    for i in range(4):
        _store(app, f"Melding {i}")
    with _statements(app) as statements:
        assert worker.process_pending(app).processed == 4
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    assert sum(s.upper().startswith("INSERT INTO TICKET") for s in statements) == 4
    # The four inbound rows' outcomes: one statement (an executemany) at the commit.
    assert sum(s.upper().startswith("UPDATE INBOUND") for s in statements) == 1
    with app.sessions() as s:
        rows = s.execute(select(Inbound.status, Inbound.ticket_id, Inbound.attempts,
                                Inbound.processed_at)).all()
    assert all(r.status == "ticket" and r.ticket_id and r.attempts == 1 and r.processed_at
               for r in rows) and len(rows) == 4


@pytest.mark.usefixtures("grouped")
def test_a_failing_group_runs_again_with_a_savepoint_per_mail(poisoned: App) -> None:
    for i in range(2):
        _store(poisoned, f"Melding {i}")
    _store(poisoned, "POISON melding")
    with _statements(poisoned) as statements:
        result = worker.process_pending(poisoned)
    assert (result.processed, result.quarantined) == (3, 1)
    assert sum(s.upper().startswith("SAVEPOINT") for s in statements) == 3
    assert sum(s.upper().startswith("ROLLBACK TO SAVEPOINT") for s in statements) == 1
