"""The SMTP way in (aiosmtpd). SMTP status strings live here and nowhere else.

Store first: ``250`` is said only after the raw message is committed; if storage is
down the client hears ``451`` and keeps the mail in its queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.db.engine import StorageUnavailable
from mailgate.inbound.store import Stored
from mailgate.mail.addresses import is_valid_address, normalize

log = logging.getLogger(__name__)

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
            stored = await asyncio.wrap_future(
                self.submit(raw, envelope.mail_from or "", list(envelope.rcpt_tos)))
        except StorageUnavailable as exc:
            log.warning("storage unavailable, answered 451: %s", exc)
            return "451 4.3.0 Storage temporarily unavailable, try again later"
        except Exception:
            log.exception("could not store a message; answered 451")
            return "451 4.3.0 Local error in processing, try again later"
        self.on_stored()
        return f"250 2.0.0 OK queued as {stored.inbound_id}"


def smtp_factory(handler: DeskHandler, hostname: str, max_size: int) -> Callable[[], Any]:
    def make() -> SMTP:
        # data_size_limit makes aiosmtpd advertise SIZE and answer 552 above it.
        return SMTP(handler, data_size_limit=max_size, hostname=hostname,
                    enable_SMTPUTF8=True, decode_data=False, ident="mailgate ESMTP")
    return make
