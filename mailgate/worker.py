"""The runner that processes stored mail: load → parse → facts → classify → apply → record,
or quarantine; each mail in its own transaction, or (once warm) in its own savepoint of a
group's transaction.

It holds no ticket logic: the facts, the rules and the handlers live in ``tickets/``. A mail
that fails to parse or apply goes to quarantine with the reason and the worker goes on; a
storage outage stops the batch and leaves the mail pending for the next pass.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, defer

from mailgate.app import App
from mailgate.clock import Clock
from mailgate.db import deferred, eventlog
from mailgate.db.engine import is_unavailable, read_bytes, reading, transaction
from mailgate.db.models import Inbound, Ticket
from mailgate.db.status import InboundStatus
from mailgate.logs import event
from mailgate.mail.parse import UnparseableMail, parse
from mailgate.parse_ahead import ParseAhead
from mailgate.tickets import facts
from mailgate.tickets.apply import Context, apply
from mailgate.tickets.desk import Desk
from mailgate.tickets.policy import classify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    processed: int = 0
    quarantined: int = 0
    stopped_by_outage: bool = False


def pending_ids(app: App, limit: int) -> list[int]:
    with reading(app.sessions) as session:
        return list(session.execute(
            select(Inbound.id).where(Inbound.status == InboundStatus.PENDING)
            .order_by(Inbound.id).limit(limit)).scalars())


def _hold(session: Session) -> None:
    """Keeps every object the session adds or loads until the session ends. The identity
    map holds clean objects weakly: a ticket written by a handler would otherwise be gone
    by the time the worker reads its reference, and be selected again."""
    held: list[object] = session.info.setdefault("held", [])
    if not held:
        held.append(session)  # marks the listeners as set for this session
        sa_event.listen(session, "after_attach", lambda _s, obj: held.append(obj))
        sa_event.listen(session, "loaded_as_persistent", lambda _s, obj: held.append(obj))


# Built once: a statement object keeps its cache key.
_PENDING_ROWS = (select(Inbound).options(defer(Inbound.raw))
                 .where(Inbound.id.in_(bindparam("ids", expanding=True)),
                        Inbound.status == InboundStatus.PENDING)
                 .with_for_update(skip_locked=True))


def _claim(session: Session, ids: list[int]) -> dict[int, Inbound]:
    """The rows of ``ids`` still pending that no other worker has, locked until the commit
    (on PostgreSQL; SQLite has one writer), in one statement."""
    _hold(session)
    return {row.id: row for row in session.execute(_PENDING_ROWS, {"ids": ids}).scalars()}


def _process(session: Session, app: App, desk: Desk, row: Inbound,
             ahead: ParseAhead | None = None) -> tuple[InboundStatus, dict[str, Any]]:
    """Processes one claimed row inside the caller's transaction: its new status and its log
    line."""
    # The raw mail read with one copy in memory, and let go before the attachments
    # are stored and the row is updated (which on SQLite rewrites the row, raw and
    # all): a big mail's peak is then ~3x its size, not ~7x (bench/memory.py).
    raw = read_bytes(session, "inbound", "raw", row.id)
    mail = (ahead.take(row.id) if ahead is not None else None) \
        or parse(raw, row.envelope_from)  # the sender of last resort
    found = facts.gather(session, desk, mail, raw,
                         tuple(a for a in row.envelope_to.split(",") if a))
    del raw
    decision, trail = classify(found)
    now = app.clock.now()
    outcome = apply(Context(session, desk, row, mail, found, decision, now))
    kind = outcome.kind or decision.kind
    # Written with the group's other rows at the commit, one statement for all (the ORM
    # flushed each row on its own, between one mail's work and the next).
    deferred.change(session, Inbound, row.id, {
        "status": outcome.status, "ticket_id": outcome.ticket_id, "kind": kind,
        "reason": outcome.reason or decision.reason, "trail": trail,
        "authenticity": row.authenticity if found.authenticity is None else (
            ("pass: " if found.authenticity.verified else "fail: ")
            + found.authenticity.evidence[:190]),
        "processed_at": now, "attempts": row.attempts + 1})
    eventlog.record(session, now, f"inbound.{outcome.status}", ticket_id=outcome.ticket_id,
                    inbound_id=row.id, detail={"rule": decision.rule})
    ticket = session.get(Ticket, outcome.ticket_id) if outcome.ticket_id else None
    line: dict[str, Any] = {"inbound": row.id, "message_id": row.message_id or None,
                            "channel": row.channel, "kind": kind,
                            "outcome": str(outcome.status),
                            "ticket": ticket.ref if ticket else None,
                            "rule": decision.rule}
    return outcome.status, line


def _reasons(exc: Exception) -> tuple[str, str]:
    reason = (f"unparseable: {exc}" if isinstance(exc, UnparseableMail)
              else f"{type(exc).__name__}: {exc}")
    return reason, "".join(traceback.format_exception_only(exc)).strip()


def process_one(app: App, inbound_id: int) -> InboundStatus | None:
    """Processes one pending row; returns its new status, or None if another worker has it."""
    try:
        # Load the signing secret before the per-mail transaction opens: reading it may
        # write it, and a second write transaction in this thread would wait on the first.
        desk = app.desk
        with transaction(app.sessions) as session:
            row = _claim(session, [inbound_id]).get(inbound_id)
            if row is None:
                return None
            done = _process(session, app, desk, row)
        event(log, "inbound processed", **done[1])  # once committed: one line per mail
        return done[0]
    except Exception as exc:
        if is_unavailable(exc):
            raise
        quarantine(app, inbound_id, *_reasons(exc))
        return InboundStatus.QUARANTINED


# Several mails are processed in one transaction: one commit (and on PostgreSQL one WAL
# flush) serves a group, not every mail. A group is closed after GROUP_SECONDS, so
# acknowledgements wait at most that long for their commit, and SMTP intake for the write
# lock. A group runs without savepoints first (a SAVEPOINT and its RELEASE were two of a
# mail's ~11 round trips on PostgreSQL, and each savepoint flushes the ORM); if a mail
# fails, the group is rolled back and run again with a savepoint per mail, so the failing
# one is rolled back alone and quarantined in the same transaction, the others stay.
GROUP_MAX = 16
GROUP_SECONDS = 0.15
# A process starts one mail per transaction until it has committed this many: a mail that
# kills the process (not an exception: the OOM killer, a crash in a C library) is then the
# only one lost with its transaction, and after the restart it is again processed alone, as
# it was when every mail had its own transaction, and does not hold back the others of the
# group it came in. The group it killed were the oldest pending mails then, so it is among
# the first GROUP_MAX after the restart; more mails alone only slow a restart's backlog
# (50 cost a fresh daemon's drain ~7% on PostgreSQL, bench/mix.py --drain).
_WARM_AFTER = GROUP_MAX
_committed_in_process = 0


class _GroupFailed(Exception):
    """A mail of a group run without savepoints failed: run the group again with them."""


def _process_group(app: App, ids: list[int], should_yield: Callable[[], bool] | None,
                   ahead: ParseAhead | None) -> list[tuple[int, InboundStatus]]:
    """Processes the first GROUP_MAX rows of `ids` in one transaction, until the group is
    full or old enough; returns (id, status) of the rows it took (not those another worker
    had). The rest of `ids` was not touched."""
    try:
        taken, lines = _run_group(app, ids, should_yield, ahead, savepoints=False)
    except _GroupFailed:
        # The helper's parses the first run took are gone; those of the mails after the
        # failing one are still there.
        taken, lines = _run_group(app, ids, should_yield, ahead, savepoints=True)
    for message, level, fields in lines:  # once committed: one line per mail
        event(log, message, level=level, **fields)
    return taken


def _run_group(app: App, ids: list[int], should_yield: Callable[[], bool] | None,
               ahead: ParseAhead | None, savepoints: bool,
               ) -> tuple[list[tuple[int, InboundStatus]], list[tuple[str, int, dict[str, Any]]]]:
    desk = app.desk
    taken: list[tuple[int, InboundStatus]] = []
    lines: list[tuple[str, int, dict[str, Any]]] = []
    started = time.monotonic()
    with transaction(app.sessions) as session:
        rows = _claim(session, ids[:GROUP_MAX])
        for inbound_id in ids[:GROUP_MAX]:
            row = rows.get(inbound_id)
            if row is None:
                continue  # another worker has it
            try:
                with session.begin_nested() if savepoints else nullcontext():
                    done = _process(session, app, desk, row, ahead)
            except Exception as exc:
                if is_unavailable(exc):
                    raise
                if not savepoints:
                    raise _GroupFailed from exc  # the transaction rolls back
                line = _quarantine_in(session, app, inbound_id, *_reasons(exc))
                taken.append((inbound_id, InboundStatus.QUARANTINED))
                lines.append(("inbound quarantined", logging.WARNING, line))
            else:
                taken.append((inbound_id, done[0]))
                lines.append(("inbound processed", logging.INFO, done[1]))
            if (len(taken) >= GROUP_MAX or time.monotonic() - started >= GROUP_SECONDS
                    or (should_yield is not None and should_yield())):
                break
    return taken, lines


def status_of(app: App, inbound_id: int) -> InboundStatus:
    with reading(app.sessions) as session:
        return InboundStatus(session.execute(
            select(Inbound.status).where(Inbound.id == inbound_id)).scalar_one())


def settle(app: App, inbound_id: int, wait_seconds: float,
           give_up: Callable[[], bool] = lambda: False) -> InboundStatus:
    """Processes the row here; if another worker has it, waits (bounded) for its verdict.
    A way in that must know the outcome (IMAP chooses the folder by it) calls this."""
    status = process_one(app, inbound_id)
    if status is not None:
        return status
    deadline = time.monotonic() + wait_seconds
    while True:
        status = status_of(app, inbound_id)
        if status != InboundStatus.PENDING or time.monotonic() > deadline or give_up():
            return status
        time.sleep(0.05)


def quarantine(app: App, inbound_id: int, reason: str, detail: str = "") -> None:
    with transaction(app.sessions) as session:
        line = _quarantine_in(session, app, inbound_id, reason, detail)
    event(log, "inbound quarantined", level=logging.WARNING, **line)


def _quarantine_in(session: Session, app: App, inbound_id: int, reason: str,
                   detail: str = "") -> dict[str, Any]:
    """Quarantines the row inside the caller's transaction; returns its log line."""
    row = session.get(Inbound, inbound_id)
    assert row is not None
    now = app.clock.now()
    row.status, row.reason, row.processed_at = InboundStatus.QUARANTINED, reason[:2000], now
    row.attempts += 1
    row.trail = [*(row.trail or []), {"rule": "quarantine",
                                      "result": InboundStatus.QUARANTINED,
                                      "reason": reason[:2000]}]
    eventlog.record(session, now, "inbound.quarantined", inbound_id=inbound_id,
                    detail={"reason": reason[:2000], "detail": detail[:4000]})
    return {"inbound": inbound_id, "message_id": row.message_id or None,
            "channel": row.channel, "kind": row.kind or None,
            "outcome": str(InboundStatus.QUARANTINED), "ticket": None,
            "reason": reason[:300]}


def _step_aside(should_yield: Callable[[], bool], limit: float = 2.0) -> None:
    """While intake runs hot, let it have the database (bounded, so the worker never
    starves)."""
    deadline = time.monotonic() + limit
    while should_yield() and time.monotonic() < deadline:
        time.sleep(0.01)


def process_pending(app: App, limit: int | None = None,
                    should_yield: Callable[[], bool] | None = None,
                    on_processed: Callable[[], None] | None = None,
                    ahead: ParseAhead | None = None) -> BatchResult:
    """Processes pending mail, a batch at a time. ``ahead``: a helper process that parses
    the batch's mails while the worker writes (parse_ahead.py)."""
    global _committed_in_process
    processed = quarantined = 0
    upcoming: list[int] = []
    try:
        batch = limit or app.settings.worker.batch_size
        if ahead is not None and _committed_in_process >= _WARM_AFTER:
            # The next pass's mails are parsed too, after this pass's: its first group
            # would otherwise wait for the helper's first chunk (~8% of a drain, py-spy).
            ids = pending_ids(app, 2 * batch)
            ids, upcoming = ids[:batch], ids[batch:]
            ahead.submit(ids + upcoming)
        else:
            ids = pending_ids(app, batch)
        while ids:
            if should_yield is not None:
                _step_aside(should_yield)
            if _committed_in_process < _WARM_AFTER:
                status = process_one(app, ids[0])
                taken, tried = ([(ids[0], status)] if status is not None else []), 1
            else:
                taken = _process_group(app, ids, should_yield, ahead)
                # Rows another worker had are skipped without a trace; up to the last taken.
                tried = ids.index(taken[-1][0]) + 1 if taken else min(len(ids), GROUP_MAX)
            ids = ids[tried:]
            if not taken:
                continue
            _committed_in_process += len(taken)
            processed += len(taken)
            quarantined += sum(s == InboundStatus.QUARANTINED for _, s in taken)
            if on_processed is not None:
                on_processed()  # the acknowledgements go out now, not after the batch
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        log.warning("storage unavailable, processing paused: %s", str(exc).splitlines()[0])
        return BatchResult(processed, quarantined, stopped_by_outage=True)
    finally:
        if ahead is not None:
            ahead.forget(keep=upcoming)
    return BatchResult(processed, quarantined)


def replay(session: Session, clock: Clock, inbound_id: int | None = None) -> int:
    """Quarantined mail back to pending, keeping its trail; `mailgate quarantine replay`."""
    stmt = select(Inbound).where(Inbound.status == InboundStatus.QUARANTINED)
    if inbound_id is not None:
        stmt = stmt.where(Inbound.id == inbound_id)
    rows = list(session.execute(stmt).scalars())
    now = clock.now()
    for row in rows:
        row.status, row.reason = InboundStatus.PENDING, ""
        row.trail = [*(row.trail or []), {"rule": "replay", "result": InboundStatus.PENDING,
                                          "reason": f"replayed at {now.isoformat()}"}]
        eventlog.record(session, now, "inbound.replayed", inbound_id=row.id)
    return len(rows)
