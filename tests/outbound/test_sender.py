"""The sender against a real SMTP sink: retry with backoff, permanent failure, Maildir."""

from __future__ import annotations

import contextlib
import mailbox
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.db.engine import transaction
from mailgate.db.models import Outbox
from mailgate.outbound import sender
from mailgate.outbound.compose import Outgoing
from mailgate.outbound.outbox import enqueue
from tests.support.sink import SmtpSink


def _enqueue(app: App, to: str = "eva@site1234.example.be") -> int:
    with transaction(app.sessions) as session:
        row = enqueue(session, Outgoing(
            from_name="Desk", from_addr="servicedesk@desk.example", to=(to,),
            subject="[SD-1] Test", body="Hallo", message_id=app.desk.ids.make(None),
            date=app.clock.now()), "ack", ticket_id=None, inbound_id=None)
    return row.id  # given at the commit's flush (enqueue writes nothing by itself)


def _row(app: App, row_id: int) -> Outbox:
    with app.sessions() as s:
        return s.execute(select(Outbox).where(Outbox.id == row_id)).scalar_one()


def test_relay_trouble_is_retried_with_growing_backoff(app: App, sink: SmtpSink) -> None:
    clock = FixedClock(app.clock.now())
    app.clock = clock
    row_id = _enqueue(app)
    sink.handler.fail_with = ["451 4.3.0 try later", "421 4.4.2 busy"]
    s = app.settings.outbound
    first = sender.flush(app.sessions, clock, s, app.transport)
    assert (first.sent, first.retrying) == (0, 1)
    row = _row(app, row_id)
    assert row.status == "pending" and row.attempts == 1 and "451" in row.last_error
    delay1 = row.next_attempt_at - clock.now()
    # Not due yet: nothing is sent early.
    assert sender.flush(app.sessions, clock, s, app.transport).retrying == 0
    clock.at += delay1 + timedelta(milliseconds=1)
    sender.flush(app.sessions, clock, s, app.transport)
    row = _row(app, row_id)
    delay2 = row.next_attempt_at - clock.now()
    assert row.attempts == 2 and delay2 > delay1
    assert delay2 <= timedelta(seconds=s.retry_max_seconds)
    clock.at += delay2 + timedelta(milliseconds=1)
    assert sender.flush(app.sessions, clock, s, app.transport).sent == 1
    assert _row(app, row_id).status == "sent"
    assert len(sink.wait_for(1)) == 1


def test_backoff_is_capped() -> None:
    from mailgate.config import OutboundSettings
    s = OutboundSettings(maildir="x", retry_base_seconds=4, retry_max_seconds=300)
    assert sender.backoff(s, 1) <= timedelta(seconds=4)
    assert sender.backoff(s, 1) >= timedelta(seconds=3.2)
    assert sender.backoff(s, 30) <= timedelta(seconds=300)
    assert sender.backoff(s, 30) >= timedelta(seconds=240)


def test_permanent_refusal_marks_failed_and_retry_brings_it_back(
        app: App, sink: SmtpSink) -> None:
    row_id = _enqueue(app)
    sink.handler.fail_with = ["554 5.7.1 rejected"]
    result = sender.flush(app.sessions, app.clock, app.settings.outbound, app.transport)
    assert result.failed == 1
    row = _row(app, row_id)
    assert row.status == "failed" and "554" in row.last_error
    with transaction(app.sessions) as session:
        assert sender.retry(session, app.clock, row_id) == 1
    assert sender.flush(app.sessions, app.clock, app.settings.outbound, app.transport).sent == 1


def test_relay_unreachable_keeps_the_row(app: App, make_settings) -> None:  # type: ignore[no-untyped-def]
    from tests.support.sink import free_port
    settings = make_settings(outbound={"relay_port": free_port()})
    other = App(settings)
    row_id = _enqueue(other)
    result = sender.flush(other.sessions, other.clock, settings.outbound, other.transport)
    assert result.retrying == 1
    row = _row(other, row_id)
    assert row.status == "pending" and "Connection refused" in row.last_error
    other.close()


def test_maildir_transport(app: App, tmp_path: Path) -> None:
    transport = sender.MaildirTransport(str(tmp_path / "md"))
    _enqueue(app)
    assert sender.flush(app.sessions, app.clock, app.settings.outbound, transport).sent == 1
    [msg] = list(mailbox.Maildir(str(tmp_path / "md")))
    assert msg["Subject"] == "[SD-1] Test"


def test_a_bounce_recorded_during_sending_is_not_overwritten(app: App) -> None:
    row_id = _enqueue(app)

    class BouncedMeanwhile:
        """The relay accepts, and the bounce is processed before we record the send."""

        def send_many(self, mails: list[sender.Envelope]) -> list[BaseException | None]:
            with transaction(app.sessions) as s:
                s.execute(update(Outbox).where(Outbox.id == row_id)
                          .values(status="failed", dsn_status="5.1.1"))
            return [None] * len(mails)

        def batch(self) -> contextlib.AbstractContextManager[None]:
            return contextlib.nullcontext()

    result = sender.flush(app.sessions, app.clock, app.settings.outbound, BouncedMeanwhile())
    assert (result.sent, result.failed) == (0, 1)
    row = _row(app, row_id)
    assert row.status == "failed" and row.dsn_status == "5.1.1"


def test_a_pass_holds_a_bounded_amount_of_mail(app: App, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """Up to CLAIM_BYTES of outgoing mail per pass, oldest first; at least one mail, even
    one bigger than that; the rest stays due for the next pass."""
    ids = [_enqueue(app) for _ in range(4)]
    size = len(_row(app, ids[0]).raw)
    monkeypatch.setattr(sender, "CLAIM_BYTES", 2 * size + size // 2)
    assert [r.id for r in sender._claim(app.sessions, app.clock, 100)] == ids[:2]
    monkeypatch.setattr(sender, "CLAIM_BYTES", size // 2)
    assert [r.id for r in sender._claim(app.sessions, app.clock, 100)] == ids[2:3]
    with app.sessions() as s:
        leased = {o.id for o in s.execute(select(Outbox).where(
            Outbox.lease_until.is_not(None))).scalars()}
    assert leased == set(ids[:3])


class _Counting:
    """The transport, one mail at a time (the count is of mails that went); sets ``event``
    once ``at`` mails went."""

    def __init__(self, inner: sender.Transport, at: int, event: threading.Event) -> None:
        self.inner, self.at, self.event, self.count = inner, at, event, 0

    def send_many(self, mails: list[sender.Envelope]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for mail in mails:
            outcomes += self.inner.send_many([mail])
            self.count += 1
            if self.count == self.at:
                self.event.set()
        return outcomes

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return self.inner.batch()


def test_outcomes_are_recorded_while_the_next_mails_go_out(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of the first mails waits (on SQLite, for the worker's write lock); the
    mails after them do not wait with it."""
    ids = [_enqueue(app) for _ in range(60)]
    later = threading.Event()  # a mail went after the first record was due
    overlapped: list[bool] = []
    real_settle = sender._settle

    def slow_settle(factory: Any, done: Any) -> Any:
        if not overlapped:
            assert len(done) < 45
            overlapped.append(later.wait(10))
        return real_settle(factory, done)

    monkeypatch.setattr(sender, "_settle", slow_settle)
    result = sender.flush(app.sessions, app.clock, app.settings.outbound,
                          _Counting(app.transport, 45, later))
    assert result.sent == 60 and overlapped == [True]
    assert {_row(app, i).status for i in ids} == {"sent"}


def test_a_waiting_record_never_holds_up_the_sending(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the first record waits for the lock, every other mail of the pass goes out;
    what went meanwhile is recorded in one more transaction, not one per 25 mails."""
    ids = [_enqueue(app) for _ in range(120)]
    all_sent = threading.Event()
    batches: list[int] = []
    real_settle = sender._settle

    def slow_settle(factory: Any, done: Any) -> Any:
        if not batches:
            assert all_sent.wait(10), "the sending waited for the first record"
        batches.append(len(done))
        return real_settle(factory, done)

    monkeypatch.setattr(sender, "_settle", slow_settle)
    result = sender.flush(app.sessions, app.clock, app.settings.outbound,
                          _Counting(app.transport, len(ids), all_sent))
    assert result.sent == 120
    # The first record is due after SETTLE_EVERY mails (whole windows of them).
    assert sender.SETTLE_EVERY <= batches[0] < sender.SETTLE_EVERY + sender.WINDOW
    assert len(batches) == 2 and sum(batches) == 120
    assert {_row(app, i).status for i in ids} == {"sent"}
