"""Store first: the raw message is committed before any way in says "OK" (docs/design.md §1.1).

Also the idempotency rule of docs/design.md §1.2: the same Message-ID with the same content,
ignoring the trace headers that differ per route, is stored once. The key and the row's
values are made in :mod:`mailgate.inbound.arrival`, which `mailgate deliver` shares
(:mod:`mailgate.inbound.pipe`, plain DB-API); this is the daemon's way, through SQLAlchemy Core.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.db import dbapi, writelock
from mailgate.db.engine import StorageUnavailable, core_transaction, is_unavailable
from mailgate.inbound.arrival import (
    TRACE_HEADERS,
    Arrival,
    Stored,
    content_digest,
    dedup_key,
    extract_message_id,
    inbound_row,
    log_stored,
    resolve,
    split_message,
)

__all__ = ["TRACE_HEADERS", "Arrival", "Stored", "content_digest", "dedup_key",
           "extract_message_id", "split_message", "store_many", "store_raw"]


def store_many(factory: sessionmaker[Session], clock: Clock,
               arrivals: list[Arrival]) -> list[Stored]:
    """Commit several mails in one transaction (group commit: one fsync for all).
    Raises StorageUnavailable if it cannot; then none of them is stored."""
    if not arrivals:
        return []
    now = clock.now()
    rows = [inbound_row(a, now) for a in arrivals]
    try:
        # The same INSERT … ON CONFLICT DO NOTHING as `deliver` and the SMTP intake, on the
        # driver connection of a transaction that holds the in-process write lock.
        with core_transaction(factory, writelock.INTAKE) as conn:
            plain = dbapi.Plain(conn.connection.driver_connection, conn.dialect.name)
            cur = plain.conn.cursor()
            try:
                known, new = dbapi.insert_inbound(plain, cur, rows)
            finally:
                cur.close()
    except Exception as exc:
        if is_unavailable(exc):
            raise StorageUnavailable(str(exc).splitlines()[0]) from exc
        raise
    out = resolve(rows, known, new)
    log_stored(rows, out)
    return out


def store_raw(factory: sessionmaker[Session], clock: Clock, raw: bytes, channel: str,
              envelope_from: str = "", envelope_to: list[str] | tuple[str, ...] = ()) -> Stored:
    """Commit one message; returns its row id. Raises StorageUnavailable if it cannot."""
    return store_many(factory, clock, [Arrival(raw, channel, envelope_from,
                                               tuple(envelope_to))])[0]
