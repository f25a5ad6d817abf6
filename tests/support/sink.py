"""A real SMTP sink (aiosmtpd Controller) that plays the relay in tests."""

from __future__ import annotations

import email
import socket
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes
    at: float

    @property
    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class SinkHandler:
    received: list[Received] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)
    # Answers to give instead of 250, consumed one per message (to simulate relay trouble).
    fail_with: list[str] = field(default_factory=list)
    # Offered in the EHLO answer, as Postfix and Exim do (aiosmtpd reads commands one after
    # the other from the stream, so pipelined ones are answered in order).
    pipelining: bool = False
    # Recipients refused at RCPT, and the answer they get.
    refuse: dict[str, str] = field(default_factory=dict)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.cond:
            if self.fail_with:
                return self.fail_with.pop(0)
            raw = envelope.original_content or b""
            self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos),
                                          raw if isinstance(raw, bytes) else raw.encode(),
                                          time.monotonic()))
            self.cond.notify_all()
        return "250 OK"


class SmtpSink:
    def __init__(self, pipelining: bool = False) -> None:
        self.handler = SinkHandler(pipelining=pipelining)
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=free_port())

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def messages(self) -> list[EmailMessage]:
        with self.handler.cond:
            return [r.message for r in self.handler.received]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        with self.handler.cond:
            while len(self.handler.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"sink got {len(self.handler.received)} mail(s), expected {count}")
                self.handler.cond.wait(left)
            return [r.message for r in self.handler.received]
