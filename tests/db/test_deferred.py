"""db/deferred.py: rows nothing reads back as objects, written at the commit, one INSERT per
table for the whole transaction, and only those of what stayed."""

from __future__ import annotations

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from mailgate.app import App
from mailgate.db import deferred
from mailgate.db.engine import reading, transaction
from mailgate.db.models import AutoAnswer, Inbound, Message, Outbox, Ticket
from mailgate.outbound.compose import Outgoing
from mailgate.outbound.outbox import enqueue
from mailgate.tickets import service
from tests.support.harness import DeskHarness
from tests.support.mails import make_mail


def _mail(app: App, n: int) -> Outgoing:
    return Outgoing(from_name="Desk", from_addr="servicedesk@desk.example",
                    to=("eva@site1234.example.be",), subject=f"[SD-{n}] Test", body=f"Hallo {n}",
                    message_id=app.desk.ids.make(None), date=app.clock.now())


def _answer(app: App, n: int) -> dict[str, object]:
    return {"address": f"a{n}@site1234.example.be", "at": app.clock.now(), "kind": "ack",
            "suppressed": False, "inbound_id": None, "digest": str(n)}


def test_each_table_is_one_insert_at_the_commit_and_the_handles_get_their_ids(
        app: App) -> None:
    inserts: list[str] = []

    def listener(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.startswith("INSERT"):
            inserts.append(statement.split("(")[0].split()[-1])

    event.listen(app.engine, "before_cursor_execute", listener)
    try:
        with transaction(app.sessions) as session:
            handles = [enqueue(session, _mail(app, n), "ack", ticket_id=None, inbound_id=None)
                       for n in range(5)]
            for n in range(3):
                deferred.add(session, AutoAnswer, _answer(app, n))
            session.flush()
            assert inserts == [] and all(h.id is None for h in handles)
            assert len(list(deferred.pending(session, AutoAnswer))) == 3
    finally:
        event.remove(app.engine, "before_cursor_execute", listener)
    assert inserts == ["auto_answer", "outbox", "event"]
    with reading(app.sessions) as s:
        by_mid = {o.message_id: (o.id, o.subject) for o in s.execute(select(Outbox)).scalars()}
        assert len(s.execute(select(AutoAnswer)).all()) == 3
    # Each handle names its own row (SQLite returns a multi-row INSERT's ids in no promised
    # order: they are matched by the unique Message-ID).
    assert [by_mid[h.key] for h in handles] == [(h.id, f"[SD-{n}] Test")
                                                for n, h in enumerate(handles)]
    assert [h.id for h in handles] == sorted(h.id for h in handles if h.id is not None)


def test_a_rolled_back_savepoint_takes_its_rows_along(app: App) -> None:
    with transaction(app.sessions) as session:
        deferred.add(session, AutoAnswer, _answer(app, 1))
        with pytest.raises(RuntimeError), session.begin_nested():
            deferred.add(session, AutoAnswer, _answer(app, 2))
            with session.begin_nested():
                deferred.add(session, AutoAnswer, _answer(app, 3))
            raise RuntimeError("the mail fails")
        with session.begin_nested():
            deferred.add(session, AutoAnswer, _answer(app, 4))
        # Released, but not written: the transaction may still roll back.
        assert [v["digest"] for v in deferred.pending(session, AutoAnswer)] == ["1", "4"]
    with reading(app.sessions) as s:
        assert sorted(s.execute(select(AutoAnswer.digest)).scalars()) == ["1", "4"]


def test_a_rolled_back_transaction_writes_none_and_leaves_none_behind(app: App) -> None:
    with pytest.raises(RuntimeError), transaction(app.sessions) as session:
        deferred.add(session, AutoAnswer, _answer(app, 1))
        raise RuntimeError("the transaction fails")
    with transaction(app.sessions) as session:
        assert list(deferred.pending(session, AutoAnswer)) == []
        deferred.add(session, AutoAnswer, _answer(app, 2))
    with reading(app.sessions) as s:
        assert list(s.execute(select(AutoAnswer.digest)).scalars()) == ["2"]


def test_the_editors_thread_counts_what_was_sent_earlier_in_the_transaction(app: App) -> None:
    """An answer's copy on the ticket is written at the commit; a second mail on the same
    ticket in the same transaction still threads onto the first."""
    row = DeskHarness(app).receive(make_mail("eva@site1234.example.be", "Site 1234: menu broken",
                                             "The menu on https://site1234.example.be is gone."))
    with transaction(app.sessions) as session:
        ticket = session.get(Ticket, row.ticket_id)
        assert ticket is not None
        first = _mail(app, 1)
        service.send(session, first, "reminder", ticket, None, "first")
        _last, refs = service.editor_thread(session, ticket)
        assert refs[-1] == first.message_id
    with reading(app.sessions) as s:  # written once: for the reader, not again at the commit
        assert len(s.execute(select(Message).where(
            Message.message_id == first.message_id)).all()) == 1


def _copy(app: App, ticket_id: int, n: int) -> dict[str, object]:
    return {"ticket_id": ticket_id, "inbound_id": None, "direction": "in", "kind": "request",
            "from_addr": "eva@site1234.example.be", "to_addrs": "", "cc_addrs": "",
            "subject": f"Vraag {n}", "message_id": f"<{n}@site1234.example.be>",
            "body_text": "x", "created_at": app.clock.now()}


def _subjects(session: Session) -> list[str]:
    return list(session.execute(select(Message.subject).where(Message.subject.like("Vraag%"))
                                .order_by(Message.id)).scalars())


def _ticket(app: App) -> int:
    row = DeskHarness(app).receive(make_mail("eva@site1234.example.be", "Site 1234: menu broken",
                                             "The menu on https://site1234.example.be is gone."))
    assert row.ticket_id is not None
    return row.ticket_id


def test_a_query_of_the_table_writes_its_rows_first_and_the_commit_not_again(
        app: App) -> None:
    ticket_id = _ticket(app)
    with transaction(app.sessions) as session:
        for n in range(2):
            deferred.add(session, Message, _copy(app, ticket_id, n))
        assert _subjects(session) == ["Vraag 0", "Vraag 1"]  # as the ORM's autoflush would
        assert list(deferred.pending(session, Message)) == []  # no reader counts them twice
        deferred.add(session, Message, _copy(app, ticket_id, 2))
    with reading(app.sessions) as s:
        assert _subjects(s) == ["Vraag 0", "Vraag 1", "Vraag 2"]


def test_rows_written_for_a_reader_inside_a_savepoint_that_rolls_back_are_not_lost(
        app: App) -> None:
    """Recorded before the savepoint, written inside it for a query, undone by its rollback:
    written again at the commit. The savepoint's own row is gone."""
    ticket_id = _ticket(app)
    with transaction(app.sessions) as session:
        deferred.add(session, Message, _copy(app, ticket_id, 0))
        with pytest.raises(RuntimeError), session.begin_nested():
            deferred.add(session, Message, _copy(app, ticket_id, 1))
            assert _subjects(session) == ["Vraag 0", "Vraag 1"]
            raise RuntimeError("this mail fails")
        assert [v["subject"] for v in deferred.pending(session, Message)] == ["Vraag 0"]
    with reading(app.sessions) as s:
        assert _subjects(s) == ["Vraag 0"]


def test_changed_rows_are_one_statement_at_the_commit_and_a_query_sees_them_first(
        app: App) -> None:
    first = _ticket(app)
    second = _ticket(app)
    with transaction(app.sessions) as session:
        ids = list(session.execute(select(Inbound.id).order_by(Inbound.id)).scalars())
        for n, row_id in enumerate(ids):
            deferred.change(session, Inbound, row_id, {"reason": f"changed {n}"})
        # The rows' objects are not touched: a query reads the change, written for it.
        assert session.execute(select(Inbound.reason).where(Inbound.id == ids[0])
                               ).scalar_one() == "changed 0"
        deferred.change(session, Inbound, ids[1], {"reason": "changed again"})
    with reading(app.sessions) as s:
        reasons = dict(s.execute(select(Inbound.id, Inbound.reason)).all())
    assert reasons == {ids[0]: "changed 0", ids[1]: "changed again"}
    assert first != second
