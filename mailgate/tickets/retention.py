"""Retention, the privacy setting: what a closed ticket keeps once it has been closed long
enough (``[retention]``, off by default).

- ``raw_days``: the raw mails are emptied — the ticket's inbound mails as they arrived and
  its outgoing mails as sent (``outbox.raw``, which holds the mail's whole text). Size,
  digest, Message-ID, status and decision trail stay; the trail gains a ``retention`` step,
  so `inbound show` says so and `inbound show --raw` refuses. Mail still pending or in
  quarantine is never touched (it still has to be processed), nor outgoing mail not sent yet.
- ``attachments_days``: the attachments' bytes (database or directory) are removed; the
  attachment rows keep name, type, size and SHA-256 and the blob is marked ``purged``. A
  blob that a ticket not yet due also uses stays until that ticket is due as well.

The ticket, its messages' text and its events stay: `tickets show` is unchanged but for a
``ticket.raw_purged`` / ``ticket.attachments_purged`` event naming what went.

A ticket is due once it is closed and its ``closed_at`` lies ``*_days`` back. Each part walks
the tickets in (``closed_at``, id) order through the ``closed_at`` index from a cursor kept
in the ``setting`` table (``retention.raw_through``, ``retention.attachments_through``), so a
sweep reads only tickets that became due since the last one, not every old ticket again.
A ticket reopened and closed again gets a new ``closed_at`` beyond the cursor and is looked
at again then; one reopened and still open when the cursor passes is skipped (its new
mails are purged after its next closing). The cursor row is locked (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL): one instance purges at a time, and purging twice changes nothing.

Mail that made no ticket (refusals to strangers, list mail, loops) is not covered: it has
no closing to count from.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from mailgate import blobs
from mailgate.config import Settings
from mailgate.db import eventlog
from mailgate.db.engine import reading, transaction
from mailgate.db.models import Attachment, Blob, Inbound, Message, Outbox, Setting, Ticket
from mailgate.db.status import InboundStatus, OutboxStatus
from mailgate.logs import event as log_event
from mailgate.tickets.states import State

log = logging.getLogger(__name__)

BY = "retention"
RAW, ATTACHMENTS = "raw", "attachments"
PARTS = (RAW, ATTACHMENTS)
CURSOR = {RAW: "retention.raw_through", ATTACHMENTS: "retention.attachments_through"}
BATCH = 500

Cursor = tuple[datetime, int] | None


@dataclass
class Part:
    """What one part removes (or, in a dry run, would remove)."""

    days: int = 0
    before: datetime | None = None  # tickets closed at or before this are due
    tickets: list[str] = field(default_factory=list)  # refs of the tickets that lose something
    inbound: int = 0        # raw: inbound mails emptied
    outbox: int = 0         # raw: outgoing mails emptied
    blobs: int = 0          # attachments: blobs whose bytes go
    kept_shared: int = 0    # attachments: blobs kept, a ticket not yet due uses them too
    bytes: int = 0

    @property
    def enabled(self) -> bool:
        return self.days > 0


@dataclass
class PurgeResult:
    dry_run: bool
    now: datetime
    raw: Part
    attachments: Part

    def as_dict(self) -> dict[str, Any]:
        def part(p: Part, keys: tuple[str, ...]) -> dict[str, Any]:
            d = asdict(p)
            return {"enabled": p.enabled, "days": p.days, "before": _iso(p.before),
                    "tickets": d["tickets"], **{k: d[k] for k in keys}, "bytes": p.bytes}
        return {"dry_run": self.dry_run, "now": _iso(self.now),
                "raw": part(self.raw, ("inbound", "outbox")),
                "attachments": part(self.attachments, ("blobs", "kept_shared"))}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def days_of(settings: Settings, part: str) -> int:
    r = settings.retention
    return r.raw_days if part == RAW else r.attachments_days


def before(settings: Settings, part: str, now: datetime) -> datetime | None:
    """Tickets closed at or before this moment are due for ``part``; None when it is off."""
    days = days_of(settings, part)
    return now - timedelta(days=days) if days > 0 else None


def _not_due(cutoff: datetime) -> ColumnElement[bool]:
    """A ticket that still keeps everything: not closed, or closed too recently."""
    return or_(Ticket.state != State.CLOSED, Ticket.closed_at.is_(None),
               Ticket.closed_at > cutoff)


# --- the cursor -------------------------------------------------------------------------------

def _parse(value: str) -> Cursor:
    if not value:
        return None
    at, _, ticket_id = value.partition(" ")
    return datetime.fromisoformat(at), int(ticket_id)


def _format(cursor: Cursor) -> str:
    return "" if cursor is None else f"{cursor[0].isoformat()} {cursor[1]}"


def read_cursor(session: Session, part: str) -> Cursor:
    value = session.execute(
        select(Setting.value).where(Setting.name == CURSOR[part])).scalar_one_or_none()
    return _parse(value or "")


def _claim_cursor(session: Session, part: str) -> Setting | None:
    """The part's cursor row, locked; None while another instance holds it."""
    name = CURSOR[part]
    locked = select(Setting).where(Setting.name == name).with_for_update(skip_locked=True)
    row = session.execute(locked).scalar_one_or_none()
    if row is not None:
        return row
    if session.execute(select(Setting.name).where(Setting.name == name)).first() is not None:
        return None  # it exists: someone else has it
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(Setting).values(name=name, value="").on_conflict_do_nothing())
    return session.execute(locked).scalar_one_or_none()


# --- one batch --------------------------------------------------------------------------------

def _tickets_after(cursor: Cursor, cutoff: datetime,
                   batch: int) -> Select[int, str, str, datetime | None]:
    stmt = select(Ticket.id, Ticket.ref, Ticket.state, Ticket.closed_at).where(
        Ticket.closed_at.is_not(None), Ticket.closed_at <= cutoff)
    if cursor is not None:
        at, ticket_id = cursor
        stmt = stmt.where(Ticket.closed_at >= at,
                          or_(Ticket.closed_at > at, Ticket.id > ticket_id))
    return stmt.order_by(Ticket.closed_at, Ticket.id).limit(batch)


def _raw(session: Session, refs: dict[int, str], cutoff: datetime, days: int, now: datetime,
         out: Part, apply: bool) -> None:
    ids = list(refs)
    order = {t: i for i, t in enumerate(ids)}
    settled = Inbound.status.not_in((InboundStatus.PENDING, InboundStatus.QUARANTINED))
    # The ticket's mails: the inbound rows pointing at it and those its messages came from.
    owner: dict[int, int] = {}
    for inbound_id, ticket_id in session.execute(
            select(Inbound.id, Inbound.ticket_id).where(
                Inbound.ticket_id.in_(ids), settled, func.length(Inbound.raw) > 0)):
        owner[inbound_id] = int(ticket_id or 0)
    for message_inbound, ticket_id in session.execute(
            select(Message.inbound_id, Message.ticket_id)
            .join(Inbound, Inbound.id == Message.inbound_id)
            .where(Message.ticket_id.in_(ids), settled, func.length(Inbound.raw) > 0)):
        owner.setdefault(int(message_inbound or 0), ticket_id)
    if owner:
        # A message's mail whose row names another ticket, not yet due, stays until that one
        # is due too (each mail is processed onto one ticket; this is the guard, by key).
        keep = set(session.execute(
            select(Inbound.id).join(Ticket, Ticket.id == Inbound.ticket_id)
            .where(Inbound.id.in_(list(owner)), _not_due(cutoff))).scalars())
        owner = {i: t for i, t in owner.items() if i not in keep}
    sent = session.execute(
        select(Outbox.id, Outbox.ticket_id, func.length(Outbox.raw)).where(
            Outbox.ticket_id.in_(ids),
            Outbox.status.in_((OutboxStatus.SENT, OutboxStatus.FAILED)),
            func.length(Outbox.raw) > 0).order_by(Outbox.id)).all()
    if not owner and not sent:
        return
    # In id order: the event lists them (PostgreSQL returns rows as they lie, and an
    # updated row lies elsewhere).
    rows = session.execute(select(Inbound.id, Inbound.size, Inbound.trail)
                           .where(Inbound.id.in_(list(owner))).order_by(Inbound.id)
                           ).all() if owner else []
    per_ticket: dict[int, dict[str, Any]] = {}
    for inbound_id, size, _trail in rows:
        t = per_ticket.setdefault(owner[inbound_id], {"inbound": [], "outbox": [], "bytes": 0})
        t["inbound"].append(inbound_id)
        t["bytes"] += size
    for outbox_id, ticket_id, size in sent:
        t = per_ticket.setdefault(ticket_id, {"inbound": [], "outbox": [], "bytes": 0})
        t["outbox"].append(outbox_id)
        t["bytes"] += int(size or 0)
    out.inbound += len(rows)
    out.outbox += len(sent)
    out.bytes += sum(t["bytes"] for t in per_ticket.values())
    out.tickets += [refs[t] for t in sorted(per_ticket, key=order.__getitem__)]
    if not apply:
        return
    if rows:
        session.execute(update(Inbound), [
            {"id": inbound_id, "raw": b"",
             "trail": [*(trail or []), {
                 "rule": BY, "result": "raw purged",
                 "reason": f"{refs[owner[inbound_id]]} closed more than {days} days ago"}]}
            for inbound_id, _size, trail in rows])
    if sent:
        session.execute(update(Outbox).where(Outbox.id.in_([o for o, _t, _s in sent]))
                        .values(raw=b""))
    for ticket_id, what in per_ticket.items():
        eventlog.record(session, now, "ticket.raw_purged", ticket_id=ticket_id,
                        detail={**what, "raw_days": days, "by": BY})
        log_event(log, "raw mail purged", ticket=refs[ticket_id],
                  inbound=len(what["inbound"]), outbox=len(what["outbox"]),
                  bytes=what["bytes"], raw_days=days)


def _attachments(session: Session, settings: Settings, refs: dict[int, str], cutoff: datetime,
                 days: int, now: datetime, out: Part, apply: bool) -> None:
    ids = list(refs)
    order = {t: i for i, t in enumerate(ids)}
    stored = Blob.location.in_(("database", "directory"))
    used = session.execute(
        select(Attachment.sha256, Message.ticket_id).distinct()
        .join(Message, Message.id == Attachment.message_id)
        .join(Blob, Blob.sha256 == Attachment.sha256)
        .where(Message.ticket_id.in_(ids), stored)).all()
    if not used:
        return
    digests = sorted({d for d, _t in used})
    if apply:
        # Locked before looking who else uses them: a mail stored meanwhile (blobs.put holds
        # the row FOR SHARE) either is seen below or finds the blob purged and stores it anew.
        digests = list(session.execute(
            select(Blob.sha256).where(Blob.sha256.in_(digests), stored)
            .order_by(Blob.sha256).with_for_update()).scalars())
    shared = set(session.execute(
        select(Attachment.sha256).distinct()
        .join(Message, Message.id == Attachment.message_id)
        .join(Ticket, Ticket.id == Message.ticket_id)
        .where(Attachment.sha256.in_(digests), _not_due(cutoff))).scalars())
    gone = [d for d in digests if d not in shared]
    out.kept_shared += len(shared)
    if not gone:
        return
    sizes = {d: int(n) for d, n in session.execute(
        select(Blob.sha256, Blob.size).where(Blob.sha256.in_(gone)))}
    per_ticket: dict[int, list[str]] = {}
    for digest, ticket_id in used:
        if digest in sizes:
            per_ticket.setdefault(ticket_id, []).append(digest)
    out.blobs += len(gone)
    out.bytes += sum(sizes.values())
    out.tickets += [refs[t] for t in sorted(per_ticket, key=order.__getitem__)]
    if not apply:
        return
    blobs.purge(session, settings.attachments, gone)
    for ticket_id, digests_of in per_ticket.items():
        eventlog.record(session, now, "ticket.attachments_purged", ticket_id=ticket_id,
                        detail={"blobs": sorted(digests_of),
                                "bytes": sum(sizes[d] for d in digests_of),
                                "attachments_days": days, "by": BY})
        log_event(log, "attachments purged", ticket=refs[ticket_id], blobs=len(digests_of),
                  bytes=sum(sizes[d] for d in digests_of), attachments_days=days)


def _batch(session: Session, settings: Settings, part: str, now: datetime, cutoff: datetime,
           cursor: Cursor, batch: int, out: Part, apply: bool) -> tuple[int, Cursor]:
    """The next ``batch`` tickets after ``cursor`` closed by ``cutoff``: (how many were
    looked at, the new cursor)."""
    rows = session.execute(_tickets_after(cursor, cutoff, batch)).all()
    if not rows:
        return 0, cursor
    refs = {tid: ref for tid, ref, state, _at in rows if state == State.CLOSED}
    if refs:
        days = days_of(settings, part)
        if part == RAW:
            _raw(session, refs, cutoff, days, now, out, apply)
        else:
            _attachments(session, settings, refs, cutoff, days, now, out, apply)
    last = rows[-1]
    return len(rows), (last.closed_at, last.id)


def purge_batch(session: Session, settings: Settings, part: str, now: datetime,
                batch: int = BATCH, out: Part | None = None) -> int:
    """One batch of ``part`` in the caller's transaction (a step of the lifecycle sweep):
    returns how many tickets it looked at; 0 when the part is off, nothing is due, or
    another instance is purging."""
    cutoff = before(settings, part, now)
    if cutoff is None:
        return 0
    row = _claim_cursor(session, part)
    if row is None:
        return 0
    out = out if out is not None else Part(days_of(settings, part), cutoff)
    seen, cursor = _batch(session, settings, part, now, cutoff, _parse(row.value), batch,
                          out, apply=True)
    if seen:
        row.value = _format(cursor)
    return seen


def purge(sessions: sessionmaker[Session], settings: Settings, now: datetime, *,
          dry_run: bool = False, batch: int = BATCH) -> PurgeResult:
    """Everything due at ``now`` (`mailgate purge`): each batch in its own transaction, or,
    with ``dry_run``, only read and counted."""
    result = PurgeResult(dry_run, now, *(Part(days_of(settings, p), before(settings, p, now))
                                         for p in PARTS))
    for name, part in ((RAW, result.raw), (ATTACHMENTS, result.attachments)):
        if part.before is None:
            continue
        if dry_run:
            with reading(sessions) as session:
                cursor = read_cursor(session, name)
                while True:
                    seen, cursor = _batch(session, settings, name, now, part.before, cursor,
                                          batch, part, apply=False)
                    if seen < batch:
                        break
            continue
        while True:
            with transaction(sessions) as session:
                seen = purge_batch(session, settings, name, now, batch, part)
            if seen < batch:
                break
    return result
