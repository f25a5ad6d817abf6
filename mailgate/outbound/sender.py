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


class Transport(Protocol):
    def send(self, sender: str, recipients: list[str], raw: bytes) -> None: ...

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

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()


class _PipeliningSMTP(smtplib.SMTP):
    """smtplib's client, with RFC 2920 PIPELINING where the relay offers it (Postfix and Exim
    do by default): MAIL, every RCPT and DATA go out in one write and their answers are read
    together, then the content: two round trips a mail instead of three plus one per
    recipient. The sender sends one mail after the other on one connection, so each round
    trip to a relay on another host is time every acknowledgement behind it waits.
    Outcomes and exceptions are those of :meth:`smtplib.SMTP.sendmail`."""

    def transact(self, from_addr: str, to_addrs: Sequence[str], msg: bytes
                 ) -> dict[str, tuple[int, bytes]]:
        self.ehlo_or_helo_if_needed()
        if not self.does_esmtp or not self.has_extn("pipelining"):
            return self.sendmail(from_addr, list(to_addrs), msg)
        size = f" SIZE={len(msg)}" if self.has_extn("size") else ""
        commands = [f"MAIL FROM:{smtplib.quoteaddr(from_addr)}{size}",
                    *(f"RCPT TO:{smtplib.quoteaddr(a)}" for a in to_addrs), "DATA"]
        if any("\r" in c or "\n" in c for c in commands):  # as putcmd() refuses them
            raise ValueError("command arguments contain a newline")
        self.send("".join(c + "\r\n" for c in commands))
        mail = self.getreply()
        rcpts = [self.getreply() for _ in to_addrs]
        data = self.getreply()
        refused = {a: r for a, r in zip(to_addrs, rcpts, strict=True) if r[0] not in (250, 251)}
        problem: smtplib.SMTPException | None = None
        if mail[0] != 250:
            problem = smtplib.SMTPSenderRefused(mail[0], mail[1], from_addr)
        elif 421 in (r[0] for r in rcpts) or len(refused) == len(to_addrs):
            problem = smtplib.SMTPRecipientsRefused(refused)
        elif data[0] != 354:
            problem = smtplib.SMTPDataError(data[0], data[1])
        if problem is not None:
            if data[0] == 354:  # a relay that took DATA all the same: end it, send nothing
                self.send(b".\r\n")
                self.getreply()
            if 421 in (mail[0], data[0], *(r[0] for r in rcpts)):
                self.close()
            else:
                self._reset()
            raise problem
        quoted = re.sub(rb"(?m)^\.", b"..", msg)
        if not quoted.endswith(b"\r\n"):
            quoted += b"\r\n"
        self.send(quoted + b".\r\n")
        code, reply = self.getreply()
        if code != 250:
            if code == 421:
                self.close()
            else:
                self._reset()
            raise smtplib.SMTPDataError(code, reply)
        return refused

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

    def _sendmail(self, sender: str, recipients: list[str], raw: bytes) -> dict[str, Any]:
        reused = self._smtp is not None
        if self._smtp is None:
            self._smtp = self._connect()
        try:
            return self._smtp.transact(sender, recipients, raw)
        except smtplib.SMTPServerDisconnected:
            self._smtp = None
            if not reused:
                raise
            # The relay closed an idle connection we kept: once more on a fresh one.
            self._smtp = self._connect()
            return self._smtp.transact(sender, recipients, raw)
        except smtplib.SMTPResponseException:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._smtp.rset()
            raise
        except OSError:
            self._smtp = None
            raise

    def send(self, sender: str, recipients: list[str], raw: bytes) -> None:
        try:
            try:
                refused = self._sendmail(sender, recipients, raw)
            finally:
                if not self._batching:
                    self._drop()
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _msg in exc.recipients.values()]
            if all(500 <= c < 600 for c in codes):
                raise PermanentFailure(f"recipients refused: {exc.recipients}") from exc
            raise
        except smtplib.SMTPResponseException as exc:
            if 500 <= exc.smtp_code < 600 and exc.smtp_code != 530:
                raise PermanentFailure(f"{exc.smtp_code} {exc.smtp_error!r}") from exc
            raise
        if refused:
            log.warning("relay refused some recipients: %s", refused)


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

    def settle() -> None:
        nonlocal done, recording
        recorded()  # one batch at a time, in order
        recording, done = settler.submit(_settle, factory, done), []

    try:
        with transport.batch():
            for i, row in enumerate(rows):
                if clock.now() >= send_until:  # the rest go in the next pass, claimed afresh
                    _release(factory, [r.id for r in rows[i:]])
                    break
                done.append(_send(clock, settings, transport, row))
                if done[-1].down:  # the relay is down: the rest wait, untouched
                    _relay_down_until[transport] = done[-1].retry_at
                    _release(factory, [r.id for r in rows[i + 1:]])
                    break
                _relay_down_until.pop(transport, None)
                if len(done) >= SETTLE_EVERY or done[-1].at - done[0].at >= SETTLE_WITHIN:
                    settle()
    finally:
        try:
            if done:  # also when the pass ends early: what went out is recorded
                settle()
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


def _send(clock: Clock, settings: OutboundSettings, transport: Transport,
          row: Outbox) -> _Sent:
    error = ""
    status = OutboxStatus.SENT
    down = False
    try:
        transport.send(row.sender, row.recipients.split(","), row.raw)
    except PermanentFailure as exc:
        status, error = OutboxStatus.FAILED, str(exc)
    except (TimeoutError, OSError, smtplib.SMTPException) as exc:
        status, error = OutboxStatus.PENDING, f"{type(exc).__name__}: {exc}"
        down = _relay_down(exc)
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
