"""Decides what a stored mail is, before anything acts on it (DESIGN §1.4).

Policy is an ordered table of small rules over :class:`Facts`; the first rule that
matches decides, and its name is recorded on the inbound row (``inbound show``).
Facts are gathered once (database look-ups included) so that every rule is a pure function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mailgate.db.models import Ticket
from mailgate.mail.parse import ParsedMail
from mailgate.tickets.access import Sender
from mailgate.tickets.states import State


class Kind(StrEnum):
    NEW = "new-request"
    FOLLOW_UP = "follow-up"
    REOPEN = "after-close"
    LOOP = "loop"
    STRANGER = "stranger"


class Action(StrEnum):
    CREATE = "create"        # new ticket (linked to `ticket` if set)
    APPEND = "append"        # onto `ticket`
    IGNORE = "ignore"        # recorded, nothing sent
    REFUSE = "refuse"        # stranger: no ticket


@dataclass(frozen=True)
class Facts:
    mail: ParsedMail
    sender: Sender
    from_us: bool
    ticket: Ticket | None
    found_by: str              # "references", "subject tag" or ""
    may_write: bool
    accept_unknown: bool


@dataclass(frozen=True)
class Decision:
    kind: Kind
    action: Action
    rule: str
    reason: str
    ticket: Ticket | None = None


Rule = Callable[[Facts], Decision | None]


def loop(f: Facts) -> Decision | None:
    if f.from_us:
        return Decision(Kind.LOOP, Action.IGNORE, "loop",
                        f"sent by our own address {f.mail.from_addr}")
    return None


def follow_up(f: Facts) -> Decision | None:
    if f.ticket is None or not f.may_write:
        return None
    if f.ticket.state == State.CLOSED:
        return Decision(Kind.REOPEN, Action.CREATE, "follow-up-on-closed",
                        f"{f.ticket.ref} is closed ({f.found_by}): new linked ticket", f.ticket)
    return Decision(Kind.FOLLOW_UP, Action.APPEND, "follow-up",
                    f"{f.ticket.ref} found by {f.found_by}", f.ticket)


def known_sender(f: Facts) -> Decision | None:
    if not f.sender.known:
        return None
    note = ""
    if f.ticket is not None:
        # A forward of someone else's ticket must not hijack it: new ticket, nothing leaked.
        note = f" ({f.ticket.ref} referenced, but {f.mail.from_addr} may not write to it)"
    who = "editor" if f.sender.editor is not None else "agent"
    return Decision(Kind.NEW, Action.CREATE, "new-request",
                    f"new request from registered {who}{note}")


def unknown_sender(f: Facts) -> Decision | None:
    if f.accept_unknown:
        return Decision(Kind.NEW, Action.CREATE, "unknown-sender-accepted",
                        f"{f.mail.from_addr} is not registered; access.unknown_senders = accept")
    return Decision(Kind.STRANGER, Action.REFUSE, "unknown-sender-refused",
                    f"{f.mail.from_addr} is neither a registered editor nor an agent")


# First hit wins. Order matters: a loop is never answered, whatever else it looks like.
RULES: tuple[tuple[str, Rule], ...] = (
    ("loop", loop),
    ("follow-up", follow_up),
    ("known-sender", known_sender),
    ("unknown-sender", unknown_sender),
)


def classify(facts: Facts) -> tuple[Decision, list[dict[str, str]]]:
    """The decision and the trail of rules consulted (for `inbound show`)."""
    trail: list[dict[str, str]] = []
    for name, rule in RULES:
        decision = rule(facts)
        if decision is None:
            trail.append({"rule": name, "result": "no match"})
            continue
        trail.append({"rule": name, "result": f"{decision.kind}/{decision.action}",
                      "reason": decision.reason})
        return decision, trail
    raise AssertionError("the last rule always decides")  # pragma: no cover
