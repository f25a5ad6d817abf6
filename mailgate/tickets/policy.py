"""Decides what a stored mail is, before anything acts on it (docs/design.md §1.4).

Policy is an ordered table of small rules over :class:`Facts`; the first rule that
matches decides, and its name is recorded on the inbound row (``inbound show``).
Facts are plain values gathered once (:mod:`mailgate.tickets.facts`, database look-ups
included) so that every rule is a pure function; what a decision then does is one handler
in :mod:`mailgate.tickets.apply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mailgate.mail.authenticity import Verdict
from mailgate.mail.automatic import Automatic
from mailgate.mail.parse import ParsedMail
from mailgate.mail.urgency import Urgency
from mailgate.tickets.access import Sender
from mailgate.tickets.commands import AgentCommand, BadLine
from mailgate.tickets.states import State


class Kind(StrEnum):
    NEW = "new-request"
    FOLLOW_UP = "follow-up"
    REOPEN = "after-close"
    AGENT_REPLY = "agent-reply"
    AGENT_COMMAND = "agent-command"
    COMMAND_REFUSED = "command-refused"
    COMPLAINT = "complaint"
    AUTO_REPLY = "auto-reply"
    BOUNCE = "bounce"
    BULK = "bulk"
    LOOP = "loop"
    UNVERIFIED = "unverified"
    STRANGER = "stranger"
    NO_SENDER = "no-sender"


class Action(StrEnum):
    CREATE = "create"        # new ticket (linked to `ticket` if set)
    APPEND = "append"        # onto `ticket`
    RECORD = "record"        # onto `ticket` for agents to see; no answer, no state change
    BOUNCE = "bounce"        # mark our outgoing mail failed, flag the address
    AGENT = "agent"          # agent's reply, note or command on `ticket`
    REFUSE_COMMAND = "refuse-command"  # agent's wrong command: nothing changes, agent told
    COMPLAINT = "complaint"  # a complaint ticket for the Service Manager (linked to `ticket`)
    IGNORE = "ignore"        # kept in inbound, nothing sent
    REFUSE = "refuse"        # stranger: polite refusal, no ticket


@dataclass(frozen=True)
class TicketInfo:
    """The ticket a mail refers to, as the rules see it."""

    id: int
    ref: str
    state: str
    requester: str = ""
    site_id: str | None = None
    kind: str = "request"


@dataclass(frozen=True)
class Facts:
    mail: ParsedMail
    sender: Sender
    from_us: bool
    ticket: TicketInfo | None
    found_by: str              # "references", "subject tag" or ""
    may_write: bool
    accept_unknown: bool
    automatic: Automatic | None = None
    authenticity: Verdict | None = None   # None: not required by config
    command: AgentCommand | None = None   # parsed for agents only: an editor's '#' is text
    to_comment: bool = False              # addressed to desk.comment_address
    to_complaints: bool = False           # addressed to desk.complaints_address
    urgency: Urgency | None = None        # marked urgent (mail/urgency.py), or not
    accept_stranger_complaints: bool = True


@dataclass(frozen=True)
class Decision:
    kind: Kind
    action: Action
    rule: str
    reason: str
    ticket: TicketInfo | None = None
    errors: tuple[BadLine, ...] = ()      # with REFUSE_COMMAND: the lines and why


Rule = Callable[[Facts], Decision | None]


def loop(f: Facts) -> Decision | None:
    if f.from_us:
        return Decision(Kind.LOOP, Action.IGNORE, "loop",
                        f"sent by our own address or marked with our X-Loop "
                        f"({f.mail.from_addr})")
    return None


def bounce(f: Facts) -> Decision | None:
    a = f.automatic
    if a is None or a.kind != "bounce":
        return None
    return Decision(Kind.BOUNCE, Action.BOUNCE, "bounce",
                    f"delivery failure report ({a.evidence})"
                    + (f", status {a.dsn_status}" if a.dsn_status else ""))


def auto_reply(f: Facts) -> Decision | None:
    a = f.automatic
    if a is None or a.kind != "auto-reply":
        return None
    # An out-of-office that answers our signed mail belongs on that ticket; one that only
    # quotes a tag is trusted only from someone who may write to the ticket.
    if f.ticket is not None and (f.found_by == "references" or f.may_write):
        return Decision(Kind.AUTO_REPLY, Action.RECORD, "auto-reply",
                        f"automatic reply ({a.evidence}), recorded on {f.ticket.ref}",
                        f.ticket)
    return Decision(Kind.AUTO_REPLY, Action.IGNORE, "auto-reply",
                    f"automatic reply ({a.evidence}), no ticket to record it on")


def bulk(f: Facts) -> Decision | None:
    a = f.automatic
    if a is None or a.kind != "bulk":
        return None
    return Decision(Kind.BULK, Action.IGNORE, "bulk", f"list or bulk mail ({a.evidence})")


def no_sender(f: Facts) -> Decision | None:
    """A mail that names no address we could answer (From broken or absent, and no Sender,
    Reply-To or envelope sender): kept and ignored, not quarantined — the program did not
    fail on it, and no answer is possible. Never an address guessed from the broken From."""
    if f.mail.from_addr:
        return None
    shown = f.mail.header("from")
    return Decision(Kind.NO_SENDER, Action.IGNORE, "no-sender",
                    "no usable sender address "
                    + (f"in From: {shown[:120]!r}" if shown else "(no From field)")
                    + ", nor in Sender, Reply-To or the envelope: no answer is possible")


def unverified(f: Facts) -> Decision | None:
    v = f.authenticity
    if v is None or v.verified:
        return None
    return Decision(Kind.UNVERIFIED, Action.IGNORE, "unverified-sender",
                    f"sender {f.mail.from_addr} not authenticated: {v.evidence}")


def complaint(f: Facts) -> Decision | None:
    """Mail to the complaints address is a complaint for the Service Manager — unless it
    continues a complaint already made (then it is that complaint's follow-up)."""
    if not f.to_complaints or f.sender.agent is not None:
        return None
    if f.ticket is not None and f.ticket.kind == "complaint" and f.may_write:
        return None
    if not f.sender.known and not f.accept_stranger_complaints:
        return None  # refused like any stranger's mail
    linked = f.ticket if f.ticket is not None and f.may_write else None
    return Decision(Kind.COMPLAINT, Action.COMPLAINT, "complaint",
                    f"complaint from {'registered ' if f.sender.known else ''}"
                    f"{f.mail.from_addr}" + (f" about {linked.ref}" if linked else ""), linked)


def agent_mail(f: Facts) -> Decision | None:
    if f.sender.agent is None:
        return None
    if f.command is not None and f.command.errors:
        return Decision(Kind.COMMAND_REFUSED, Action.REFUSE_COMMAND, "agent-command-refused",
                        f"agent {f.mail.from_addr}: {f.command.errors[0].reason}", f.ticket,
                        f.command.errors)
    if f.ticket is None:
        if f.to_comment or (f.command is not None and f.command.note):
            why = BadLine("#note" if f.command and f.command.note else "(internal note)",
                          "an internal note needs a ticket: reply to a notification or put "
                          "the ticket number in the subject")
            return Decision(Kind.COMMAND_REFUSED, Action.REFUSE_COMMAND,
                            "agent-command-refused", f"agent {f.mail.from_addr}: {why.reason}",
                            None, (why,))
        return None  # a forward or a request of the agent's own: a new ticket
    if f.command is not None:
        return Decision(Kind.AGENT_COMMAND, Action.AGENT, "agent-command",
                        f"agent {f.mail.from_addr} on {f.ticket.ref} ({f.found_by})", f.ticket)
    return Decision(Kind.AGENT_REPLY, Action.AGENT, "agent-reply",
                    f"agent {f.mail.from_addr} answers {f.ticket.ref} ({f.found_by})", f.ticket)


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


# First hit wins. Order matters: a loop is never answered, whatever else it looks like;
# machines (bounces, auto-replies, lists) are recognised before anyone's rights are looked
# at, and before anything needs a sender; a mail naming no usable sender is ignored (nobody
# to answer); an unauthenticated sender gets nothing; a complaint goes to the Service Manager
# whoever sends it; agents before editors.
RULES: tuple[tuple[str, Rule], ...] = (
    ("loop", loop),
    ("bounce", bounce),
    ("auto-reply", auto_reply),
    ("bulk", bulk),
    ("no-sender", no_sender),
    ("unverified-sender", unverified),
    ("complaint", complaint),
    ("agent", agent_mail),
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
