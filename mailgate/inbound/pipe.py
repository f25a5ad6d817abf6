"""`mailgate deliver`: one message on stdin from an MTA pipe transport (Postfix, Exim).

Exit 0 once committed; 75 (EX_TEMPFAIL) when storage is unavailable so the MTA retries,
as rt-mailgate does; 65 (EX_DATAERR) for an empty message. This is the direct store, the
authoritative way: where ``[deliver] handoff`` wants it, `deliver` first hands the mail to the
running daemon's listener (:mod:`mailgate.inbound.handoff`) and comes here only when that
fails.

A fresh process per mail, so it must start fast: no SQLAlchemy, no models, nothing of the
processing (bench/deliver.py, tests/inbound/test_pipe.py). It stores the same row under the
same idempotency key as the daemon (both made by :mod:`mailgate.inbound.arrival`), over a
plain DB-API connection (:mod:`mailgate.db.dbapi`).
"""

from __future__ import annotations

from typing import Any, BinaryIO

from mailgate.clock import Clock
from mailgate.config import DatabaseSettings
from mailgate.db.dbapi import Plain, connect, insert_inbound, is_unavailable, write
from mailgate.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL
from mailgate.inbound.arrival import Arrival, Stored, inbound_row, log_stored, resolve
from mailgate.inbound.handoff import envelope


def store(plain: Plain, values: dict[str, Any]) -> Stored:
    """Commit one row; a duplicate answers with the id of the row stored first."""
    with write(plain) as cur:
        known, new = insert_inbound(plain, cur, [values])
    return resolve([values], known, new)[0]


def deliver(db: DatabaseSettings, clock: Clock, stream: BinaryIO,
            sender: str | None = None,
            recipients: list[str] | None = None) -> tuple[int, Stored | None, str]:
    raw = stream.read()  # one read to the end: FileIO grows one buffer, no list of chunks
    return deliver_raw(db, clock, raw, *envelope(sender, recipients))


def deliver_raw(db: DatabaseSettings, clock: Clock, raw: bytes, sender: str,
                recipients: list[str]) -> tuple[int, Stored | None, str]:
    """Stores ``raw`` with its envelope (as :func:`mailgate.inbound.handoff.envelope` makes
    it): (exit code, the row, the error)."""
    if not raw or raw.isspace():  # not raw.strip(): that would copy the whole mail
        return EX_DATAERR, None, "empty message on standard input"
    values = inbound_row(Arrival(raw, "pipe", sender, tuple(recipients)), clock.now())
    try:
        with connect(db) as plain:
            stored = store(plain, values)
    except Exception as exc:
        if is_unavailable(exc):
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            return EX_TEMPFAIL, None, f"storage unavailable: {first}"
        raise
    log_stored([values], [stored])
    return EX_OK, stored, ""
