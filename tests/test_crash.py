"""Crash safety (issue 11, item 6): `kill -9` of the real daemon in the middle of a blast.

Mail comes in over six SMTP connections; once a good part of it got `250`, the daemon is
killed with SIGKILL (no drain, no last flush) and started again on the same database. Then:

- every mail that got `250` is one inbound row in exactly one ticket (store first: the 250
  came after the commit);
- every such mail got its acknowledgement exactly once, or — for outbox rows the sender had
  claimed (leased) when it was killed, sent but not yet marked — at most twice, with the
  same Message-ID both times, so the editor's mail client shows one mail. The test prints
  how many were doubled.

`[outbound] lease_seconds` is 3 here (120 by default): a row leased by the killed sender is
sent again once its lease ends, which would otherwise make the test wait two minutes.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, func, select

from mailgate.db.models import Inbound, Outbox, Ticket
from mailgate.db.status import InboundStatus, OutboxStatus
from tests.support.serve import Blast, ServeProcess, request
from tests.support.sink import SinkHandler, SmtpSink, free_port
from tests.support.wait import until

MAILS = 600
CONNECTIONS = 6
PACE = 0.1  # seconds between two mails of one connection: ~60 mails/s, the worker keeps up
KILL_AFTER = 150  # accepted mails before the kill, and then at a moment the sender is busy
RELAY_DELAY = 0.02  # the relay takes 20 ms per mail, so the sender's passes last a while


class SlowRelay(SinkHandler):
    """A relay that takes its time: rows stay claimed while earlier ones are sent."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(RELAY_DELAY)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow_sink() -> Iterator[SmtpSink]:
    s = SmtpSink()
    s.handler = SlowRelay()
    s.controller = Controller(s.handler, hostname="127.0.0.1", port=free_port())
    s.start()
    yield s
    s.stop()


@pytest.mark.timeout(150)
def test_kill_9_mid_blast_loses_no_mail_and_doubles_no_ticket(
        tmp_path: Path, database_url: str, slow_sink: SmtpSink) -> None:
    sink = slow_sink
    serve = ServeProcess(tmp_path, database_url, sink.port).prepare().start()
    engine = create_engine(database_url)
    try:
        blast = Blast([serve.port], [request(n, "crash") for n in range(MAILS)], pace=PACE)
        threads = blast.run(CONNECTIONS)
        until(lambda: len(blast.accepted) >= KILL_AFTER, timeout=60, interval=0.005,
              what=f"{KILL_AFTER} mails accepted")

        def sender_busy() -> bool:
            with engine.connect() as conn:
                return bool(conn.execute(select(func.count()).select_from(Outbox).where(
                    Outbox.status == OutboxStatus.PENDING, Outbox.lease_until.is_not(None))
                ).scalar_one())
        # The worst moment: the sender holds claimed rows, some sent, none marked yet.
        until(sender_busy, timeout=30, interval=0.01, what="the sender holding rows")
        serve.kill9()
        killed_at = time.monotonic()
        blast.stop.set()
        for t in threads:
            t.join(30)
        accepted = set(blast.accepted)
        with engine.connect() as conn:
            # What the dead sender held: claimed, maybe sent, not marked.
            in_flight = conn.execute(select(func.count()).select_from(Outbox).where(
                Outbox.status == OutboxStatus.PENDING, Outbox.lease_until.is_not(None))
            ).scalar_one()
            pending_at_kill = conn.execute(select(func.count()).select_from(Inbound).where(
                Inbound.status == InboundStatus.PENDING)).scalar_one()
        acks_at_kill = len(sink.messages)

        serve.start()

        def settled() -> bool:
            with engine.connect() as conn:
                pending_in = conn.execute(select(func.count()).select_from(Inbound).where(
                    Inbound.status == InboundStatus.PENDING)).scalar_one()
                pending_out = conn.execute(select(func.count()).select_from(Outbox).where(
                    Outbox.status != OutboxStatus.SENT)).scalar_one()
            return pending_in == 0 and pending_out == 0
        until(settled, timeout=90, interval=0.2, what="every mail processed and sent")
        recovered = time.monotonic() - killed_at
        serve.stop()

        with engine.connect() as conn:
            rows = conn.execute(select(Inbound.message_id, Inbound.status, Inbound.ticket_id)
                                ).all()
            tickets = conn.execute(select(func.count()).select_from(Ticket)).scalar_one()
            quarantined = conn.execute(select(Inbound.message_id, Inbound.reason).where(
                Inbound.status == InboundStatus.QUARANTINED)).all()
            acks = conn.execute(select(Outbox.message_id).where(Outbox.kind == "ack")
                                ).scalars().all()
    finally:
        serve.stop()
        engine.dispose()

    assert not quarantined, (quarantined[:3], serve.tail(80))
    by_mid: dict[str, list[tuple[str, int | None]]] = defaultdict(list)
    for mid, status, ticket_id in rows:
        by_mid[mid].append((status, ticket_id))
    # Every 250 is one row, made into one ticket of its own.
    assert accepted <= set(by_mid), sorted(accepted - set(by_mid))[:5]
    for mid in accepted:
        assert len(by_mid[mid]) == 1, (mid, by_mid[mid])
        status, ticket_id = by_mid[mid][0]
        assert status == InboundStatus.TICKET and ticket_id is not None, (mid, status)
    ticket_ids = [t for _mid, _status, t in rows]
    assert len(set(ticket_ids)) == len(ticket_ids) == tickets  # no mail in two, none doubled
    assert len(acks) == len(set(acks)) == len(rows)  # one acknowledgement row per ticket

    # What the editor's mail server got: per request, one ack — two only for rows in flight.
    received: dict[str, list[str]] = defaultdict(list)
    for msg in sink.messages:
        received[str(msg["In-Reply-To"])].append(str(msg["Message-ID"]))
    doubled = 0
    for mid in {mid for mid, _s, _t in rows}:
        ids = received.get(mid, [])
        assert 1 <= len(ids) <= 2, (mid, ids)
        if len(ids) == 2:
            assert ids[0] == ids[1], ids  # the same mail again, not a second answer
            doubled += 1
    assert doubled <= in_flight
    print(f"\n{database_url.split(':')[0]}: {len(accepted)} of {MAILS} accepted before the "
          f"kill, {len(rows)} stored ({len(rows) - len(accepted)} committed without the 250 "
          f"read); at the kill {pending_at_kill} mails pending, {acks_at_kill} acks sent, "
          f"{in_flight} outbox rows in flight; acknowledgements doubled: {doubled} "
          f"(same Message-ID); all settled {recovered:.1f}s after the kill")
