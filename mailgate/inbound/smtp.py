"""The SMTP way in (aiosmtpd). SMTP status strings live here and nowhere else.

Store first: ``250`` is said only after the raw message is committed; if storage is
down the client hears ``451`` and keeps the mail in its queue.

Stopping (:class:`Listener`): once the daemon drains, a new connection is greeted with
``421`` and closed, and a session already open hears ``421`` to its next ``MAIL``; a
transaction under way (``MAIL`` given, ``DATA`` in progress or waiting for its commit)
finishes and gets its ``250``. So every mail is either stored and answered ``250`` or
refused with a 4xx that the client's queue retries: none is half taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.db.engine import StorageUnavailable
from mailgate.inbound.store import Stored
from mailgate.mail.addresses import is_valid_address, normalize

log = logging.getLogger(__name__)

# RFC 5321 §3.8: a server that shuts down answers 421 (4.3.2: system not accepting mail).
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"

# Hands a mail to storage; the future resolves once it is committed.
SubmitFn = Callable[[bytes, str, list[str]], "Future[Stored]"]


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
            stored = await asyncio.shield(asyncio.wrap_future(
                self.submit(raw, envelope.mail_from or "", list(envelope.rcpt_tos))))
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
    for it, and refusing to start a transaction once the listener drains."""

    def __init__(self, listener: Listener, **kwargs: Any) -> None:
        super().__init__(listener.handler, **kwargs)
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.listener.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.listener.sessions.discard(self)
        super().connection_lost(error)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.listener.draining:
            await self.push(SHUTTING_DOWN)
            if self.transport is not None:
                self.transport.close()
            return
        await super().smtp_MAIL(arg)

    def shut(self) -> None:
        """The forced end (RFC 5321 §3.8): an unsolicited 421, then close."""
        if self.transport is not None and not self.transport.is_closing():
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(SHUTTING_DOWN.encode() + b"\r\n")
            self.transport.close()


class _Refuse(asyncio.Protocol):
    """A connection accepted while draining: greeted with 421 and closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(SHUTTING_DOWN.encode() + b"\r\n")
        transport.close()


class Listener:
    """Makes the protocol for each SMTP connection and keeps the open sessions.

    A stop calls :meth:`drain`, waits with :meth:`wait_idle` for the sessions to end and
    only then closes the listening socket: meanwhile a newcomer hears a clear ``421``
    instead of a refused or reset connection (either is retried by a client, but the 421
    says why in its log).
    """

    def __init__(self, handler: DeskHandler, hostname: str, max_size: int) -> None:
        self.handler = handler
        self.hostname = hostname
        self.max_size = max_size
        self.sessions: set[DeskSMTP] = set()
        self.draining = False

    def __call__(self) -> asyncio.BaseProtocol:
        if self.draining:
            return _Refuse()
        # data_size_limit makes aiosmtpd advertise SIZE and answer 552 above it.
        return DeskSMTP(self, data_size_limit=self.max_size, hostname=self.hostname,
                        enable_SMTPUTF8=True, decode_data=False, ident="mailgate ESMTP")

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


def smtp_factory(handler: DeskHandler, hostname: str, max_size: int) -> Listener:
    return Listener(handler, hostname, max_size)
