"""db/eventlog.py: a transaction's events written at its commit, in one statement, and only
those of what stayed."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, select

from mailgate.app import App
from mailgate.db import eventlog
from mailgate.db.engine import reading, transaction
from mailgate.db.models import Event, Outbox
from mailgate.outbound.compose import Outgoing
from mailgate.outbound.outbox import enqueue
from mailgate.tickets import autoanswer


def _events(app: App) -> list[tuple[str, int | None, dict[str, Any]]]:
    with reading(app.sessions) as s:
        return [(e.kind, e.outbox_id, e.detail) for e in s.execute(
            select(Event).order_by(Event.id)).scalars()]


def _mail(app: App, n: int) -> Outgoing:
    return Outgoing(from_name="Desk", from_addr="servicedesk@desk.example",
                    to=("eva@site1234.example.be",), subject=f"[SD-{n}] Test", body="Hallo",
                    message_id=app.desk.ids.make(None), date=app.clock.now())


def test_the_events_of_a_transaction_are_one_insert_at_its_commit(app: App) -> None:
    inserts: list[str] = []

    def listener(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.startswith("INSERT INTO event"):
            inserts.append(statement)

    event.listen(app.engine, "before_cursor_execute", listener)
    try:
        with transaction(app.sessions) as session:
            rows = [enqueue(session, _mail(app, n), "ack", ticket_id=None, inbound_id=None)
                    for n in range(3)]
            eventlog.record(session, app.clock.now(), "ticket.created", detail={"n": 1})
            session.flush()
            assert _events(app) == [] and inserts == []  # not before the commit
    finally:
        event.remove(app.engine, "before_cursor_execute", listener)
    assert len(inserts) == 1
    written = _events(app)
    # Each outbox event names the row enqueued with it, whose id came at the flush.
    assert [(kind, oid) for kind, oid, _d in written] == [
        *(("outbox.ack", r.id) for r in rows), ("ticket.created", None)]
    with app.sessions() as s:
        assert {o.id: o.message_id for o in s.execute(select(Outbox)).scalars()} == {
            oid: d["message_id"] for _k, oid, d in written if oid is not None}


def test_a_rolled_back_savepoint_takes_its_events_along(app: App) -> None:
    with transaction(app.sessions) as session:
        eventlog.record(session, app.clock.now(), "kept.before")
        with pytest.raises(RuntimeError), session.begin_nested():
            eventlog.record(session, app.clock.now(), "dropped.outer")
            with session.begin_nested():
                eventlog.record(session, app.clock.now(), "dropped.inner")
            raise RuntimeError("the mail fails")
        with session.begin_nested():
            eventlog.record(session, app.clock.now(), "kept.savepoint")
        eventlog.record(session, app.clock.now(), "kept.after")
    assert [k for k, _o, _d in _events(app)] == [
        "kept.before", "kept.savepoint", "kept.after"]


def test_a_rolled_back_transaction_writes_none(app: App) -> None:
    with pytest.raises(RuntimeError), transaction(app.sessions) as session:
        eventlog.record(session, app.clock.now(), "never")
        raise RuntimeError("the transaction fails")
    with transaction(app.sessions) as session:
        eventlog.record(session, app.clock.now(), "next")
    assert [k for k, _o, _d in _events(app)] == ["next"]


def test_ids_follow_the_order_events_were_recorded_in(app: App) -> None:
    """`ticket show` lists a ticket's events by id: the brake's suppressed answer between
    two events of the same mail stays between them."""
    with transaction(app.sessions) as session:
        eventlog.record(session, app.clock.now(), "ticket.created")
        assert not autoanswer.allow(session, "eva@site1234.example.be", "ack", app.clock.now(),
                                    0, None)
        eventlog.record(session, app.clock.now(), "inbound.ticket")
    assert [k for k, _o, _d in _events(app)] == [
        "ticket.created", "answer.suppressed", "inbound.ticket"]


def test_a_session_closed_without_a_commit_carries_nothing_into_its_next_transaction(
        app: App) -> None:
    session = app.sessions()
    session.begin()
    eventlog.record(session, app.clock.now(), "never")
    session.close()
    with session.begin():
        eventlog.record(session, app.clock.now(), "next")
    session.close()
    assert [k for k, _o, _d in _events(app)] == ["next"]
