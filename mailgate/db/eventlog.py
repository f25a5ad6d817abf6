"""Audit events written at the commit, all of a transaction's in one multi-row INSERT.

Each mail writes three or four events (the ticket made, each mail enqueued, the inbound
row's outcome). As ORM objects each one cost an instrumented object, a place in the unit of
work and, on SQLite, an INSERT of its own (SQLite cannot return the ids of a multi-row
INSERT in order, so the ORM writes one row at a time). Nothing reads the events of a
transaction before it commits, so they are kept here as plain rows and written just before
the commit: one statement for a worker's whole group. A savepoint that rolls back takes the
events recorded inside it along (a quarantined mail leaves none of its work behind). Every
event goes this way (but the sender's outcomes, one INSERT of its own), so within a
transaction their ids keep the order in which they were recorded: `ticket show` lists them
by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event, insert
from sqlalchemy.orm import Session, SessionTransaction

from mailgate.db.models import Event, Outbox

_KEY = "mailgate.eventlog"


@dataclass
class _Pending:
    row: dict[str, Any]
    outbox: Outbox | None  # its id is known once the outbox row is flushed
    during: SessionTransaction


def record(session: Session, at: datetime, kind: str, *, ticket_id: int | None = None,
           inbound_id: int | None = None, outbox: Outbox | None = None,
           detail: dict[str, Any] | None = None) -> None:
    """An event of ``session``'s transaction, written just before it commits."""
    pending = _pending(session)
    during = session.get_nested_transaction() or session.get_transaction()
    assert during is not None, "an event belongs to a transaction"
    pending.append(_Pending(
        {"at": at, "kind": kind, "ticket_id": ticket_id, "inbound_id": inbound_id,
         "outbox_id": None, "detail": detail or {}}, outbox, during))


def _pending(session: Session) -> list[_Pending]:
    pending: list[_Pending] | None = session.info.get(_KEY)
    if pending is None:
        pending = session.info[_KEY] = []
        event.listen(session, "before_commit", _write)
        event.listen(session, "after_soft_rollback", _rolled_back)
        event.listen(session, "after_transaction_end", _ended)
    return pending


def _write(session: Session) -> None:
    pending: list[_Pending] = session.info.get(_KEY) or []
    # Also called as a savepoint is released: not then, the savepoint's parent may still
    # roll back, and would take the events of the mails before it along.
    if not pending or session.in_nested_transaction():
        return
    session.flush()  # the outbox rows get their ids
    rows = []
    for p in pending:
        if p.outbox is not None:
            p.row["outbox_id"] = p.outbox.id
        rows.append(p.row)
    pending.clear()
    session.connection().execute(insert(Event), rows)


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _rolled_back(session: Session, previous: SessionTransaction) -> None:
    pending: list[_Pending] = session.info.get(_KEY) or []
    pending[:] = [p for p in pending if not _within(p.during, previous)]


def _ended(session: Session, transaction: SessionTransaction) -> None:
    # However the outermost transaction ended (a session closed without a commit, too),
    # nothing of it is carried into the session's next one.
    if transaction.parent is None:
        pending: list[_Pending] = session.info.get(_KEY) or []
        pending.clear()
