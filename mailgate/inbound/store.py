"""Store first: the raw message is committed before any way in says "OK" (docs/design.md §1.1).

Also the idempotency rule of docs/design.md §1.2: the same Message-ID with the same content,
ignoring the trace headers that differ per route, is stored once. The key and the row's
values are made in :mod:`mailgate.inbound.arrival`, which `mailgate deliver` shares
(:mod:`mailgate.inbound.pipe`, plain DB-API); this is the daemon's way, through SQLAlchemy Core.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.db import dbapi, writelock
from mailgate.db.engine import StorageUnavailable, core_transaction, is_unavailable
from mailgate.db.models import Inbound
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

# Built once: the statement cache then skips compiling them for every mail.
_EXISTING = select(Inbound.dedup_key, Inbound.id).where(
    Inbound.dedup_key.in_(bindparam("keys", expanding=True)))
_INSERT = insert(Inbound).returning(Inbound.id, sort_by_parameter_order=True)
_INSERT_EMPTY = insert(Inbound).values(raw=func.zeroblob(bindparam("raw_size"))).returning(
    Inbound.id)


def store_many(factory: sessionmaker[Session], clock: Clock,
               arrivals: list[Arrival]) -> list[Stored]:
    """Commit several mails in one transaction (group commit: one fsync for all).
    Raises StorageUnavailable if it cannot; then none of them is stored."""
    now = clock.now()
    rows = [inbound_row(a, now) for a in arrivals]
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
    out = resolve(rows, known, new)
    log_stored(rows, out)
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
        new: dict[str, int] = {}
        sqlite = conn.dialect.name == "sqlite"
        big = {k: v for k, v in fresh.items() if sqlite and dbapi.streams("sqlite", v["raw"])}
        small = [v for k, v in fresh.items() if k not in big]
        if small:
            # One multi-row INSERT ... RETURNING for the whole batch, ids in order.
            ids = conn.execute(_INSERT, small).scalars().all()
            new.update(zip((v["dedup_key"] for v in small), ids, strict=True))
        for key, values in big.items():
            # zeroblob(n), then the bytes in pieces: a bound copy would stay in the
            # statement cache (db/dbapi.py).
            params = {k: v for k, v in values.items() if k != "raw"}
            new[key] = conn.execute(_INSERT_EMPTY, {**params, "raw_size": len(values["raw"])}
                                    ).scalar_one()
            driver = conn.connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            dbapi.write_blob(driver, "inbound", "raw", new[key], values["raw"])
    return known, new


def store_raw(factory: sessionmaker[Session], clock: Clock, raw: bytes, channel: str,
              envelope_from: str = "", envelope_to: list[str] | tuple[str, ...] = ()) -> Stored:
    """Commit one message; returns its row id. Raises StorageUnavailable if it cannot."""
    return store_many(factory, clock, [Arrival(raw, channel, envelope_from,
                                               tuple(envelope_to))])[0]
