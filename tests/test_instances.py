"""Several instances (issue 11, item 8): two real `serve` processes on one PostgreSQL.

Both listen (different ports, as behind two MX records), both run the worker, the sender
and the sweeps. Under a blast spread over both, with part of the mail delivered to both
(an MX retry after a lost `250`), and with reminders falling due for both sweepers at once:
no mail is two tickets, no ticket gets two acknowledgements or two reminders.

The IMAP account is polled by one instance at a time (a PostgreSQL advisory lock,
mailgate/inbound/leader.py); when that instance is killed with SIGKILL the other takes over
within `[[imap]] leader_retry_seconds` (15 s by default, 1 s here).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import Engine

from mailgate.config import ImapAccount
from mailgate.db.models import Inbound, Outbox, Ticket
from mailgate.db.status import InboundStatus, OutboxStatus
from mailgate.inbound.leader import Lead, LeadLost, lock_key
from tests.support.dovecot import DEFAULT_PASSWORD, DEFAULT_USER, DovecotServer
from tests.support.mails import make_mail, wire
from tests.support.pgschema import private_schema
from tests.support.serve import Blast, ServeProcess, request
from tests.support.sink import SmtpSink
from tests.support.wait import until

PG_ENV = "MAILGATE_TEST_DATABASE_URL"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A private schema on the machine's PostgreSQL (the feature is PostgreSQL's alone)."""
    base = os.environ.get(PG_ENV)
    if not base:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PG_ENV} is not set under CI")
        pytest.skip(f"several instances need PostgreSQL: set {PG_ENV}")
    with private_schema(base) as url:
        yield url


def _settled(url: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            pending_in = conn.execute(select(func.count()).select_from(Inbound).where(
                Inbound.status == InboundStatus.PENDING)).scalar_one()
            pending_out = conn.execute(select(func.count()).select_from(Outbox).where(
                Outbox.status != OutboxStatus.SENT)).scalar_one()
    finally:
        engine.dispose()
    return pending_in == 0 and pending_out == 0


def _processed_by(serve: ServeProcess) -> int:
    return serve.text().count("inbound processed")


@pytest.mark.timeout(150)
def test_two_instances_share_the_work_and_double_nothing(
        tmp_path: Path, pg_url: str, sink: SmtpSink) -> None:
    a = ServeProcess(tmp_path, pg_url, sink.port, name="a").prepare().start()
    b = ServeProcess(tmp_path, pg_url, sink.port, name="b").start()
    engine = create_engine(pg_url)
    try:
        mails = [request(n, "mx") for n in range(400)]
        blast = Blast([a.port, b.port], mails)
        # The same 60 mails to both MX hosts as well: a retry after a lost 250.
        twice = [request(n, "retry") for n in range(60)]
        again = Blast([a.port, b.port], twice + twice)
        threads = blast.run(8) + again.run(4)
        for t in threads:
            t.join(60)
        assert not blast.refused and not again.refused, (blast.refused[:3], again.refused[:3])
        until(lambda: _settled(pg_url), timeout=90, interval=0.2,
              what="every mail processed and acknowledged")

        # Reminders due for both sweepers at once (sweep_seconds = 1 on both).
        now = datetime.now(UTC)
        with engine.begin() as conn:
            waiting = conn.execute(select(Ticket.id).order_by(Ticket.id).limit(80)
                                   ).scalars().all()
            conn.execute(update(Ticket).where(Ticket.id.in_(waiting)).values(
                state="waiting", remind_at=now - timedelta(minutes=1),
                close_at=now + timedelta(days=7)))
        until(lambda: _count(engine, "reminder") >= len(waiting), timeout=30,
              what="a reminder for every waiting ticket")
        until(lambda: _settled(pg_url), timeout=30, what="the reminders sent")
        time.sleep(2.5)  # more sweeps by both: nothing further may fall due

        with engine.connect() as conn:
            inbound = conn.execute(select(Inbound.message_id, Inbound.status)).all()
            tickets = conn.execute(select(func.count()).select_from(Ticket)).scalar_one()
            outbox = conn.execute(select(Outbox.kind, Outbox.ticket_id, Outbox.message_id)
                                  ).all()
        by_a, by_b = _processed_by(a), _processed_by(b)
    finally:
        a.stop()
        b.stop()
        engine.dispose()

    mids = [mid for mid, _status in inbound]
    assert len(mids) == len(set(mids)) == len(mails) + len(twice)  # the retries: one row each
    assert {status for _mid, status in inbound} == {InboundStatus.TICKET}
    assert tickets == len(mids)
    per_ticket = Counter((kind, ticket_id) for kind, ticket_id, _mid in outbox)
    assert set(per_ticket.values()) == {1}, per_ticket.most_common(3)
    assert sum(kind == "ack" for kind, _t, _m in outbox) == tickets
    assert sum(kind == "reminder" for kind, _t, _m in outbox) == len(waiting)
    # On the wire: each outgoing mail once.
    sent = Counter(str(m["Message-ID"]) for m in sink.messages)
    assert set(sent.values()) == {1}, sent.most_common(3)
    assert set(sent) == {mid for _k, _t, mid in outbox}
    # Both did the work: each processed part of the mail.
    assert by_a > 0 and by_b > 0, (by_a, by_b)
    print(f"\n{len(mails)} mails + {len(twice)} sent to both instances: {tickets} tickets, "
          f"{tickets} acks, {len(waiting)} reminders, none doubled; processed by a: {by_a}, "
          f"by b: {by_b}")


def _count(engine: Engine, kind: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Outbox).where(
            Outbox.kind == kind)).scalar_one())


def _imap_table(server: DovecotServer) -> dict[str, str]:
    return {"[[imap]]": "\n".join([
        'name = "desk"', f'host = "{server.host}"', f"port = {server.port}", "ssl = false",
        f'username = "{DEFAULT_USER}"', f'password = "{DEFAULT_PASSWORD}"',
        "poll_interval = 2", "timeout_seconds = 5", "leader_retry_seconds = 1"])}


def _holders(url: str, server: DovecotServer) -> int:
    """Sessions holding the account's advisory lock now (a bigint key shows in pg_locks
    as classid = its high 32 bits, objid = its low 32 bits, objsubid = 1)."""
    key = lock_key(ImapAccount(name="desk", host=server.host, port=server.port,
                               username=DEFAULT_USER)) & 0xFFFF_FFFF_FFFF_FFFF
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND objsubid = 1 AND classid::bigint = :high AND objid::bigint = :low"),
                {"high": key >> 32, "low": key & 0xFFFF_FFFF}).scalar_one())
    finally:
        engine.dispose()


POLLS = re.compile(r"imap account 'desk': this instance polls it now")


@pytest.mark.timeout(120)
def test_one_instance_polls_the_mailbox_and_another_takes_over_when_it_dies(
        tmp_path: Path, pg_url: str, sink: SmtpSink, dovecot_server: DovecotServer) -> None:
    imap = _imap_table(dovecot_server)
    a = ServeProcess(tmp_path, pg_url, sink.port, name="a", sections=imap).prepare().start()
    b = ServeProcess(tmp_path, pg_url, sink.port, name="b", sections=imap).start()
    engine = create_engine(pg_url)

    def tickets() -> int:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Ticket)).scalar_one())

    try:
        until(lambda: POLLS.search(a.text()) or POLLS.search(b.text()), timeout=20,
              what="one instance taking the mailbox")
        time.sleep(3)  # three of the other's retries: it must not get the lock too
        leaders = [s for s in (a, b) if POLLS.search(s.text())]
        assert len(leaders) == 1, "both instances poll the mailbox"
        assert _holders(pg_url, dovecot_server) == 1
        leader, standby = leaders[0], (b if leaders[0] is a else a)
        assert "polled by another instance" in standby.text()

        for i in range(10):
            dovecot_server.append(DEFAULT_USER, DEFAULT_PASSWORD, "INBOX",
                                  wire(make_mail("eva@site1234.example.be", f"IMAP {i}")))
        until(lambda: tickets() == 10, timeout=30, what="10 IMAP mails as tickets")
        assert dovecot_server.list_uids(DEFAULT_USER, DEFAULT_PASSWORD, "INBOX") == []

        leader.kill9()
        killed = time.monotonic()
        until(lambda: POLLS.search(standby.text()), timeout=60, interval=0.05,
              what="the standby taking over")
        takeover = time.monotonic() - killed
        for i in range(10, 15):
            dovecot_server.append(DEFAULT_USER, DEFAULT_PASSWORD, "INBOX",
                                  wire(make_mail("eva@site1234.example.be", f"IMAP {i}")))
        until(lambda: tickets() == 15, timeout=30, what="the mail after the takeover")
        assert _holders(pg_url, dovecot_server) == 1
    finally:
        a.stop()
        b.stop()
        engine.dispose()
    assert takeover < 60
    print(f"\nIMAP lock: one poller of two; taken over {takeover:.1f}s after kill -9 of the "
          "holder (leader_retry_seconds = 1)")


def test_the_polling_lock_has_one_holder_and_is_lost_with_its_connection(pg_url: str) -> None:
    """mailgate/inbound/leader.py on its own: one holder; a standby waits; a holder whose
    connection the server ends finds out at its next check."""
    engine = create_engine(pg_url)
    account = ImapAccount(name="desk", host="imap.example", username="desk",
                          leader_retry_seconds=0.1)
    first, second = Lead(engine, account), Lead(engine, account)
    try:
        assert first.acquire(threading.Event())
        gave_up = threading.Event()
        threading.Timer(0.5, gave_up.set).start()
        assert not second.acquire(gave_up)  # held elsewhere: waits until told to stop
        first.check()
        first.release()
        assert second.acquire(threading.Event())  # free again: taken at once
        key = lock_key(account) & 0xFFFF_FFFF_FFFF_FFFF
        with engine.connect() as conn:  # the server ends the holder's session
            conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND granted AND objsubid = 1 AND classid::bigint = :high "
                "AND objid::bigint = :low"), {"high": key >> 32, "low": key & 0xFFFF_FFFF})
        with pytest.raises(LeadLost):
            second.check()
        assert first.acquire(threading.Event())
    finally:
        first.release()
        second.release()
        engine.dispose()
