"""The SMTP way in (aiosmtpd). SMTP status strings live here and nowhere else.

Store first: ``250`` is said only after the raw message is committed; if storage is
down the client hears ``451`` and keeps the mail in its queue.

Stopping (:class:`Listener`): once the daemon drains, a new connection is greeted with
``421`` and closed, and a session already open hears ``421`` to its next ``MAIL``; a
transaction under way (``MAIL`` given, ``DATA`` in progress or waiting for its commit)
finishes and gets its ``250``. So every mail is either stored and answered ``250`` or
refused with a 4xx that the client's queue retries: none is half taken.

Hostile or broken clients (tests/inbound/test_smtp_hostile.py): more sessions than
``[smtp] max_connections`` hear ``421`` at once; a client that takes longer than
``timeout_seconds`` for a command, or for the whole DATA of a mail, hears ``421`` and is
cut, and a DATA cut short stores nothing; lines up to ``max_line_length`` are taken (RFC 5322
says 998, but a script that does not fold must not lose its request to a permanent 500) and
the mail is stored as it came; with ``tls_cert``/``tls_key`` STARTTLS is offered, and
``require_tls`` refuses MAIL before it (``530 5.7.0``).
"""

from __future__ import annotations

import asyncio
import io
import logging
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.config import SmtpSettings
from mailgate.db.engine import StorageUnavailable
from mailgate.inbound.store import Stored
from mailgate.mail.addresses import is_valid_address, normalize

log = logging.getLogger(__name__)

# RFC 5321 §3.8: a server that shuts down answers 421 (4.3.2: system not accepting mail).
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
# RFC 5321 §4.5.3.2 (timeouts), §3.7 and RFC 3463 (4.7.0: too busy for this client now).
TOO_MANY = "421 4.7.0 Too many connections, try again later"
TIMED_OUT = "421 4.4.2 Timeout, closing connection"
# RFC 3207 §4: a server that requires TLS answers 530 until STARTTLS.
NEED_TLS = "530 5.7.0 Must issue a STARTTLS command first"

# Hands a mail to storage; the future resolves once it is committed.
SubmitFn = Callable[[bytes, str, list[str]], "Future[Stored]"]


def storable(address: str) -> str:
    """An envelope address as a database takes it. aiosmtpd hands on bytes that are not
    UTF-8 (``MAIL FROM:<j\xe9r\xf4me@…>`` from an old client) as surrogate escapes, which no
    driver encodes: such a mail would be answered 451 for ever and lost. The raw mail is
    stored untouched; only this envelope copy shows U+FFFD where the bytes were."""
    if address.isascii() and "\0" not in address:
        return address
    return (address.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            .replace("\0", "\ufffd"))  # PostgreSQL takes no NUL in text


def _in_loop(future: Future[Stored]) -> asyncio.Future[Stored]:
    """An asyncio future following `future`. Unlike asyncio.wrap_future it takes no second
    trip through the loop when `future` is resolved in the loop's own thread, as the intake
    does for a whole batch at once (mailgate/inbound/intake.py)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[Stored] = loop.create_future()
    loop_thread = threading.get_ident()

    def copy(done: Future[Stored]) -> None:
        if waiter.done():
            return
        exc = done.exception()
        if exc is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    def follow(done: Future[Stored]) -> None:
        if loop.is_closed():  # the daemon stopped: nobody waits any more
            return
        if threading.get_ident() == loop_thread:
            copy(done)
        else:
            loop.call_soon_threadsafe(copy, done)

    future.add_done_callback(follow)
    return waiter


class DeskHandler:
    """aiosmtpd handler: accepts mail for the desk's own addresses only (no open relay)."""

    def __init__(self, own_addresses: frozenset[str], submit: SubmitFn, max_recipients: int,
                 on_stored: Callable[[], None] = lambda: None) -> None:
        self.own = own_addresses
        self.submit = submit
        self.max_recipients = max_recipients
        self.on_stored = on_stored

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not is_valid_address(address) or normalize(address) not in self.own:
            return "550 5.7.1 Relaying denied: this server only accepts mail for the desk"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):  # only with decode_data=True, which we never set
            raw = raw.encode("utf-8", "surrogateescape")
        assert isinstance(raw, bytes)
        try:
            # Shielded: a client that vanishes while its mail waits for the commit cancels
            # this coroutine, and that must not cancel the writer's future (setting the
            # result of a cancelled future raises in the writer thread and stops it).
            stored = await asyncio.shield(_in_loop(self.submit(
                raw, storable(envelope.mail_from or ""),
                [storable(r) for r in envelope.rcpt_tos])))
        except StorageUnavailable as exc:
            log.warning("storage unavailable, answered 451: %s", exc)
            return "451 4.3.0 Storage temporarily unavailable, try again later"
        except Exception:
            log.exception("could not store a message; answered 451")
            return "451 4.3.0 Local error in processing, try again later"
        self.on_stored()
        return f"250 2.0.0 OK queued as {stored.inbound_id}"


class DeskSMTP(SMTP):
    """aiosmtpd's SMTP session, known to its :class:`Listener` so that a stop can wait
    for it, and refusing to start a transaction once the listener drains. Its DATA keeps
    the mail in one buffer (aiosmtpd's keeps a list of lines and joins them: three copies
    of a big mail at its peak)."""

    def __init__(self, listener: Listener, **kwargs: Any) -> None:
        # aiosmtpd sizes its stream reader from this attribute in its __init__, and checks
        # DATA lines against it: ours, set first. +1 for a line's dot-stuffing.
        self.line_length_limit = listener.max_line_length + 1
        super().__init__(listener.handler, **kwargs)
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.listener.sessions.add(self)  # again after STARTTLS: a set

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.sessions.discard(self)
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        # aiosmtpd closes without a word; RFC 5321 §4.5.3.2 wants the client told.
        self.shut(TIMED_OUT)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.listener.draining:
            await self.push(SHUTTING_DOWN)
            if self.transport is not None:
                self.transport.close()
            return
        if self.listener.require_tls and self._tls_protocol is None:
            await self.push(NEED_TLS)
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA (1.4), reading into one buffer; the checks and answers are its."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        raw, refusal = await self._read_data()
        if raw is None:
            self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
            if refusal:
                await self.push(refusal)
            return
        self.envelope.content = self.envelope.original_content = raw
        del raw  # the envelope holds the one copy
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()  # aiosmtpd's post-DATA state
        await self.push(status)

    async def _read_data(self) -> tuple[bytes | None, str]:
        """(the mail, "") or (None, the refusal); (None, "") if the connection is gone."""
        buf = io.BytesIO()
        size, limit = 0, self.data_size_limit
        too_long = too_much = False
        partial = False  # the bytes read last were part of a line longer than the limit
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                # The client went away in the middle: nothing of this mail is kept.
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                # A line longer than the limit: read on to the end of the mail (RFC 5321
                # §4.2.5 wants the answer after the data), keeping none of it.
                too_long = True
                line = await self._reader.read(exc.consumed)
            if not partial and line == b".\r\n":
                break
            size += len(line)
            if limit and size > limit:
                too_much = True
            if too_long or too_much:
                if buf.tell():
                    buf = io.BytesIO()  # let the memory go now, not at the end
            elif not partial and line[:1] == b".":
                buf.write(memoryview(line)[1:])  # RFC 5321 §4.5.2: undo the dot-stuffing
            else:
                buf.write(line)
            partial = not line.endswith(b"\r\n")
        else:
            return None, ""
        if too_long:
            return None, (f"500 5.5.2 Line too long (more than {self.listener.max_line_length}"
                          " bytes)")
        if too_much:
            return None, "552 5.3.4 Error: Too much mail data"
        # BytesIO hands over its own buffer when nothing else shares it: no copy.
        return buf.getvalue(), ""

    def shut(self, reply: str = SHUTTING_DOWN) -> None:
        """An unsolicited 421 (RFC 5321 §3.8, §4.5.3.2), then close."""
        if self.transport is not None and not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(reply.encode() + b"\r\n")
            self.transport.close()


class _Refuse(asyncio.Protocol):
    """A connection not served (draining, or too many open): greeted with 421 and closed."""

    def __init__(self, reply: str = SHUTTING_DOWN) -> None:
        self.reply = reply

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.reply.encode() + b"\r\n")
        transport.close()


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """What STARTTLS offers: the server's certificate, TLS 1.2 or later, no client
    certificate asked (a sending MTA has none to give)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


class Listener:
    """Makes the protocol for each SMTP connection and keeps the open sessions.

    A stop calls :meth:`drain`, waits with :meth:`wait_idle` for the sessions to end and
    only then closes the listening socket: meanwhile a newcomer hears a clear ``421``
    instead of a refused or reset connection (either is retried by a client, but the 421
    says why in its log).
    """

    def __init__(self, handler: DeskHandler, hostname: str,
                 settings: SmtpSettings | None = None) -> None:
        settings = settings or SmtpSettings()
        self.handler = handler
        self.hostname = hostname
        self.max_size = settings.max_message_size
        self.max_connections = settings.max_connections
        self.max_line_length = settings.max_line_length
        self.timeout = settings.timeout_seconds
        self.require_tls = settings.require_tls
        self.tls: ssl.SSLContext | None = (tls_context(settings.tls_cert, settings.tls_key)
                                           if settings.tls_cert else None)
        self.sessions: set[DeskSMTP] = set()
        self.draining = False

    def __call__(self) -> asyncio.BaseProtocol:
        if self.draining:
            return _Refuse()
        if len(self.sessions) >= self.max_connections:
            log.warning("%d SMTP sessions open (smtp.max_connections): a new one hears 421",
                        len(self.sessions))
            return _Refuse(TOO_MANY)
        # data_size_limit makes aiosmtpd advertise SIZE and answer 552 above it.
        session = DeskSMTP(self, data_size_limit=self.max_size, hostname=self.hostname,
                           enable_SMTPUTF8=True, decode_data=False, ident="mailgate ESMTP",
                           timeout=self.timeout, tls_context=self.tls)
        # Counted from now, not from connection_made: connections accepted in one go are
        # all made before the first of them is connected.
        self.sessions.add(session)
        return session

    def drain(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout: float) -> bool:
        """True once every session has ended; False if some were still open at timeout."""
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.sessions

    def shut_all(self) -> int:
        """Ends whatever session is left (after wait_idle timed out); returns how many."""
        left = list(self.sessions)
        for session in left:
            session.shut()
        return len(left)


def smtp_factory(handler: DeskHandler, hostname: str,
                 settings: SmtpSettings | None = None) -> Listener:
    return Listener(handler, hostname, settings)
