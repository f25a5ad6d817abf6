"""Sample contexts for every mail template: what ``mailgate templates check`` renders them with.

One entry per template name, each a list of (label, context) variants. A context holds exactly
the variables the code passes for that mail (see the ``renderer.render`` calls in
mailgate/tickets/), as the same kinds of objects; the variants take every branch a template
has (empty and filled values). A new template, or a new variable, needs its sample here:
the check fails on a template name without samples and on a variable no sample passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailgate.config import DeskSettings
from mailgate.db.models import Ticket

# outbound/ may not import tickets/ (docs/design.md §1.6): stand-ins with the fields of
# tickets.commands.BadLine and tickets.notify.{AutoReplySeen,BounceSeen} (kept the same by
# tests/outbound/test_templates.py), and sample values like tickets.notify.MARKER and
# tickets.commands.ACCEPTED.


@dataclass(frozen=True)
class BadLine:
    line: str
    reason: str


@dataclass(frozen=True)
class AutoReplySeen:
    sender: str
    at: datetime
    text: str


@dataclass(frozen=True)
class BounceSeen:
    to: str
    status: str


MARKER = "##- reply above / antwoord hierboven / répondez au-dessus -##"
ACCEPTED = (
    "#note",
    "#status open|waiting|resolved|closed",
    "#resolve  #close  #reopen  #wait",
    "#priority normal|urgent",
    "#assign <agent e-mail>|me",
    "#site <4-digit site ID>",
    "#link <ticket number, e.g. SD-12>",
    "#requester <e-mail>",
)

TZ = ZoneInfo("Europe/Brussels")
NOW = datetime(2025, 3, 14, 15, 30, tzinfo=TZ)
DUE = datetime(2025, 3, 17, 11, 30, tzinfo=TZ)
CLOSE_ON = datetime(2025, 3, 21, 17, 0, tzinfo=TZ)

DESK = DeskSettings(name="Service Desk Websites", address="servicedesk@example.org",
                    phone="+32 2 555 01 23")
DESK_NO_PHONE = DeskSettings(name="Service Desk Websites", address="servicedesk@example.org")

ALL_MISSING = ["site_id", "title", "name", "phone", "error", "url"]


def _ticket(**values: Any) -> Ticket:
    base: dict[str, Any] = dict(
        number=12, ref="SD-12", state="open", priority="normal", site_id="1234",
        requester="eva.peeters@example.be", requester_name="Eva Peeters",
        subject="Contactformulier geeft fout 500", language="nl", assignee=None,
        created_at=NOW, updated_at=NOW, first_response_due=DUE)
    base.update(values)
    return Ticket(**base)


TICKET = _ticket()
BARE_TICKET = _ticket(site_id=None, requester_name="", subject="", priority="urgent",
                      state="new", first_response_due=None)
ASSIGNED_TICKET = _ticket(state="waiting", assignee="alex@example.org")
URGENT_TICKET = _ticket(priority="urgent", subject="Site ligt plat")
EARLIER = _ticket(number=7, ref="SD-7", state="closed")


def _variants(base: Mapping[str, Any],
              *changes: tuple[str, Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The base context (label "filled") and variants that change some of its values."""
    return [("filled", dict(base)), *((label, {**base, **change}) for label, change in changes)]


_EDITOR = dict(ref="SD-12", desk=DESK, ticket=TICKET, name="Eva Peeters")
_EDITOR_BARE = dict(desk=DESK_NO_PHONE, ticket=BARE_TICKET, name="")

# agent_reply (tickets/service.py) and send_handled (tickets/lifecycle.py).
_ANSWER = dict(_EDITOR, body="Het formulier werkt weer: de mailserver van de site was\n"
                             "tijdelijk onbereikbaar. Zie https://www.example.be/contact.",
               agent_name="Alex Janssens", days=3, close_on=CLOSE_ON)

_AGENTS = dict(marker=MARKER, ref="SD-12", desk=DESK, ticket=TICKET, site_name="Gemeente Voorbeeld")

# service._acknowledge: "ack", or "complaint_ack" for a complaint, with the same context.
_ACK = _variants(
    dict(_EDITOR, missing=ALL_MISSING, due=DUE, linked_to=EARLIER, hours=4.0, urgent=False,
         other_site="5678", several=True, german=True),
    ("empty", dict(_EDITOR_BARE, missing=[], due=None, linked_to=None, hours=8.0,
                   other_site=None, several=False, german=False)),
    ("one missing", dict(missing=["phone"], linked_to=None, other_site=None)),
    ("urgent", dict(ticket=URGENT_TICKET, urgent=True, missing=[])),
    ("urgent, no due time", dict(_EDITOR_BARE, urgent=True, due=None, linked_to=None)),
)

SAMPLES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ack": _ACK,
    "complaint_ack": _ACK,
    # lifecycle.to_editor
    "closed": _variants(_EDITOR, ("empty", _EDITOR_BARE)),
    "closing": _variants(_EDITOR, ("empty", _EDITOR_BARE)),
    "reminder": _variants(
        dict(_EDITOR, question="Welke pagina precies?\n\n> Uw vorige vraag\nEn sinds wanneer?",
             missing=ALL_MISSING, number=2, close_on=CLOSE_ON),
        ("first, nothing asked", dict(_EDITOR_BARE, question="", missing=[], number=1)),
        ("question only", dict(missing=[], number=1)),
        ("missing only", dict(question="  ", missing=["site_id", "url"])),
    ),
    # service.agent_reply (template "handled" when the answer resolves the ticket) and
    # lifecycle.send_handled (no answer text, no agent).
    "handled": _variants(
        _ANSWER,
        ("no text", dict(_EDITOR_BARE, body="", agent_name="", days=1)),
        ("one day", dict(days=1)),
    ),
    "reply": _variants(_ANSWER, ("empty", dict(_EDITOR_BARE, body="", agent_name="Desk"))),
    # service.refuse_stranger
    "refused": _variants(
        dict(subject="Vraag over onze website", sender="someone@example.net", desk=DESK),
        ("empty", dict(subject="", desk=DESK_NO_PHONE)),
    ),
    # notify.notify
    "notify": _variants(
        dict(_AGENTS, event="new", phone="0470 12 34 56", due=DUE, missing=ALL_MISSING,
             text="Het formulier op https://www.example.be/contact geeft een fout 500.\n"
                  "Eva, 0470 12 34 56",
             attachments=["schermafdruk.png", "fout.txt"],
             auto_replies=[AutoReplySeen("eva.peeters@example.be", NOW,
                                         "Afwezig tot maandag."),
                           AutoReplySeen("jan@example.be", NOW, "")],
             bounce=None, assigned_by="", urgent=""),
        ("new, nothing known", dict(ticket=BARE_TICKET, site_name="", phone="", due=None,
                                    missing=[], text="", attachments=[], auto_replies=[])),
        ("site name without site ID", dict(ticket=BARE_TICKET)),
        ("follow-up", dict(event="follow-up", missing=[])),
        ("bounce", dict(event="bounce",
                        bounce=BounceSeen("eva.peeters@example.be", "5.1.1"))),
        ("bounce without status", dict(event="bounce",
                                       bounce=BounceSeen("eva.peeters@example.be", ""))),
        ("bounce unknown", dict(event="bounce")),
        ("assigned by", dict(event="assigned", ticket=ASSIGNED_TICKET,
                             assigned_by="Bea Claes")),
        ("assigned", dict(event="assigned")),
        ("urgent", dict(event="urgent", ticket=URGENT_TICKET, urgent="'ligt plat'")),
        ("urgent, nothing known", dict(event="urgent", ticket=BARE_TICKET, urgent="",
                                       phone="")),
        ("complaint", dict(event="complaint")),
        ("other event", dict(event="updated")),
    ),
    # notify.copy_to_agents
    "note_copy": _variants(
        dict(marker=MARKER, kind="note", ref="SD-12", ticket=TICKET, desk=DESK,
             agent_name="Alex Janssens", agent_email="alex@example.org",
             text="Belde Eva: formulier werkt weer."),
        ("answer", dict(kind="answer")),
        ("empty", dict(text="", agent_name="alex@example.org")),
    ),
    # notify.refuse_commands
    "command_refused": _variants(
        dict(ref="SD-12", desk=DESK, accepted=list(ACCEPTED),
             errors=[BadLine("#status pending", "unknown state: pending"),
                     BadLine("#assign bob@example.org", "not a registered agent"),
                     BadLine("", "this mail is about no ticket")]),
        ("no ticket, one line", dict(ref="", errors=[BadLine("#priority high",
                                                             "unknown priority: high")])),
        ("no line", dict(errors=[BadLine("", "only agents may use commands")],
                         accepted=[])),
    ),
    # lifecycle._sla
    "sla_warning": _variants(
        dict(_AGENTS, due=DUE, used_percent=75),
        ("no site", dict(ticket=BARE_TICKET, site_name="")),
        ("site name only", dict(ticket=BARE_TICKET)),
        ("assigned", dict(ticket=ASSIGNED_TICKET)),
    ),
    "sla_breach": _variants(
        dict(_AGENTS, due=DUE, used_percent=75),
        ("no site", dict(ticket=BARE_TICKET, site_name="")),
        ("site name only", dict(ticket=BARE_TICKET)),
        ("assigned", dict(ticket=ASSIGNED_TICKET)),
    ),
}
