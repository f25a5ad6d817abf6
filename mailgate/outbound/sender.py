"""Delivers outbox rows through the relay or into a Maildir; retries with backoff.

A row is claimed with a short lease (its own small transaction), sent outside any
transaction, then marked. A crash between sending and marking resends the mail after the
lease ends: at-least-once, never zero times.
"""

from __future__ import annotations

import contextlib
import logging
import mailbox
import random
import re
import smtplib
import ssl
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import case, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.config import OutboundSettings
from mailgate.db.engine import core_transaction, transaction
from mailgate.db.models import Event, Outbox, Ticket
from mailgate.db.status import OutboxStatus
from mailgate.logs import event

log = logging.getLogger(__name__)
LEASE = timedelta(minutes=2)


class PermanentFailure(Exception):
    """The relay refused the mail for good (5xx); retrying will not help."""


# One mail for the transport: (envelope sender, recipients, the bytes).
Envelope = tuple[str, list[str], bytes]


class Transport(Protocol):
    def send_many(self, mails: Sequence[Envelope]) -> list[BaseException | None]:
        """Each mail's outcome in order (None: sent), up to and including the first that
        found the transport gone; the mails after it were not tried."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Several sends in a row (one relay connection for all of them)."""
        ...


class MaildirTransport:
    """The embedded default: mail lands in a Maildir an operator (or a test) can read."""

    def __init__(self, path: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.box = mailbox.Maildir(path, create=True)
        for sub in ("tmp", "new", "cur"):  # a bare directory left by hand is completed too
            (Path(path) / sub).mkdir(exist_ok=True)

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        self.box.add(raw)  # written to tmp/, then renamed into new/: atomic

    def send_many(self, mails: Sequence[Envelope]) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for sender, recipients, raw in mails:
            try:
                self.send(sender, recipients, raw)
            except OSError as exc:  # a full or missing disk: the rest wait too
                return [*out, exc]
            out.append(None)
        return out

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()


# A mail's outcome at the relay: the recipients it refused (the mail went to the others), or
# why it did not go.
Outcome = dict[str, tuple[int, bytes]] | BaseException


def _gone(outcome: object) -> bool:
    """The connection failed, not the mail (smtplib's exceptions are all OSErrors)."""
    return isinstance(outcome, smtplib.SMTPServerDisconnected) or (
        isinstance(outcome, OSError) and not isinstance(outcome, smtplib.SMTPException))


class _PipeliningSMTP(smtplib.SMTP):
    """smtplib's client, with RFC 2920 PIPELINING where the relay offers it (Postfix and Exim
    do by default): MAIL, every RCPT and DATA go out in one write and their answers are read
    together, and a mail's content goes out in the same write as the next mail's commands
    (RFC 2920 §3.1 allows the content first in a group): one round trip a mail instead of
    three plus one per recipient. The sender sends one mail after the other on one
    connection, so each round trip to a relay on another host is time every
    acknowledgement behind it waits. Outcomes are those of :meth:`smtplib.SMTP.sendmail`."""

    def transact_many(self, mails: Sequence[Envelope]) -> list[Outcome]:
        """Each mail's outcome, up to and including the first that lost the connection
        (the mails after it were not sent)."""
        try:
            self.ehlo_or_helo_if_needed()
        except OSError as exc:  # smtplib's exceptions included
            return [exc]
        if not self.does_esmtp or not self.has_extn("pipelining"):
            return self._one_by_one(mails)
        out: list[Outcome] = []
        carry = b""  # the content of the mail before, sent with this mail's commands
        carried: dict[str, tuple[int, bytes]] = {}
        for from_addr, to_addrs, msg in mails:
            try:
                commands = self._envelope(from_addr, to_addrs, len(msg))
            except ValueError as exc:
                commands = b""
                refusal: BaseException | None = exc
            else:
                refusal = None
            try:
                self.send(carry + commands)
                if carry:
                    out.append(self._content_answer(carried))
                    carry = b""
                    if self.sock is None:  # 421: this mail's commands went with it
                        return out
                if refusal is not None:
                    out.append(refusal)
                    continue
                mail = self.getreply()
                rcpts = [self.getreply() for _ in to_addrs]
                data = self.getreply()
            except OSError as exc:  # lost, or answers we cannot follow: nothing more here
                return [*out, exc]
            refused = {a: r for a, r in zip(to_addrs, rcpts, strict=True)
                       if r[0] not in (250, 251)}
            problem = self._problem(from_addr, to_addrs, mail, rcpts, data, refused)
            if problem is not None:
                try:
                    self._abandon(mail, rcpts, data)
                except OSError as exc:
                    return [*out, exc]
                out.append(problem)
                if self.sock is None:  # the relay said 421: it is closing
                    return out
                continue
            quoted = re.sub(rb"(?m)^\.", b"..", msg)
            if not quoted.endswith(b"\r\n"):
                quoted += b"\r\n"
            carry, carried = quoted + b".\r\n", refused
        if carry:
            try:
                self.send(carry)
                out.append(self._content_answer(carried))
            except OSError as exc:
                out.append(exc)
        return out

    def _one_by_one(self, mails: Sequence[Envelope]) -> list[Outcome]:
        out: list[Outcome] = []
        for from_addr, to_addrs, msg in mails:
            try:
                out.append(self.sendmail(from_addr, to_addrs, msg))
            except (OSError, ValueError) as exc:
                if _gone(exc):
                    return [*out, exc]
                out.append(exc)
            if self.sock is None:  # the relay said 421 and smtplib closed
                return out
        return out

    def _envelope(self, from_addr: str, to_addrs: Sequence[str], size: int) -> bytes:
        extra = f" SIZE={size}" if self.has_extn("size") else ""
        commands = [f"MAIL FROM:{smtplib.quoteaddr(from_addr)}{extra}",
                    *(f"RCPT TO:{smtplib.quoteaddr(a)}" for a in to_addrs), "DATA"]
        if any("\r" in c or "\n" in c for c in commands):  # as putcmd() refuses them
            raise ValueError("command arguments contain a newline")
        return "".join(c + "\r\n" for c in commands).encode("ascii")

    @staticmethod
    def _problem(from_addr: str, to_addrs: Sequence[str], mail: tuple[int, bytes],
                 rcpts: list[tuple[int, bytes]], data: tuple[int, bytes],
                 refused: dict[str, tuple[int, bytes]]) -> smtplib.SMTPException | None:
        if mail[0] != 250:
            return smtplib.SMTPSenderRefused(mail[0], mail[1], from_addr)
        if 421 in (r[0] for r in rcpts) or len(refused) == len(to_addrs):
            return smtplib.SMTPRecipientsRefused(refused)
        if data[0] != 354:
            return smtplib.SMTPDataError(data[0], data[1])
        return None

    def _abandon(self, mail: tuple[int, bytes], rcpts: list[tuple[int, bytes]],
                 data: tuple[int, bytes]) -> None:
        """Ends a refused mail's transaction: nothing of it is delivered."""
        if data[0] == 354:  # a relay that took DATA all the same: end it, send nothing
            self.send(b".\r\n")
            self.getreply()
        if 421 in (mail[0], data[0], *(r[0] for r in rcpts)):
            self.close()
        else:
            self._reset()

    def _content_answer(self, refused: dict[str, tuple[int, bytes]]) -> Outcome:
        # After the answer to the content the transaction is over, whatever it says (RFC
        # 5321 §4.1.1.4): no RSET, which would also come between the pipelined answers.
        code, reply = self.getreply()
        if code == 250:
            return refused
        if code == 421:
            self.close()
        return smtplib.SMTPDataError(code, reply)

    def _reset(self) -> None:
        # As smtplib after a refusal: a relay that hung up says so at the next command.
        with contextlib.suppress(smtplib.SMTPServerDisconnected):
            self.rset()


class RelayTransport:
    def __init__(self, settings: OutboundSettings) -> None:
        self.s = settings
        self._smtp: _PipeliningSMTP | None = None
        self._batching = False

    def _connect(self) -> _PipeliningSMTP:
        s = self.s
        smtp = _PipeliningSMTP(s.relay_host, s.relay_port, timeout=s.timeout_seconds)
        try:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.username:
                smtp.login(s.username, s.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._smtp.quit()
            self._smtp = None

    @contextmanager
    def batch(self) -> Iterator[None]:
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            self._drop()

    def _transact(self, mails: Sequence[Envelope]) -> list[Outcome]:
        reused = self._smtp is not None
        for attempt in (1, 2):
            try:
                if self._smtp is None:
                    self._smtp = self._connect()
            except OSError as exc:  # smtplib's exceptions included
                return [exc]
            outcomes = self._smtp.transact_many(mails)
            if not _gone(outcomes[-1]) and self._smtp.sock is not None:
                return outcomes
            self._drop()
            # The relay closed an idle connection we kept: once more on a fresh one.
            if not (reused and attempt == 1 and len(outcomes) == 1
                    and isinstance(outcomes[0], smtplib.SMTPServerDisconnected)):
                return outcomes
        return outcomes

    def send_many(self, mails: Sequence[Envelope]) -> list[BaseException | None]:
        try:
            outcomes = self._transact(mails)
        finally:
            if not self._batching:
                self._drop()
        return [_judged(o) for o in outcomes]

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        [outcome] = self.send_many([(sender, recipients, raw)])
        if outcome is not None:
            raise outcome


def _judged(outcome: Outcome) -> BaseException | None:
    """None if the mail went (to some recipients at least), else why not: a refusal for
    good is a PermanentFailure."""
    if isinstance(outcome, dict):
        if outcome:
            log.warning("relay refused some recipients: %s", outcome)
        return None
    if isinstance(outcome, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in outcome.recipients.values()]
        if all(500 <= c < 600 for c in codes):
            failure = PermanentFailure(f"recipients refused: {outcome.recipients}")
            failure.__cause__ = outcome
            return failure
    elif isinstance(outcome, smtplib.SMTPResponseException) and \
            500 <= outcome.smtp_code < 600 and outcome.smtp_code != 530:
        failure = PermanentFailure(f"{outcome.smtp_code} {outcome.smtp_error!r}")
        failure.__cause__ = outcome
        return failure
    return outcome


def make_transport(settings: OutboundSettings) -> Transport:
    return RelayTransport(settings) if settings.uses_relay else MaildirTransport(settings.maildir)


@dataclass(frozen=True)
class FlushResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def backoff(settings: OutboundSettings, attempts: int) -> timedelta:
    base = min(settings.retry_base_seconds * 2 ** max(0, attempts - 1), settings.retry_max_seconds)
    # Jitter keeps several instances from hammering a recovering relay in step.
    return timedelta(seconds=base * random.uniform(0.8, 1.0))


# A pass holds at most this much outgoing mail in memory (at least one mail, whatever its
# size): agents' answers relay attachments, and a pass of such mails would otherwise hold
# `limit` of them at once.
CLAIM_BYTES = 32 * 1024 * 1024


def _claim(factory: sessionmaker[Session], clock: Clock, limit: int,
           lease: timedelta = LEASE) -> list[Outbox]:
    now = clock.now()
    with transaction(factory) as session:
        due = session.execute(
            select(Outbox.id, func.length(Outbox.raw))
            .where(Outbox.status == OutboxStatus.PENDING, Outbox.next_attempt_at <= now,
                   or_(Outbox.lease_until.is_(None), Outbox.lease_until < now))
            # Oldest first among the due rows: after an outage the backlog leaves in the
            # order it was written (ids grow with creation).
            .order_by(Outbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)).all()
        ids: list[int] = []
        held = 0
        for row_id, size in due:
            if ids and held + (size or 0) > CLAIM_BYTES:
                break
            ids.append(row_id)
            held += size or 0
        rows = list(session.execute(
            select(Outbox).where(Outbox.id.in_(ids)).order_by(Outbox.id)).scalars()) \
            if ids else []
        for row in rows:
            row.lease_until = now + lease
        return rows


# While the relay is down (no connection, or 421: RFC 5321's "service not available"), a
# transport's flushes wait until the retry time of the row that found it down, and touch no
# other row: when the relay is back, the backlog leaves in the order it was written, oldest
# first, instead of in the order the rows' own backoffs happened to expire. A refusal of one
# mail (450/451/452, a recipient's 4xx) stays that row's own affair.
_relay_down_until: weakref.WeakKeyDictionary[Transport, datetime] = \
    weakref.WeakKeyDictionary()


def _relay_down(exc: BaseException) -> bool:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return False
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    return isinstance(exc, OSError | smtplib.SMTPServerDisconnected)


def flush(factory: sessionmaker[Session], clock: Clock, settings: OutboundSettings,
          transport: Transport, limit: int = 250) -> FlushResult:
    """Sends what is due, oldest first: up to ``limit`` mails and CLAIM_BYTES in one pass
    (a pass's claim and its last record wait for SQLite's one writer: the fewer passes, the
    less a drain waits)."""
    sent = retrying = failed = 0
    down_until = _relay_down_until.get(transport)
    if down_until is not None and clock.now() < down_until:
        return FlushResult()
    lease = timedelta(seconds=settings.lease_seconds)
    # Rows are sent only in the first half of their lease: past it, another pass or instance
    # may claim them while we still hold them (a slow relay, a long batch), and send twice.
    send_until = clock.now() + lease / 2
    rows = _claim(factory, clock, limit, lease)
    if not rows:
        return FlushResult()
    done: list[_Sent] = []
    # Outcomes are recorded beside the sending, one batch at a time: on SQLite the record
    # waits for the write lock (a worker's group of mails, up to ~0.15 s), and the relay
    # would otherwise wait with it (a third of the sender's time in a drain, py-spy).
    settler = ThreadPoolExecutor(1, thread_name_prefix="outbox-settle")
    recording: Future[list[OutboxStatus]] | None = None

    def recorded() -> None:
        nonlocal sent, retrying, failed, recording
        if recording is not None:
            results, recording = recording.result(), None
            for result in results:
                sent += result == OutboxStatus.SENT
                retrying += result == OutboxStatus.PENDING
                failed += result == OutboxStatus.FAILED

    def settle(last: bool = False) -> None:
        nonlocal done, recording
        if not last and recording is not None and not recording.done():
            # The record under way still waits for the lock: these go with the next one,
            # so sending never waits for a record (it did, 25 mails a lock wait: ~110
            # mails/s beside SQLite worker processes, bench/mix.py --drain).
            return
        recorded()  # one batch at a time, in order
        recording, done = settler.submit(_settle, factory, done), []

    try:
        with transport.batch():
            at = 0
            while at < len(rows):
                if clock.now() >= send_until:  # the rest go in the next pass, claimed afresh
                    _release(factory, [r.id for r in rows[at:]])
                    break
                window = rows[at:at + WINDOW]
                outcomes = transport.send_many(
                    [(r.sender, r.recipients.split(","), r.raw) for r in window])
                done += [_sent(clock, settings, row, outcome)
                         for row, outcome in zip(window, outcomes, strict=False)]
                at += len(outcomes)
                if done[-1].down:  # the relay is down: the rest wait, untouched
                    _relay_down_until[transport] = done[-1].retry_at
                    _release(factory, [r.id for r in rows[at:]])
                    break
                _relay_down_until.pop(transport, None)
                if len(done) >= SETTLE_EVERY or done[-1].at - done[0].at >= SETTLE_WITHIN:
                    settle()
    finally:
        try:
            if done:  # also when the pass ends early: what went out is recorded
                settle(last=True)
            recorded()
        finally:
            settler.shutdown(wait=True)
    return FlushResult(sent, retrying, failed)


def _release(factory: sessionmaker[Session], ids: list[int]) -> None:
    if ids:
        with transaction(factory) as session:
            session.execute(update(Outbox).where(Outbox.id.in_(ids)).values(lease_until=None))


# Outcomes are recorded for several rows in one transaction rather than one each: at most
# this many, and no later than this long after the first of them was sent (well inside the
# first half of the lease). A crash before that write resends them after the lease, as a
# crash between a send and its record always could: at-least-once.
SETTLE_EVERY = 25
# Mails handed to the transport at once: pipelined on one connection, each mail's content
# in the same write as the next one's commands.
WINDOW = 10
SETTLE_WITHIN = timedelta(seconds=0.5)


@dataclass(frozen=True)
class _Sent:
    """One row handed to the transport, and what came of it (not yet recorded)."""

    row: Outbox
    status: OutboxStatus
    error: str
    at: datetime
    retry_at: datetime
    down: bool  # the relay itself is down (not this mail refused)


def _sent(clock: Clock, settings: OutboundSettings, row: Outbox,
          outcome: BaseException | None) -> _Sent:
    error = ""
    status = OutboxStatus.SENT
    down = False
    if isinstance(outcome, PermanentFailure):
        status, error = OutboxStatus.FAILED, str(outcome)
    elif outcome is not None:
        status, error = OutboxStatus.PENDING, f"{type(outcome).__name__}: {outcome}"
        down = _relay_down(outcome)
    now = clock.now()
    return _Sent(row, status, error, now, now + backoff(settings, row.attempts + 1), down)


def _settle(factory: sessionmaker[Session], done: list[_Sent]) -> list[OutboxStatus]:
    """Records the outcomes of several sends in one transaction; returns each row's new
    status."""
    statuses: list[OutboxStatus] = []
    events: list[dict[str, Any]] = []
    with core_transaction(factory) as conn:
        # The common case, sent, is one statement for all: RETURNING names the rows that
        # were still ours.
        sent_at = {d.row.id: d.at for d in done if d.status == OutboxStatus.SENT}
        still_ours = set(conn.execute(
            update(Outbox).where(Outbox.id.in_(sent_at), Outbox.status == OutboxStatus.PENDING)
            .values(status=OutboxStatus.SENT, lease_until=None, attempts=Outbox.attempts + 1,
                    last_error="", sent_at=case(
                        {oid: literal(at, Outbox.sent_at.type) for oid, at in sent_at.items()},
                        value=Outbox.id))
            .returning(Outbox.id)).scalars()) if sent_at else set()
        for d in done:
            if d.status == OutboxStatus.SENT:
                statuses.append(d.status if d.row.id in still_ours else OutboxStatus.FAILED)
                if d.row.id in still_ours:
                    events.append({"at": d.at, "kind": f"outbox.{d.status}",
                                   "ticket_id": d.row.ticket_id, "inbound_id": None,
                                   "outbox_id": d.row.id, "detail": {}})
                continue
            values: dict[str, object] = {"status": d.status, "lease_until": None,
                                         "attempts": Outbox.attempts + 1,
                                         "last_error": d.error}
            if d.status == OutboxStatus.PENDING:
                values["next_attempt_at"] = d.retry_at
            # Only a row still ours to settle: a bounce may already have marked it failed
            # while we were talking to the relay, and that verdict must stand.
            result = conn.execute(update(Outbox).where(
                Outbox.id == d.row.id, Outbox.status == OutboxStatus.PENDING).values(**values))
            if not result.rowcount:
                statuses.append(OutboxStatus.FAILED)
                continue
            statuses.append(d.status)
            if d.status != OutboxStatus.PENDING:
                events.append({"at": d.at, "kind": f"outbox.{d.status}",
                               "ticket_id": d.row.ticket_id, "inbound_id": None,
                               "outbox_id": d.row.id,
                               "detail": {"error": d.error} if d.error else {}})
        if events:
            conn.execute(insert(Event), events)
        # The tickets' references for the log lines: one look for all, not one a row.
        ids = {d.row.ticket_id for d in done if d.row.ticket_id}
        refs = dict(conn.execute(select(Ticket.id, Ticket.ref).where(
            Ticket.id.in_(ids))).all()) if ids else {}
    for d, status in zip(done, statuses, strict=True):
        if status != d.status:
            continue  # settled meanwhile by a bounce: that verdict stands, no line of ours
        # One line per row settled: sent, retrying ("pending", with the next try), failed.
        event(log, {OutboxStatus.SENT: "outbox sent", OutboxStatus.PENDING: "outbox will retry",
                    OutboxStatus.FAILED: "outbox failed for good"}[status],
              level={OutboxStatus.SENT: logging.INFO, OutboxStatus.PENDING: logging.WARNING,
                     OutboxStatus.FAILED: logging.ERROR}[status],
              outbox=d.row.id, ticket=refs.get(d.row.ticket_id) if d.row.ticket_id else None,
              kind=d.row.kind, outcome=str(status), to=d.row.recipients,
              attempts=d.row.attempts + 1, error=d.error or None)
    return statuses


def retry(session: Session, clock: Clock, outbox_id: int | None = None) -> int:
    """Make failed (or waiting) rows due now; `mailgate outbox retry`."""
    stmt = update(Outbox).where(Outbox.status.in_((OutboxStatus.FAILED, OutboxStatus.PENDING)),
                                # emptied by retention (tickets/retention.py): nothing to send
                                func.length(Outbox.raw) > 0)
    if outbox_id is not None:
        stmt = stmt.where(Outbox.id == outbox_id)
    result = session.execute(stmt.values(status=OutboxStatus.PENDING, next_attempt_at=clock.now(),
                                         lease_until=None))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
