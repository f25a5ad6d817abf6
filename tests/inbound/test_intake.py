"""Group commit (mailgate/inbound/intake.py): mails that arrive together are stored in one
transaction; one mail that cannot be stored gets its own failure while the others of its
batch are stored and answered 250; an outage fails them all (451, the sender retries).
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future

import pytest
from aiosmtpd.smtp import Envelope
from sqlalchemy import select, text

from mailgate.app import App
from mailgate.db.engine import StorageUnavailable
from mailgate.db.models import Inbound
from mailgate.inbound.intake import IntakeWriter
from mailgate.inbound.smtp import DeskHandler
from mailgate.inbound.store import Arrival, Stored, store_raw
from tests.support.desk import DESK, EDITOR, SettingsFactory
from tests.support.mails import make_mail, wire

pytestmark = pytest.mark.timeout(30)

# Not UTF-8: aiosmtpd hands such a MAIL FROM on with surrogate escapes, which no database
# driver can encode. The mail itself is fine; only this one row cannot be written.
UNWRITABLE_SENDER = b"j\xe9r\xf4me@client.example".decode("utf-8", "surrogateescape")


@pytest.fixture
def writer(app: App) -> Iterator[IntakeWriter]:
    """Not started: a test queues its mails first, so that they make one batch."""
    w = IntakeWriter(app.sessions, app.clock)
    yield w
    w.stop()


def _arrivals(n: int) -> list[Arrival]:
    return [Arrival(wire(make_mail(EDITOR, f"Melding {i}")), "smtp", EDITOR, (DESK,))
            for i in range(n)]


def _stored(app: App) -> list[Inbound]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())


def test_a_burst_is_committed_in_one_transaction(app: App, writer: IntakeWriter) -> None:
    arrivals = _arrivals(5)
    futures = [writer.submit(a) for a in arrivals]
    writer.start()
    results = [f.result(10) for f in futures]
    assert writer.committed == 1 and writer.rolled_back == 0
    assert [r.duplicate for r in results] == [False] * 5
    rows = _stored(app)
    assert [r.id for r in rows] == [r.inbound_id for r in results], "ids in arrival order"
    assert [r.raw for r in rows] == [a.raw for a in arrivals]
    if app.engine.dialect.name == "postgresql":  # seen by the database: one transaction id
        with app.engine.connect() as conn:
            assert conn.execute(text("SELECT count(DISTINCT xmin::text) FROM inbound")
                                ).scalar_one() == 1


def test_one_unwritable_mail_fails_alone_and_the_others_are_stored(
        app: App, writer: IntakeWriter, caplog: pytest.LogCaptureFixture) -> None:
    good = _arrivals(4)
    bad = Arrival(wire(make_mail(EDITOR, "Van een oude client")), "smtp", UNWRITABLE_SENDER,
                  (DESK,))
    batch = [good[0], good[1], bad, good[2], good[3]]
    futures = [writer.submit(a) for a in batch]
    with caplog.at_level(logging.ERROR, logger="mailgate.inbound.intake"):
        writer.start()
        outcomes = [_outcome(f) for f in futures]
    assert [type(o).__name__ for o in outcomes] == [
        "Stored", "Stored", "RuntimeError", "Stored", "Stored"]
    assert not isinstance(outcomes[2], StorageUnavailable), "a bad mail is no outage"
    assert any("storing one by one" in r.getMessage() for r in caplog.records)
    # The batch was rolled back once, then each good mail was committed on its own.
    assert (writer.committed, writer.rolled_back) == (4, 2)
    rows = _stored(app)
    assert [r.raw for r in rows] == [a.raw for a in good]
    assert [r.id for r in rows] == [o.inbound_id for o in outcomes if isinstance(o, Stored)]


def test_a_duplicate_in_a_failed_batch_still_gets_the_first_id(
        app: App, writer: IntakeWriter) -> None:
    [earlier] = _arrivals(1)
    first = store_raw(app.sessions, app.clock, earlier.raw, "imap")
    again = writer.submit(earlier)
    failing = writer.submit(Arrival(earlier.raw + b"x", "smtp", UNWRITABLE_SENDER, (DESK,)))
    writer.start()
    assert again.result(10) == Stored(first.inbound_id, duplicate=True)
    with pytest.raises(RuntimeError):
        failing.result(10)
    assert [r.channel for r in _stored(app)] == ["imap"]


def test_smtp_answers_250_to_the_good_mails_and_451_to_the_bad_one(app: App) -> None:
    """The same through the SMTP handler: what the five senders of one batch hear."""
    writer = IntakeWriter(app.sessions, app.clock)
    mails = [wire(make_mail(EDITOR, f"Melding {i}")) for i in range(5)]
    senders = [EDITOR] * 5

    submitted: list[Future[Stored]] = []

    def submit(raw: bytes, mail_from: str, rcpt_tos: list[str]) -> Future[Stored]:
        # The handler makes an envelope sender storable (test_smtp_hostile.py): the one
        # that cannot be written is put in here, behind its back.
        if len(submitted) == 2:
            mail_from = UNWRITABLE_SENDER
        submitted.append(writer.submit(Arrival(raw, "smtp", mail_from, tuple(rcpt_tos))))
        if len(submitted) == len(mails):
            writer.start()  # all five are queued: they make one batch
        return submitted[-1]

    handler = DeskHandler(frozenset({DESK}), submit, max_recipients=10)

    async def deliver_all() -> list[str]:
        envelopes = []
        for raw, sender in zip(mails, senders, strict=True):
            env = Envelope()
            env.mail_from, env.rcpt_tos = sender, [DESK]
            env.content = env.original_content = raw
            envelopes.append(env)
        return await asyncio.gather(*(handler.handle_DATA(None, None, e)  # type: ignore[arg-type]
                                      for e in envelopes))
    try:
        replies = asyncio.run(deliver_all())
    finally:
        writer.stop()
    codes = [r.split()[0] for r in replies]
    assert codes == ["250", "250", "451", "250", "250"]
    assert "Local error" in replies[2]
    ids = [int(r.rsplit(" ", 1)[1]) for r in replies if r.startswith("250")]
    assert [r.id for r in _stored(app)] == ids


def test_an_outage_fails_the_whole_batch_without_retrying_mail_by_mail(
        app: App, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture) -> None:
    url = app.settings.database.url
    if url.startswith("sqlite"):
        # Another process holds the database past the busy timeout.
        down = App(make_settings(database={"busy_timeout_ms": 200}))
        blocker = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
    else:
        # Nothing listens on port 1: connection refused, as when the server is down.
        host = url.split("@", 1)[1].split("/", 1)[0]
        down = App(make_settings(database={"url": url.replace(host, "127.0.0.1:1")}))
        blocker = None
    w = IntakeWriter(down.sessions, down.clock)
    futures = [w.submit(a) for a in _arrivals(3)]
    try:
        with caplog.at_level(logging.ERROR, logger="mailgate.inbound.intake"):
            w.start()
            outcomes = [_outcome(f) for f in futures]
    finally:
        w.stop()
        down.close()
        if blocker:
            blocker.close()
    assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes
    assert not any("one by one" in r.getMessage() for r in caplog.records)
    assert _stored(app) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_in_the_event_loop_a_free_sqlite_is_written_at_once(
        app: App, writer: IntakeWriter) -> None:
    """The SMTP loop commits a turn's mails itself when the write lock is free: the writer
    thread is not even started here."""
    arrivals = _arrivals(3)

    async def submit_all() -> list[Stored]:
        futures = [writer.submit(a) for a in arrivals]
        assert not any(f.done() for f in futures), "not before the commit"
        await asyncio.sleep(0.05)
        return [f.result(0) for f in futures]

    results = asyncio.run(submit_all())
    assert writer.committed == 1
    assert [r.raw for r in _stored(app)] == [a.raw for a in arrivals]
    assert [r.id for r in _stored(app)] == [s.inbound_id for s in results]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_in_the_event_loop_a_locked_sqlite_is_left_to_the_thread(
        app: App, writer: IntakeWriter) -> None:
    """Another writer holds SQLite: the loop does not wait, the thread does, and the mails
    are answered only once it committed them."""
    blocker = sqlite3.connect(app.settings.database.url.split("///", 1)[1],
                              isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    arrivals = _arrivals(2)
    writer.start()

    async def submit_all() -> list[Stored]:
        futures = [writer.submit(a) for a in arrivals]
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(0.3)
        assert asyncio.get_running_loop().time() - started < 1, "the loop never waited"
        assert not any(f.done() for f in futures), "no answer before the commit"
        blocker.execute("COMMIT")
        return [await asyncio.wrap_future(f) for f in futures]

    try:
        results = asyncio.run(asyncio.wait_for(submit_all(), 15))
    finally:
        blocker.close()
    assert [r.raw for r in _stored(app)] == [a.raw for a in arrivals]
    assert [r.id for r in _stored(app)] == [s.inbound_id for s in results]


def _outcome(future: Future[Stored]) -> Stored | BaseException:
    try:
        return future.result(15)
    except Exception as exc:
        return exc
