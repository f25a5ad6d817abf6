"""Audit events written at the commit, all of a transaction's in one multi-row INSERT.

Each mail writes three or four events (the ticket made, each mail enqueued, the inbound
row's outcome). Nothing reads the events of a transaction before it commits, so they are
kept as plain rows and written just before the commit (db/deferred.py): one statement for a
worker's whole group, and a savepoint that rolls back takes its events along. Every event
goes this way (but the sender's outcomes, one INSERT of their own), so within a transaction
their ids keep the order in which they were recorded: `ticket show` lists them by id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailgate.db import deferred
from mailgate.db.models import Event


def record(session: Session, at: datetime, kind: str, *, ticket_id: int | None = None,
           inbound_id: int | None = None, outbox_id: int | deferred.Written | None = None,
           detail: dict[str, Any] | None = None) -> None:
    """An event of ``session``'s transaction, written just before it commits. ``outbox_id``:
    the outbox row it is about, or the handle of one written in the same commit."""
    deferred.add(session, Event, {
        "at": at, "kind": kind, "ticket_id": ticket_id, "inbound_id": inbound_id,
        "outbox_id": outbox_id, "detail": detail or {}})
