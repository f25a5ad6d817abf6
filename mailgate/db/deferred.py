"""Rows that nothing reads back as objects, kept as plain values and written at the commit:
each table's rows of the whole transaction in one multi-row INSERT.

A new request writes, besides its ticket and its own message, the acknowledgement and the
agents' notice (outbox), the acknowledgement's copy on the ticket (message), the loop brake's
record (auto_answer) and three or four events. As ORM objects each cost an instrumented object,
a place in the unit of work and, on SQLite, an INSERT of its own: SQLite cannot return the ids
of a multi-row INSERT in order, so the ORM writes one row at a time (bench/mix.py --profile).
Here a worker's group of mails costs one INSERT per table.

A savepoint that rolls back takes the rows recorded inside it along (a quarantined mail leaves
none of its work behind). Rows are written at the root commit, never as a savepoint is
released: its parent may still roll back. An ORM query of a table with rows not yet written
writes them first (as the ORM's autoflush does for its objects), so every reader in the
transaction sees them; a savepoint rolled back after such a write gives them back to the
next write. Core statements on the session's connection do not trigger it: such a reader
adds :func:`pending` to what it reads. Within a table, the ids follow the order the rows
were recorded in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, event, insert, update
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from mailgate.db.models import AutoAnswer, Base, Event, Inbound, Message, Outbox

_KEY = "mailgate.deferred"

# The order tables are written in: a row may name one written before it (an event its
# outbox row).
_ORDER: tuple[type[Base], ...] = (AutoAnswer, Message, Outbox, Event)
# Tables whose rows are changed by id, after the inserts: one executemany for the group's
# processed inbound rows instead of an ORM flush of each.
_CHANGED: tuple[type[Base], ...] = (Inbound,)


@dataclass
class Written:
    """A deferred row's id, known once it is written. ``key``: the value of the table's
    unique column ``by`` that finds the row among those of its INSERT (SQLite returns them
    in no promised order)."""

    by: str
    key: str
    id: int | None = None


@dataclass
class _Row:
    model: type[Base]
    values: dict[str, Any]
    during: SessionTransaction
    written: Written | None
    # Written before the commit, for a reader, inside this (sub)transaction.
    written_in: SessionTransaction | None = None


def add(session: Session, model: type[Base], values: dict[str, Any],
        written: Written | None = None) -> None:
    """A row of ``session``'s transaction, written just before it commits. A value that is
    a :class:`Written` (of a table written earlier) becomes that row's id."""
    assert model in _ORDER, f"{model.__name__} is not written at the commit"
    during = session.get_nested_transaction() or session.get_transaction()
    assert during is not None, "a row belongs to a transaction"
    _pending(session).append(_Row(model, values, during, written))


def change(session: Session, model: type[Base], row_id: int, values: dict[str, Any]) -> None:
    """An UPDATE of ``model``'s row ``row_id``, run just before the commit (or a query of
    the table). The row's object, if loaded, keeps its old values: read them elsewhere."""
    assert model in _CHANGED, f"{model.__name__} is not changed at the commit"
    during = session.get_nested_transaction() or session.get_transaction()
    assert during is not None, "a row belongs to a transaction"
    _pending(session).append(_Row(model, {_ID: row_id, **values}, during, None))


_ID = "deferred_row_id"


def pending(session: Session, model: type[Base]) -> Iterator[dict[str, Any]]:
    """The values of ``model``'s rows this transaction recorded and has not written yet."""
    rows: list[_Row] = session.info.get(_KEY) or []
    return (r.values for r in rows if r.model is model and r.written_in is None)


def _pending(session: Session) -> list[_Row]:
    rows: list[_Row] | None = session.info.get(_KEY)
    if rows is None:
        rows = session.info[_KEY] = []
        event.listen(session, "before_commit", _write)
        event.listen(session, "after_soft_rollback", _rolled_back)
        event.listen(session, "after_transaction_end", _ended)
        event.listen(session, "do_orm_execute", _before_read)
    return rows


def _before_read(state: ORMExecuteState) -> None:
    if not state.is_select:
        return
    rows: list[_Row] = state.session.info.get(_KEY) or []
    read = {m.class_ for m in state.all_mappers}
    if not any(r.written_in is None and r.model in read for r in rows):
        return
    # All of them, in the commit's order: a row may name one of another table.
    session = state.session
    now = session.get_nested_transaction() or session.get_transaction()
    due = [r for r in rows if r.written_in is None]
    _insert(session, due)
    for r in due:
        r.written_in = now


def _write(session: Session) -> None:
    rows: list[_Row] = session.info.get(_KEY) or []
    # Also called as a savepoint is released: not then, the savepoint's parent may still
    # roll back, and would take the rows of the mails before it along.
    if not rows or session.in_nested_transaction():
        return
    taken, rows[:] = [r for r in rows if r.written_in is None], []
    _insert(session, taken)


def _insert(session: Session, taken: list[_Row]) -> None:
    if not taken:
        return
    session.flush()  # the tickets and inbound rows the deferred rows name
    conn = session.connection()
    for model in _ORDER:
        mine = [r for r in taken if r.model is model]
        if not mine:
            continue
        values = [{k: (v.id if isinstance(v, Written) else v) for k, v in r.values.items()}
                  for r in mine]
        named = [r.written for r in mine if r.written is not None]
        if not named:
            conn.execute(insert(model), values)
            continue
        by = named[0].by
        column = getattr(model, by)
        ids = {key: id_ for id_, key in conn.execute(
            insert(model).returning(model.id, column),  # type: ignore[attr-defined]
            values)}
        for w in named:
            w.id = ids[w.key]
    for model in _CHANGED:
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for r in taken:
            if r.model is model:  # executemany takes one set of columns at a time
                by_columns.setdefault(tuple(r.values), []).append(r.values)
        for values in by_columns.values():
            conn.execute(update(model).where(
                model.id == bindparam(_ID)), values)  # type: ignore[attr-defined]


def _within(transaction: SessionTransaction | None, ended: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ended:
            return True
        transaction = transaction.parent
    return False


def _rolled_back(session: Session, previous: SessionTransaction) -> None:
    rows: list[_Row] = session.info.get(_KEY) or []
    rows[:] = [r for r in rows if not _within(r.during, previous)]
    for r in rows:  # recorded before the savepoint, written inside it: undone with it
        if r.written_in is not None and _within(r.written_in, previous):
            r.written_in = None
            if r.written is not None:
                r.written.id = None


def _ended(session: Session, transaction: SessionTransaction) -> None:
    # However the outermost transaction ended (a session closed without a commit, too),
    # nothing of it is carried into the session's next one.
    if transaction.parent is None:
        rows: list[_Row] = session.info.get(_KEY) or []
        rows.clear()
