"""Ticket numbers (db/migrations 0007): on PostgreSQL a sequence that no transaction holds,
carried on from the counter row of the databases made before it; on SQLite the counter."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import insert, text, update

from mailgate.db.engine import make_engine, make_sessionmaker, transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import Counter, Ticket
from mailgate.tickets import service
from tests.support.desk import EDITOR, SettingsFactory
from tests.support.migrations import migrate_to


def _next(engine: object) -> int:
    with transaction(make_sessionmaker(engine)) as session:  # type: ignore[arg-type]
        return service.next_number(session)


def test_numbers_go_on_from_the_counter_and_back(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    engine = make_engine(settings.database)
    try:
        migrate_to(engine, "0006")
        with engine.begin() as conn:
            conn.execute(update(Counter.__table__).where(Counter.name == "ticket")
                         .values(value=41))
            conn.execute(insert(Ticket.__table__).values(
                id=1, number=41, ref="SD-41", state="new", priority="normal", kind="request",
                requester=EDITOR, requester_name="", subject="s", language="nl",
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                updated_at=datetime(2026, 1, 1, tzinfo=UTC), reminders_sent=0))
        upgrade(engine)
        assert [_next(engine), _next(engine)] == [42, 43]
        postgres = engine.dialect.name == "postgresql"
        if postgres:
            with engine.connect() as conn:  # the sequence gives them, the counter stayed
                assert conn.execute(text("SELECT value FROM counter")).scalar_one() == 41
        with engine.begin() as conn:
            conn.execute(insert(Ticket.__table__).values(
                id=2, number=43, ref="SD-43", state="new", priority="normal", kind="request",
                requester=EDITOR, requester_name="", subject="s", language="nl",
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                updated_at=datetime(2026, 1, 1, tzinfo=UTC), reminders_sent=0))
        migrate_to(engine, "0006", down=True)
        # Back on the counter, past every number a ticket has.
        with engine.connect() as conn:
            assert conn.execute(text("SELECT value FROM counter")).scalar_one() == 43
        upgrade(engine)
        assert _next(engine) == 44
    finally:
        engine.dispose()


def test_a_number_is_taken_without_waiting_for_another_transaction(
        make_settings: SettingsFactory) -> None:
    """PostgreSQL: a transaction that took a number and is still open does not hold the
    next one back (the counter row did, for as long as that transaction ran)."""
    settings = make_settings()
    engine = make_engine(settings.database)
    try:
        upgrade(engine)
        if engine.dialect.name != "postgresql":
            return  # one writer at a time on SQLite: nothing to wait for but the lock
        factory = make_sessionmaker(engine)
        with transaction(factory) as first:
            taken = service.next_number(first)
            with transaction(factory) as second:
                # The counter row would wait here until `first` ends: an error after 0.5 s.
                second.execute(text("SET LOCAL lock_timeout = '500ms'"))
                nxt = service.next_number(second)
        assert nxt == taken + 1
    finally:
        engine.dispose()
