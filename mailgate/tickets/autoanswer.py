"""The loop brake on automatic mail (RFC 3834 §2 asks responders to limit their answers;
Zammad does the same per recipient).

The brake sits where loops live, and never costs a real user their ticket number:
- a registered editor's acknowledgements have a ceiling no person reaches
  (``[access] acks_per_hour``, 60): twenty requests after a weekend get twenty numbers;
- everything else automatic — refusals to strangers, the clock's reminders, answers to an
  address whose mail bounces — keeps the tight limit (``auto_replies_per_hour``, 5);
- the same mail (subject and text) from the same address, again and again, is a machine
  answering us: after :data:`SAME_TEXT_PER_HOUR` answers to it in an hour, no more;
- a machine that varies its mail and carries no automatic-mail marks still meets the
  editors' ceiling: a loop of at most ``acks_per_hour`` mails an hour, never an endless one;
- the desk also relays between people: an editor's follow-up is told to the agents, an
  agent's answer goes to the editor. Two auto-responders without automatic-mail marks, one
  behind an editor's address and one behind an agent's, would answer each other through
  it for ever; the same text from the same address on the same ticket more than
  :data:`SAME_TEXT_PER_HOUR` times in an hour is kept on the ticket but passed on no more
  (:func:`same_text_on_ticket`, tests/test_loops.py).

Every automatic mail, sent or suppressed, leaves a row, so `inbound show` and agents can see
why an editor got no acknowledgement.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta

from sqlalchemy import bindparam, case, func, select
from sqlalchemy.orm import Session

from mailgate.db import deferred, eventlog
from mailgate.db.models import AutoAnswer, BouncingAddress, Message

WINDOW = timedelta(hours=1)
SAME_TEXT_PER_HOUR = 3
# A flagged address counts as bouncing this long after its last bounce.
BOUNCE_MEMORY = timedelta(days=7)


def text_digest(subject: str, text: str) -> str:
    """The mail's text without reply prefixes, case or spacing. Numbers count: thirty
    requests "Melding 1" … "Melding 30" with the same body are thirty requests."""
    def norm(value: str) -> str:
        return re.sub(r"\s+", " ", value).strip().lower()
    subject = re.sub(r"^\s*((re|aw|antw|tr|fwd?|wg)\s*:\s*)+", "", subject, flags=re.I)
    return hashlib.sha256(f"{norm(subject)}\n{norm(text)}".encode()).hexdigest()


# Built once (a statement object keeps its cache key); the values are bound at each use.
# The address's bounce flag, read with the brake's counts: the session's own copy if it has
# one, else one column (most addresses have no row, and the ORM's lookup of a missing one
# cost as much as the rest of the acknowledgement, bench/mix.py --profile).
_LAST_BOUNCE = select(BouncingAddress.last_at).where(
    BouncingAddress.address == bindparam("address"))
# The brake's two counts and the address's bounce flag in one statement: on PostgreSQL each
# statement is a round trip, and an acknowledgement needs all three.
_COUNTS = (select(func.count(), func.coalesce(func.sum(
    case((AutoAnswer.digest == bindparam("digest"), 1), else_=0)), 0),
    _LAST_BOUNCE.scalar_subquery())
    .where(AutoAnswer.address == bindparam("address"), AutoAnswer.at > bindparam("since"),
           AutoAnswer.suppressed.is_(False)))


def _own_flag(session: Session, address: str) -> BouncingAddress | None:
    """The session's own copy of the address's bounce flag, if it has one (a bounce this
    transaction recorded, not written yet)."""
    return session.identity_map.get(session.identity_key(BouncingAddress, address)) or next(
        (o for o in session.new if isinstance(o, BouncingAddress) and o.address == address),
        None)


def _bounced(last_at: datetime | None, now: datetime) -> bool:
    return last_at is not None and last_at > now - BOUNCE_MEMORY


def allow(session: Session, address: str, kind: str, now: datetime, per_hour: int,
          inbound_id: int | None, ticket_id: int | None = None, *, digest: str = "",
          bouncing_per_hour: int | None = None) -> bool:
    """True if this automatic mail may go; records it either way. ``bouncing_per_hour``:
    the limit instead of ``per_hour`` while the address bounces."""
    since = now - WINDOW
    # Both counts in one look: all answers to the address this hour, and those to this text;
    # on the session's connection, adding the answers recorded but not written yet.
    sent, same, bounced_at = session.connection().execute(
        _COUNTS, {"digest": digest, "address": address, "since": since}).one()
    for o in deferred.pending(session, AutoAnswer):
        if o["address"] == address and o["at"] > since and not o["suppressed"]:
            sent, same = sent + 1, same + (o["digest"] == digest)
    if bouncing_per_hour is not None:
        flag = _own_flag(session, address)
        if _bounced(flag.last_at if flag is not None else bounced_at, now):
            per_hour = bouncing_per_hour
    reason = f"{per_hour} automatic mails an hour reached" if sent >= per_hour else ""
    if not reason and digest and same >= SAME_TEXT_PER_HOUR:
        reason = f"the same text answered {same} times this hour (a loop)"
    deferred.add(session, AutoAnswer, {"address": address, "at": now, "kind": kind,
                                       "suppressed": bool(reason), "inbound_id": inbound_id,
                                       "digest": digest})
    if reason:
        eventlog.record(session, now, "answer.suppressed", ticket_id=ticket_id,
                        inbound_id=inbound_id,
                        detail={"to": address, "kind": kind, "reason": reason})
    return not reason


def same_text_on_ticket(session: Session, ticket_id: int, sender: str, subject: str,
                        text: str, now: datetime) -> int:
    """How many mails with this text (reply prefixes, case and spacing aside) `sender` put
    on the ticket in the last hour. A person does not send the same words again and again;
    an auto-responder answering the desk's mails does."""
    digest = text_digest(subject, text)
    rows = session.execute(select(Message.subject, Message.body_text).where(
        Message.ticket_id == ticket_id, Message.direction == "in",
        func.lower(Message.from_addr) == sender.lower(), Message.created_at > now - WINDOW))
    return sum(text_digest(subj, body) == digest for subj, body in rows)
