"""Dependency outages (issue 11, item 7), on the real `serve` process.

- **The relay** refusing everything with `421` (RFC 5321's "service not available", what a
  Postfix under trouble answers), then gone altogether (its port closed): the
  acknowledgements wait in the outbox, nothing is lost or marked failed, and when the relay is
  back they all go out, oldest first. "Down for minutes" is scaled to seconds here with
  `[outbound] retry_base_seconds = 0.2`, `retry_max_seconds = 1`; with the shipped 4 s / 300 s
  the backlog leaves at most five minutes after the relay returns.
- **PostgreSQL stopped** mid-run — a private cluster this test starts with `initdb`/`pg_ctl`
  (tests/support/pgcluster.py), never the machine's shared one: the SMTP listener answers
  `451`, `mailgate deliver` exits 75, the IMAP poller leaves the mail in its folder; once the
  server is back every mail is processed (tickets and acknowledgements), without a restart
  of the daemon.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine

from mailgate.db.models import Inbound, Outbox, Ticket
from mailgate.db.status import InboundStatus, OutboxStatus
from tests.support.desk import DESK, EDITOR
from tests.support.dovecot import DEFAULT_PASSWORD, DEFAULT_USER, DovecotServer
from tests.support.mails import make_mail, wire
from tests.support.pgcluster import PgCluster, pg_cluster  # noqa: F401 (a fixture)
from tests.support.serve import REPO, ServeProcess, request
from tests.support.sink import SinkHandler, SmtpSink, free_port
from tests.support.wait import until


class SwitchRelay(SinkHandler):
    """The sink, with a refusal to give every mail while `refuse` is set."""

    refuse = ""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refuse:
            return self.refuse
        return await super().handle_DATA(server, session, envelope)


class Relay(SmtpSink):
    """A relay that can refuse, go away (port closed) and come back on the same port."""

    def __init__(self) -> None:
        self.handler = SwitchRelay()
        self._port = free_port()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self._port)

    @property
    def port(self) -> int:
        return self._port

    def down(self) -> None:
        self.controller.stop()

    def up(self) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self._port)
        self.controller.start()


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay()
    r.start()
    yield r
    r.controller.stop()


def _count(engine: Engine, stmt: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())  # type: ignore[call-overload]


def _processed(engine: Engine) -> int:
    return _count(engine, select(func.count()).select_from(Inbound).where(
        Inbound.status != InboundStatus.PENDING))


def _send_all(port: int, mails: list[tuple[str, bytes]]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as smtp:
        for _mid, raw in mails:
            smtp.sendmail(EDITOR, [DESK], raw)


def _acks_in_order(engine: Engine, first_id: int) -> list[str]:
    """The Message-IDs of the acknowledgements written from outbox row `first_id` on, in
    the order they were written."""
    with engine.connect() as conn:
        return list(conn.execute(select(Outbox.message_id).where(Outbox.id >= first_id)
                                 .order_by(Outbox.id)).scalars())


@pytest.mark.timeout(120)
def test_acks_wait_for_the_relay_and_leave_oldest_first(
        tmp_path: Path, database_url: str, relay: Relay) -> None:
    serve = ServeProcess(tmp_path, database_url, relay.port).prepare().start()
    engine = create_engine(database_url)
    try:
        _send_all(serve.port, [request(0, "warm")])
        relay.wait_for(1, timeout=20)
        seen = 1
        for phase, cut, restore in (
                ("refusing (421)", lambda: setattr(relay.handler, "refuse",
                                                   "421 4.3.2 service not available"),
                 lambda: setattr(relay.handler, "refuse", "")),
                ("down (port closed)", relay.down, relay.up)):
            first_row = _count(engine, select(func.coalesce(func.max(Outbox.id), 0))) + 1
            cut()
            mails = [request(n, f"outage{seen}") for n in range(20)]
            _send_all(serve.port, mails)
            expected = seen + len(mails)
            until(lambda: _processed(engine) == expected,  # noqa: B023 (used at once)
                  timeout=30, what="the mails made into tickets")
            time.sleep(3)  # several retry rounds of the outbox against the dead relay
            waiting = _count(engine, select(func.count()).select_from(Outbox).where(
                Outbox.status == OutboxStatus.PENDING))
            tried = _count(engine, select(func.coalesce(func.max(Outbox.attempts), 0)))
            assert len(relay.messages) == seen, "an ack passed a relay that was out"
            assert waiting == len(mails) and tried >= 1, (waiting, tried)
            restored = time.monotonic()
            restore()
            got = relay.wait_for(seen + len(mails), timeout=30)
            took = time.monotonic() - restored
            order = [str(m["Message-ID"]) for m in got[seen:]]
            assert order == _acks_in_order(engine, first_row), f"{phase}: not oldest first"
            assert sorted(str(m["In-Reply-To"]) for m in got[seen:]) == \
                sorted(mid for mid, _raw in mails)
            print(f"\nrelay {phase}: {len(mails)} acks waited ({tried} tries of the oldest), "
                  f"all out {took:.1f}s after it came back, oldest first")
            seen += len(mails)
        assert _count(engine, select(func.count()).select_from(Outbox).where(
            Outbox.status == OutboxStatus.FAILED)) == 0
    finally:
        serve.stop()
        engine.dispose()


def _deliver(config: Path, mail: EmailMessage) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailgate", "--config", str(config), "deliver",
         "-f", EDITOR, "-r", DESK], input=wire(mail), capture_output=True, timeout=60,
        cwd=REPO, check=False)


@pytest.mark.timeout(150)
def test_postgresql_stopped_mid_run(tmp_path: Path, pg_cluster: PgCluster,  # noqa: F811
                                    sink: SmtpSink, dovecot_server: DovecotServer) -> None:
    url = pg_cluster.create_database("mailgate")
    imap = {"[[imap]]": "\n".join([
        'name = "desk"', f'host = "{dovecot_server.host}"', f"port = {dovecot_server.port}",
        "ssl = false", f'username = "{DEFAULT_USER}"', f'password = "{DEFAULT_PASSWORD}"',
        "poll_interval = 1", "timeout_seconds = 5", "leader_retry_seconds = 1"])}
    serve = ServeProcess(tmp_path, url, sink.port, sections=imap).prepare().start()
    engine = create_engine(url, pool_pre_ping=True)  # its connections die with the server
    try:
        _send_all(serve.port, [request(n, "before") for n in range(3)])
        sink.wait_for(3, timeout=30)
        # Marked sent too: an ack sent but not yet marked when the server goes would be
        # sent again (at-least-once, tests/test_crash.py), not what this test looks at.
        until(lambda: _count(engine, select(func.count()).select_from(Outbox).where(
            Outbox.status != OutboxStatus.SENT)) == 0, what="the first acks marked sent")

        pg_cluster.stop("fast")
        stopped = time.monotonic()
        # SMTP: 451, the sending MTA keeps the mail and retries.
        mid, raw = request(0, "during")
        with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as smtp, \
                pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(EDITOR, [DESK], raw)
        assert refused.value.smtp_code == 451, refused.value
        # The pipe: exit 75 (EX_TEMPFAIL), Postfix keeps it queued.
        piped = make_mail(EDITOR, "Site 1234: through the pipe while the database is down")
        result = _deliver(serve.config, piped)
        assert result.returncode == 75, result.stderr.decode()
        # IMAP: the mail stays where it is, untouched.
        for i in range(3):
            dovecot_server.append(DEFAULT_USER, DEFAULT_PASSWORD, "INBOX",
                                  wire(make_mail(EDITOR, f"Site 1234: IMAP during {i}")))
        time.sleep(3)
        assert len(dovecot_server.list_uids(DEFAULT_USER, DEFAULT_PASSWORD, "INBOX")) == 3
        assert serve.alive, serve.tail()
        down_for = time.monotonic() - stopped

        pg_cluster.start()
        # What the MTAs do next: retry.
        _send_all(serve.port, [(mid, raw)])
        assert _deliver(serve.config, piped).returncode == 0
        until(lambda: not dovecot_server.list_uids(DEFAULT_USER, DEFAULT_PASSWORD, "INBOX"),
              timeout=60, what="the IMAP mail taken after the database came back")
        total = 3 + 1 + 1 + 3
        sink.wait_for(total, timeout=60)
        tickets = _count(engine, select(func.count()).select_from(Ticket))
        statuses = {row for row in _statuses(engine)}
    finally:
        serve.stop()
        engine.dispose()
    assert tickets == total and statuses == {InboundStatus.TICKET}
    answered = sorted(str(m["In-Reply-To"]) for m in sink.messages)
    assert len(answered) == len(set(answered)) == total, answered  # one ack each
    print(f"\nPostgreSQL down {down_for:.1f}s: SMTP 451, deliver 75, IMAP mail left in place; "
          f"after it came back {total} tickets and {total} acks")


def _statuses(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(select(Inbound.status)).scalars())
