"""`mailgate deliver`'s fast way: the mail handed to the running daemon's own SMTP listener,
as rt-mailgate hands a mail to the running RT server instead of touching the database.

On PostgreSQL, ``import psycopg`` alone costs more than the goal of 0.25 s per mail (issue 11),
and the daemon has it loaded already. The listener (:mod:`mailgate.inbound.smtp`) answers
``250 2.0.0 OK queued as <id>`` only once the row is committed, under the same exactly-once
key as the direct store (:mod:`mailgate.inbound.arrival`, which does not depend on the
channel), so a ``250`` to DATA is as good as the pipe's own commit. Anything else (no
listener, a refused recipient, a 4xx or 5xx, a timeout, even after DATA was sent) and
`deliver` stores directly as before (:mod:`mailgate.inbound.pipe`, the authoritative way with
its exit codes 0 / 65 / 75); a mail the listener did commit meanwhile is then a duplicate
there: one row.

``[deliver] handoff`` says when to try: "auto" (PostgreSQL only; SQLite is fast and needs no
daemon), "always", "never". Only the standard library, and smtplib only once a hand-off is
tried: never psycopg, SQLAlchemy or click (tests/test_startup.py).

The mail goes as it came, with the line ends SMTP requires: a bare LF becomes CRLF (as any MTA
relaying it by SMTP does; the key ignores line ends), smtplib dot-stuffs it and the listener
undoes that; lines up to ``[smtp] max_line_length`` pass, a longer one is refused and the
direct store takes the mail.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailgate.logs import event

if TYPE_CHECKING:
    import smtplib

    from mailgate.config import Settings

log = logging.getLogger("mailgate.inbound.handoff")

CONNECT_TIMEOUT = 1.0  # connect and greeting: a daemon that is down costs at most this
EXCHANGE_TIMEOUT = 10.0  # the whole exchange of a small mail, the listener's commit included
BYTES_PER_SECOND = 2 * 1024 * 1024  # and this much longer for a big one (25 MB: +12.5 s)
EHLO_NAME = "localhost"  # smtplib would look up this host's FQDN: a DNS query per mail

_QUEUED_AS = re.compile(r"\bqueued as (\d+)\b")
# What cannot stand between the <> of MAIL FROM / RCPT TO as given: a command injected
# through an address, or one the listener would read otherwise than the direct store does.
_NOT_IN_PATH = re.compile(r"[\x00-\x20<>\x7f]")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_LINE_DOT = re.compile(rb"(?m)^\.")
PIECE = 1 << 20  # DATA is sent in pieces of about this size: no whole copy of a big mail


@dataclass(frozen=True)
class Handed:
    """The listener's ``250`` to DATA: the mail is committed."""

    inbound_id: int | None  # None when the reply does not say (never from our listener)
    reply: str


class NotHanded(Exception):
    """Why the listener did not take the mail; the direct store takes it instead."""


def envelope(sender: str | None, recipients: list[str] | None) -> tuple[str, list[str]]:
    """The envelope as given, else as Postfix's pipe(8) and Exim pass it (``$SENDER``,
    ``$RECIPIENT``); no recipient at all is an empty list."""
    sender = sender if sender is not None else os.environ.get("SENDER", "")
    if recipients is None:
        env_rcpt = os.environ.get("RECIPIENT", "")
        recipients = [env_rcpt] if env_rcpt else []
    return sender, recipients


def connect_host(host: str) -> str:
    """Where to reach a listener bound to ``host``: a wildcard is reached on loopback."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def listener_for(settings: Settings, raw: bytes, sender: str,
                 recipients: list[str]) -> tuple[str, int] | None:
    """The configured listener's address when this mail is to be handed to it; None when it
    goes straight to the database."""
    mode, smtp = settings.deliver.handoff, settings.smtp
    if mode == "never" or (mode == "auto"
                           and not settings.database.url.startswith("postgresql")):
        return None
    if not smtp.enabled or smtp.port == 0 or smtp.require_tls:
        return None  # no listener, none on a known port, or one that wants STARTTLS first
    # The listener takes no mail without RCPT; the direct store does (empty envelope_to).
    # An empty mail is the direct store's to refuse (65).
    if not recipients or not raw or raw.isspace():
        return None
    # A mail without a final line end would get one on the wire (SMTP ends DATA with
    # CRLF.CRLF): for a mail of headers only that would change its key.
    if not raw.endswith(b"\n"):
        return None
    if any(_NOT_IN_PATH.search(a) for a in (sender, *recipients)):
        return None
    return connect_host(smtp.host), smtp.port


def wire_size(raw: bytes) -> int:
    """The mail's size with CRLF line ends, without making that copy (for SIZE=)."""
    return len(raw) + raw.count(b"\n") - raw.count(b"\r\n")


def wire_pieces(raw: bytes, piece: int = PIECE) -> Iterator[bytes]:
    """The mail as DATA carries it, a piece of whole lines at a time: a bare LF made CRLF
    (SMTP's line end), a line starting with "." given one more (RFC 5321 §4.5.2, undone by
    the listener), every other byte as it came. ``raw`` ends with a line end."""
    start = 0
    with memoryview(raw) as view:
        while start < len(raw):
            end = raw.rfind(b"\n", start, start + piece) + 1 or raw.find(b"\n", start) + 1
            chunk = bytes(view[start:end])
            if b"\r" not in chunk:
                chunk = chunk.replace(b"\n", b"\r\n")
            elif chunk.count(b"\n") != chunk.count(b"\r\n"):
                chunk = _BARE_LF.sub(b"\r\n", chunk)
            yield _LINE_DOT.sub(b"..", chunk)
            start = end


def _with_last(pieces: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each piece, and whether it is the last (which carries the end of DATA with it)."""
    previous = next(pieces, b"")
    for piece in pieces:
        yield previous, False
        previous = piece
    yield previous, True


def hand_off(address: tuple[str, int], raw: bytes, sender: str, recipients: list[str], *,
             connect_timeout: float = CONNECT_TIMEOUT,
             timeout: float = EXCHANGE_TIMEOUT) -> Handed:
    """EHLO, MAIL FROM, RCPT TO for each recipient, DATA: the listener's ``250`` to DATA,
    or :class:`NotHanded` for anything else."""
    import smtplib  # only here: ~30 ms that a direct store does not need

    deadline = time.monotonic() + timeout + len(raw) / BYTES_PER_SECOND
    client = smtplib.SMTP(local_hostname=EHLO_NAME, timeout=connect_timeout)
    state = "idle"  # then "mail" (MAIL given: RSET ends it), "data" (354 heard: no command)

    def step(reply: tuple[int, bytes], ok: tuple[int, ...], what: str) -> None:
        code, text = reply
        if code not in ok:
            raise NotHanded(f"{what}: {code} {text.decode('utf-8', 'replace')}")

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotHanded("timed out")
        assert client.sock is not None
        client.sock.settimeout(remaining)
        return remaining

    try:
        step(client.connect(*address), (220,), "greeting")
        assert client.sock is not None
        # Each write is a whole command or a piece of the mail: sent at once. With Nagle, the
        # last piece would wait for the ACK of the one before (delayed 40 ms on loopback).
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        step(client.ehlo(), (250,), "EHLO")
        left()
        options = []
        if client.has_extn("size"):
            options.append(f" SIZE={wire_size(raw)}")
        if not (sender.isascii() and all(r.isascii() for r in recipients)):
            if not client.has_extn("smtputf8"):
                raise NotHanded("the listener does not offer SMTPUTF8")
            options.append(" SMTPUTF8")
            client.command_encoding = "utf-8"
        # docmd, not mail()/rcpt(): those reparse the address (email.utils), which could
        # give the listener another envelope than the direct store would record.
        state = "mail"
        step(client.docmd("MAIL", f"FROM:<{sender}>{''.join(options)}"), (250,), "MAIL")
        for rcpt in recipients:
            left()
            step(client.docmd("RCPT", f"TO:<{rcpt}>"), (250, 251), f"RCPT {rcpt}")
        left()
        step(client.docmd("DATA"), (354,), "DATA")
        state = "data"
        # smtplib's data() would hold three more copies of a big mail; this sends it in
        # pieces, each within what is left of the time.
        for chunk, last in _with_last(wire_pieces(raw)):
            left()
            client.send(chunk + b".\r\n" if last else chunk)
        left()  # the reply comes after the listener's commit
        code, text = client.getreply()
        state = "idle"
        step((code, text), (250,), "DATA")
    except NotHanded:
        _close(client, state)
        raise
    except (OSError, smtplib.SMTPException, UnicodeError, ValueError) as exc:
        _close(client, state)
        raise NotHanded(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
    _close(client, state)
    reply = text.decode("utf-8", "replace")
    found = _QUEUED_AS.search(reply)
    return Handed(int(found.group(1)) if found else None, reply)


def _close(client: smtplib.SMTP, state: str) -> None:
    """RSET (a transaction under way) and QUIT where the connection still answers, briefly;
    then close. Cut in DATA, the connection is only closed: a command would be read as
    part of the mail, and the listener keeps nothing of a DATA cut short."""
    import smtplib

    try:
        if client.sock is not None and state != "data":
            client.sock.settimeout(0.5)
            if state == "mail":
                client.rset()
            client.quit()
    except (OSError, smtplib.SMTPException, ValueError):
        pass
    client.close()


def try_hand_off(settings: Settings, raw: bytes, sender: str,
                 recipients: list[str]) -> Handed | None:
    """The hand-off when the settings want it and the listener takes the mail; None: store
    directly (why is logged)."""
    address = listener_for(settings, raw, sender, recipients)
    if address is None:
        return None
    try:
        handed = hand_off(address, raw, sender, recipients)
    except NotHanded as exc:
        # The daemon not running is an ordinary state; a refusal is worth a look.
        down = str(exc).startswith("ConnectionRefusedError")
        event(log, "hand-off to the listener failed, storing directly",
              level=logging.INFO if down else logging.WARNING,
              listener=f"{address[0]}:{address[1]}", reason=str(exc))
        return None
    event(log, "inbound handed to the listener", inbound=handed.inbound_id,
          listener=f"{address[0]}:{address[1]}", size=len(raw))
    return handed
