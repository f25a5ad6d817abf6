"""`mailgate deliver`'s lean store (mailgate/inbound/pipe.py): plain DB-API, no SQLAlchemy,
yet the same row and the same idempotency key as the daemon's store (inbound/store.py), the
same exit codes (0 stored, 65 empty, 75 storage unavailable), exactly once under a race. On
SQLite and PostgreSQL."""

from __future__ import annotations

import io
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate import config
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.db import dbapi
from mailgate.db.models import Inbound
from mailgate.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL
from mailgate.inbound.arrival import Arrival, Stored, inbound_row
from mailgate.inbound.pipe import deliver, store
from mailgate.inbound.store import store_raw
from mailgate.worker import process_pending
from tests.support.desk import DESK, EDITOR
from tests.support.mails import make_mail, wire

AT = datetime(2026, 11, 30, 9, 15, 42, 123456, tzinfo=UTC)


def _deliver(app: App, raw: bytes, at: datetime = AT, **kw: str) -> tuple[int, Stored | None, str]:
    return deliver(app.settings.database, FixedClock(at), io.BytesIO(raw),
                   kw.get("sender", EDITOR), [kw.get("rcpt", DESK)])


def _row(app: App, inbound_id: int) -> Inbound:
    with app.sessions() as s:
        row = s.get(Inbound, inbound_id)
        assert row is not None
        return row


def test_the_pipe_writes_the_row_the_daemon_writes(app: App) -> None:
    raw = wire(make_mail(EDITOR, "Contactformulier kapot"))
    code, stored, error = _deliver(app, raw)
    assert (code, error) == (EX_OK, "") and stored is not None and not stored.duplicate
    row = _row(app, stored.inbound_id)
    # Every column as the ORM reads it back: the types round-trip (JSON trail, aware UTC
    # time to the microsecond, the raw bytes exactly).
    assert row.raw == raw and row.size == len(raw)
    assert row.received_at == AT
    assert (row.channel, row.envelope_from, row.envelope_to) == ("pipe", EDITOR, DESK)
    assert (row.status, row.reason, row.kind, row.trail, row.attempts) == (
        "pending", "", "", [], 0)
    assert (row.processed_at, row.ticket_id, row.authenticity) == (None, None, "")
    expected = inbound_row(Arrival(raw, "pipe", EDITOR, (DESK,)), AT)
    assert (row.digest, row.message_id, row.dedup_key) == (
        expected["digest"], expected["message_id"], expected["dedup_key"])
    # The worker takes it as it takes a mail from SMTP: a ticket with its acknowledgement.
    assert process_pending(app).processed == 1
    assert _row(app, stored.inbound_id).status == "ticket"


def test_one_key_for_both_ways_of_storing(app: App) -> None:
    """A mail stored by the daemon is a duplicate for `deliver`, and the other way round."""
    by_daemon = wire(make_mail(EDITOR, "Eerst via SMTP"))
    first = store_raw(app.sessions, app.clock, by_daemon, "smtp")
    code, again, _ = _deliver(app, by_daemon.replace(b"\r\n", b"\n"))  # LF, as a pipe may
    assert code == EX_OK and again == Stored(first.inbound_id, duplicate=True)

    by_pipe = wire(make_mail(EDITOR, "Eerst via de pipe"))
    code, piped, _ = _deliver(app, by_pipe)
    assert code == EX_OK and piped is not None and not piped.duplicate
    assert store_raw(app.sessions, app.clock, by_pipe, "imap") == Stored(piped.inbound_id, True)
    code, twice, _ = _deliver(app, by_pipe)
    assert twice == Stored(piped.inbound_id, duplicate=True)
    with app.sessions() as s:
        assert s.execute(select(Inbound.id)).scalars().all() == [first.inbound_id,
                                                                  piped.inbound_id]


def test_times_compare_with_the_daemons_rows(app: App) -> None:
    """On SQLite a time is text: the pipe must write SQLAlchemy's format, or ranges and
    ordering over received_at (retention, stats) would be wrong for piped mail."""
    store_raw(app.sessions, FixedClock(AT - timedelta(microseconds=1)),
              wire(make_mail(EDITOR, "net ervoor")), "smtp")
    _deliver(app, wire(make_mail(EDITOR, "via de pipe")))
    store_raw(app.sessions, FixedClock(AT + timedelta(microseconds=1)),
              wire(make_mail(EDITOR, "net erna")), "smtp")
    with app.sessions() as s:
        ordered = s.execute(select(Inbound.channel).order_by(Inbound.received_at)).scalars()
        assert list(ordered) == ["smtp", "pipe", "smtp"]
        assert s.execute(select(Inbound.channel).where(Inbound.received_at >= AT,
                                                       Inbound.received_at < AT + timedelta(
                                                           microseconds=1))).scalars().all() \
            == ["pipe"]


@pytest.mark.parametrize("raw", [b"", b" \r\n\t\r\n"], ids=["empty", "whitespace"])
def test_an_empty_mail_is_refused_with_65(app: App, raw: bytes) -> None:
    code, stored, error = _deliver(app, raw)
    assert (code, stored) == (EX_DATAERR, None) and "empty" in error


def test_without_a_schema_the_mta_is_told_to_retry(make_settings: config.Settings) -> None:
    """`db upgrade` not run yet: 75, so the MTA keeps the mail until it is."""
    settings = make_settings()  # type: ignore[operator]
    code, stored, error = deliver(settings.database, FixedClock(AT),
                                  io.BytesIO(wire(make_mail(EDITOR, "x"))))
    assert (code, stored) == (EX_TEMPFAIL, None) and error.startswith("storage unavailable")


def test_an_unreachable_database_answers_75(tmp_path: Path) -> None:
    db = config.DatabaseSettings(url="postgresql+psycopg://postgres@127.0.0.1:1/test")
    code, _stored, error = deliver(db, FixedClock(AT), io.BytesIO(b"Subject: x\r\n\r\nx\r\n"))
    assert code == EX_TEMPFAIL and "storage unavailable" in error


def test_a_locked_sqlite_database_answers_75_and_stores_nothing(
        app: App, make_settings: config.Settings) -> None:
    if not app.settings.database.url.startswith("sqlite"):
        pytest.skip("the write lock of one file is SQLite's")
    holder = sqlite3.connect(dbapi.sqlite_path(app.settings.database.url),
                             isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the database
    try:
        quick = config.DatabaseSettings(url=app.settings.database.url, busy_timeout_ms=100)
        code, _stored, error = deliver(quick, FixedClock(AT),
                                       io.BytesIO(wire(make_mail(EDITOR, "x"))))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == EX_TEMPFAIL and "locked" in error
    with app.sessions() as s:
        assert s.execute(select(Inbound.id)).first() is None


def test_a_mail_stored_meanwhile_by_another_process_is_a_duplicate(app: App) -> None:
    """The race the key is for: another process has inserted the same mail and not yet
    committed. The pipe's insert waits for it (PostgreSQL) or for the write lock (SQLite),
    then answers with the other's id: one row, never an error."""
    raw = wire(make_mail(EDITOR, "Twee keer tegelijk"))
    values = inbound_row(Arrival(raw, "smtp"), AT)
    results: list[tuple[int, Stored | None, str]] = []
    with dbapi.connect(app.settings.database) as other:
        with dbapi.write(other) as cur:
            # The other process's uncommitted insert, through the same statement.
            other_id = dbapi.insert_inbound(other, cur, [values])[1][values["dedup_key"]]
            racer = threading.Thread(target=lambda: results.append(_deliver(app, raw)))
            racer.start()
            racer.join(0.5)
            assert racer.is_alive(), "the pipe must wait for the other's transaction"
        racer.join(10)
    assert results == [(EX_OK, Stored(other_id, duplicate=True), "")]
    with app.sessions() as s:
        assert s.execute(select(Inbound.id)).scalars().all() == [other_id]


def test_store_on_an_open_connection(app: App) -> None:
    raw = wire(make_mail(EDITOR, "Rechtstreeks"))
    with dbapi.connect(app.settings.database) as plain:
        first = store(plain, inbound_row(Arrival(raw, "pipe"), AT))
        again = store(plain, inbound_row(Arrival(raw, "pipe"), AT))
    assert again == Stored(first.inbound_id, duplicate=True)


@pytest.mark.parametrize(("url", "conninfo"), [
    ("postgresql+psycopg://u:p%40ss@db.example:5433/desk?sslmode=require",
     "postgresql://u:p%40ss@db.example:5433/desk?sslmode=require"),
    ("postgresql://postgres@127.0.0.1/test", "postgresql://postgres@127.0.0.1/test"),
])
def test_postgres_urls_become_libpq_uris(url: str, conninfo: str) -> None:
    assert dbapi.postgres_conninfo(url) == conninfo


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:////var/lib/mailgate/mailgate.db", "/var/lib/mailgate/mailgate.db"),
    ("sqlite:///var/mailgate.db", "var/mailgate.db"),
    ("sqlite:///var/mailgate.db?timeout=3", "var/mailgate.db"),
    ("sqlite://", ""),
])
def test_sqlite_urls_name_the_file_sqlalchemy_opens(url: str, path: str) -> None:
    assert dbapi.sqlite_path(url) == path


def test_both_ways_insert_the_same_columns() -> None:
    values = inbound_row(Arrival(b"Subject: x\r\n\r\nx\r\n", "pipe"), AT)
    assert set(values) == {*dbapi.INBOUND_COLUMNS, "trail"} and values["trail"] == []
    required = {c.name for c in Inbound.__table__.columns
                if not c.nullable and c.server_default is None and not c.primary_key}
    assert required <= set(values), "a NOT NULL column the pipe would leave out"
