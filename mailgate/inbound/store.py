"""Store first: the raw message is committed before any way in says "OK" (docs/design.md §1.1).

Also the idempotency rule of docs/design.md §1.2: the same Message-ID with the same content,
ignoring the trace headers that differ per route, is stored once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.db import writelock
from mailgate.db.engine import StorageUnavailable, core_transaction, is_unavailable
from mailgate.db.models import Inbound
from mailgate.db.status import InboundStatus
from mailgate.logs import event

log = logging.getLogger(__name__)

TRACE_HEADERS = frozenset(
    {b"received", b"return-path", b"delivered-to", b"x-original-to", b"x-received"})
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


# Built once: the statement cache then skips compiling them for every mail.
_EXISTING = select(Inbound.dedup_key, Inbound.id).where(
    Inbound.dedup_key.in_(bindparam("keys", expanding=True)))
_INSERT = insert(Inbound).returning(Inbound.id, sort_by_parameter_order=True)


@dataclass(frozen=True)
class Stored:
    inbound_id: int
    duplicate: bool


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    m = _HEADER_END.search(raw)
    if m is None:
        return raw, b""
    return raw[: m.start()], raw[m.end():]


def _header_fields(head: bytes) -> list[bytes]:
    """Header fields with their folded continuation lines kept together."""
    out: list[bytes] = []
    for line in re.split(rb"\r?\n", head):
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b"\n" + line
        else:
            out.append(line)
    return out


def extract_message_id(raw: bytes) -> str:
    head, _ = split_message(raw)
    m = _MESSAGE_ID.search(head)
    if not m:
        return ""
    value = re.sub(rb"\s+", b"", m.group(1)).decode("ascii", "replace")
    found = re.search(r"<[^<>]+>", value)
    return (found.group(0) if found else value)[:998]


def content_digest(raw: bytes) -> str:
    """sha256 of the message without trace headers and with line endings normalised,
    so the same mail relayed by SMTP and fetched by IMAP digests the same."""
    head, body = split_message(raw)
    h = hashlib.sha256()
    for field in _header_fields(head):
        name = field.split(b":", 1)[0].strip().lower()
        if name in TRACE_HEADERS:
            continue
        h.update(field.replace(b"\r\n", b"\n").rstrip() + b"\n")
    h.update(b"\n")
    h.update(body.replace(b"\r\n", b"\n").rstrip(b"\n"))
    return h.hexdigest()


def dedup_key(message_id: str, digest: str) -> str:
    return hashlib.sha256(f"{message_id}\0{digest}".encode()).hexdigest()


@dataclass(frozen=True)
class Arrival:
    """A mail as a way in hands it over, before it is stored."""

    raw: bytes
    channel: str
    envelope_from: str = ""
    envelope_to: tuple[str, ...] = ()


def store_many(factory: sessionmaker[Session], clock: Clock,
               arrivals: list[Arrival]) -> list[Stored]:
    """Commit several mails in one transaction (group commit: one fsync for all).
    Raises StorageUnavailable if it cannot; then none of them is stored."""
    rows = []
    now = clock.now()
    for a in arrivals:
        message_id = extract_message_id(a.raw)
        digest = content_digest(a.raw)
        rows.append(dict(
            raw=a.raw, size=len(a.raw), digest=digest, message_id=message_id,
            dedup_key=dedup_key(message_id, digest), channel=a.channel[:40],
            envelope_from=a.envelope_from[:998], envelope_to=",".join(a.envelope_to),
            received_at=now, status=InboundStatus.PENDING, reason="", kind="", trail=[],
            attempts=0))
    for attempt in (1, 2):
        try:
            known, new = _insert_new(factory, rows)
            break
        except IntegrityError:
            # Another instance stored one of these between our look-up and our insert: the
            # second look-up sees its row and treats ours as the duplicate it is.
            if attempt == 2:
                raise
        except Exception as exc:
            if is_unavailable(exc):
                raise StorageUnavailable(str(exc).splitlines()[0]) from exc
            raise
    out: list[Stored] = []
    seen: set[str] = set()
    for values in rows:
        key = str(values["dedup_key"])
        if key in new and key not in seen:
            out.append(Stored(new[key], duplicate=False))
            seen.add(key)
        else:
            out.append(Stored(known.get(key) or new[key], duplicate=True))
    for values, stored in zip(rows, out, strict=True):  # committed: one line per mail
        event(log, "inbound stored", inbound=stored.inbound_id, channel=values["channel"],
              message_id=values["message_id"] or None, size=values["size"],
              duplicate=stored.duplicate)
    return out


def _insert_new(factory: sessionmaker[Session],
                rows: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """(dedup key → id already stored, dedup key → id stored now)."""
    with core_transaction(factory, writelock.INTAKE) as conn:
        keys = [r["dedup_key"] for r in rows]
        known: dict[str, int] = {k: i for k, i in conn.execute(
            _EXISTING, {"keys": keys}).all()}
        fresh: dict[str, dict[str, Any]] = {}
        for values in rows:
            if values["dedup_key"] not in known:
                fresh.setdefault(values["dedup_key"], values)  # twice in one batch: once
        if fresh:
            # One multi-row INSERT ... RETURNING for the whole batch, ids in order.
            ids = conn.execute(_INSERT, list(fresh.values())).scalars().all()
            new = dict(zip(fresh, ids, strict=True))
        else:
            new = {}
    return known, new


def store_raw(factory: sessionmaker[Session], clock: Clock, raw: bytes, channel: str,
              envelope_from: str = "", envelope_to: list[str] | tuple[str, ...] = ()) -> Stored:
    """Commit one message; returns its row id. Raises StorageUnavailable if it cannot."""
    return store_many(factory, clock, [Arrival(raw, channel, envelope_from,
                                               tuple(envelope_to))])[0]
