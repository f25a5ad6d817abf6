"""What is stored for a mail as it arrives, without any database library.

The idempotency rule of docs/design.md §1.2 (the same Message-ID with the same content,
ignoring the trace headers that differ per route, is stored once) and the values of the
``inbound`` row. Both ways of storing use this: :mod:`mailgate.inbound.store` (SQLAlchemy, the
daemon) and :mod:`mailgate.inbound.pipe` (plain DB-API, `mailgate deliver`, which must start
fast: only the standard library here).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mailgate.db.status import InboundStatus
from mailgate.logs import event

log = logging.getLogger("mailgate.inbound.store")  # one logger for both ways of storing

TRACE_HEADERS = frozenset(
    {b"received", b"return-path", b"delivered-to", b"x-original-to", b"x-received"})
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_CHUNK = 1 << 20  # the body is hashed in pieces of this size: no copy of a big mail


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    duplicate: bool


@dataclass(frozen=True)
class Arrival:
    """A mail as a way in hands it over, before it is stored."""

    raw: bytes
    channel: str
    envelope_from: str = ""
    envelope_to: tuple[str, ...] = ()


def _header_end(raw: bytes) -> tuple[int, int]:
    """(end of the header block, start of the body); (len, len) when there is no body."""
    m = _HEADER_END.search(raw)
    return (m.start(), m.end()) if m else (len(raw), len(raw))


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    head_end, body_start = _header_end(raw)
    return raw[:head_end], raw[body_start:]


def _header_fields(head: bytes) -> list[bytes]:
    """Header fields with their folded continuation lines kept together."""
    out: list[bytes] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\n" + line
        else:
            out.append(line)
    return out


def _message_id_of_head(head: bytes) -> str:
    m = _MESSAGE_ID.search(head)
    if not m:
        return ""
    value = re.sub(rb"\s+", b"", m.group(1)).decode("ascii", "replace")
    found = re.search(r"<[^<>]+>", value)
    return (found.group(0) if found else value)[:998]


def extract_message_id(raw: bytes) -> str:
    return _message_id_of_head(raw[:_header_end(raw)[0]])


def _digest_of(head: bytes, body: memoryview) -> str:
    h = hashlib.sha256()
    for fld in _header_fields(head):
        name = fld.split(b":", 1)[0].strip().lower()
        if name in TRACE_HEADERS:
            continue
        h.update(fld.replace(b"\r\n", b"\n").rstrip() + b"\n")
    h.update(b"\n")
    # body.replace(b"\r\n", b"\n").rstrip(b"\n"), the rule keys were always made by, hashed a
    # piece at a time: a 20 MB mail is read where it lies instead of copied twice. First the
    # end: trailing LF and CRLF units go (a CR before them stays, as replace+rstrip keep it).
    end = len(body)
    while end and body[end - 1] == 0x0A:
        end -= 2 if end >= 2 and body[end - 2] == 0x0D else 1
    pending_cr = False
    for start in range(0, end, _CHUNK):
        piece = bytes(body[start:min(start + _CHUNK, end)])
        if pending_cr:
            piece = b"\r" + piece
        pending_cr = piece.endswith(b"\r")  # its \n may start the next piece
        if pending_cr:
            piece = piece[:-1]
        h.update(piece.replace(b"\r\n", b"\n"))
    if pending_cr:
        h.update(b"\r")
    return h.hexdigest()


def content_digest(raw: bytes) -> str:
    """sha256 of the message without trace headers and with line endings normalised,
    so the same mail relayed by SMTP and fetched by IMAP digests the same."""
    head_end, body_start = _header_end(raw)
    with memoryview(raw) as view:
        return _digest_of(raw[:head_end], view[body_start:])


def dedup_key(message_id: str, digest: str) -> str:
    return hashlib.sha256(f"{message_id}\0{digest}".encode()).hexdigest()


def inbound_row(arrival: Arrival, now: datetime) -> dict[str, Any]:
    """The values of a new ``inbound`` row (db/models.py Inbound): what both ways of storing
    insert. ``raw`` is the caller's bytes object itself, never a copy."""
    raw = arrival.raw
    head_end, body_start = _header_end(raw)
    head = raw[:head_end]
    message_id = _message_id_of_head(head)
    with memoryview(raw) as view:
        digest = _digest_of(head, view[body_start:])
    return dict(
        raw=raw, size=len(raw), digest=digest, message_id=message_id,
        dedup_key=dedup_key(message_id, digest), channel=arrival.channel[:40],
        envelope_from=arrival.envelope_from[:998], envelope_to=",".join(arrival.envelope_to),
        received_at=now, status=str(InboundStatus.PENDING), reason="", kind="", trail=[],
        attempts=0, authenticity="")


def resolve(rows: list[dict[str, Any]], known: Mapping[str, int],
            new: Mapping[str, int]) -> list[Stored]:
    """One result per row, in order: new for the first row of each key stored now, a
    duplicate (with the id of the first) for the rest."""
    out: list[Stored] = []
    seen: set[str] = set()
    for values in rows:
        key = str(values["dedup_key"])
        if key in new and key not in seen:
            out.append(Stored(new[key], duplicate=False))
            seen.add(key)
        else:
            out.append(Stored(known.get(key) or new[key], duplicate=True))
    return out


def log_stored(rows: list[dict[str, Any]], results: list[Stored]) -> None:
    """One line per mail, once committed."""
    for values, stored in zip(rows, results, strict=True):
        event(log, "inbound stored", inbound=stored.inbound_id, channel=values["channel"],
              message_id=values["message_id"] or None, size=values["size"],
              duplicate=stored.duplicate)
