"""What a good request holds — site ID, a meaningful title, a name, a phone number, the error
message, the URL — kept on the ticket, and what the acknowledgement and the reminders must
still ask for.

The mail is read by :func:`mailgate.mail.extract.extract`; this module decides what counts
for the desk: the editor's registered data first, then what the mail says, and a follow-up
that brings a missing item fills it (no reminder asks for it again).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailgate.db.models import Ticket
from mailgate.mail.extract import Extracted, extract
from mailgate.mail.parse import ParsedMail
from mailgate.tickets.access import EditorInfo

MISSING_ITEMS = ("site_id", "title", "name", "phone", "error", "url")

_GENERIC_TITLES = {"", "help", "hulp", "aide", "vraag", "question", "probleem", "problème",
                   "probleme", "problem", "issue", "fout", "erreur", "error", "urgent", "dringend",
                   "request", "demande", "aanvraag", "bug", "website", "site", "melding",
                   "incident", "vraagje", "info", "test"}


def generic_title(subject: str) -> bool:
    title = re.sub(r"[^\w\s]", "", subject).strip().lower()
    return title in _GENERIC_TITLES or len(title) < 4


@dataclass(frozen=True)
class RequestReading:
    """The request as the desk reads it, before it is a ticket."""

    site_id: str | None
    other_site: str | None       # a registered site named that is not the editor's
    urls: tuple[str, ...]
    phone: str
    contact_name: str
    has_error_message: bool
    several_requests: bool


def read(mail: ParsedMail, editor: EditorInfo | None, known_sites: frozenset[str],
         found: Extracted | None = None) -> RequestReading:
    found = found or extract(mail, known_sites)
    named = [s for s in found.site_ids if s in known_sites]
    if editor is not None:
        # An editor writes for their own site; another site's ID is pointed out, not taken.
        site_id: str | None = editor.site_id
        other = next((s for s in named if s != editor.site_id), None)
    else:
        site_id, other = (named[0] if named else None), None
    return RequestReading(
        site_id=site_id, other_site=other, urls=found.urls,
        phone=(editor.phone if editor and editor.phone else
               found.phones[0] if found.phones else ""),
        contact_name=(editor.name if editor and editor.name else
                      found.contact_name or mail.from_name),
        has_error_message=found.has_error_message, several_requests=found.several_requests)


def apply_reading(ticket: Ticket, r: RequestReading) -> None:
    ticket.site_id = r.site_id
    ticket.urls = list(r.urls)
    ticket.phone = r.phone[:50]
    ticket.contact_name = r.contact_name[:200]
    ticket.has_error_message = r.has_error_message
    ticket.missing = missing(ticket)


def missing(ticket: Ticket) -> list[str]:
    """Keys of MISSING_ITEMS the ticket still lacks (templates turn them into sentences)."""
    lacks = {"site_id": not ticket.site_id, "title": generic_title(ticket.subject),
             "name": not ticket.contact_name, "phone": not ticket.phone,
             "error": not ticket.has_error_message, "url": not ticket.urls}
    return [k for k in MISSING_ITEMS if lacks[k]]


def fill_from_follow_up(ticket: Ticket, mail: ParsedMail, known_sites: frozenset[str]) -> list[str]:
    """What a follow-up brings is added to the ticket; returns the items it filled."""
    before = set(ticket.missing or [])
    found = extract(mail, known_sites)
    if not ticket.site_id:
        ticket.site_id = next((s for s in found.site_ids if s in known_sites), None)
    if found.urls:
        ticket.urls = list(dict.fromkeys([*(ticket.urls or []), *found.urls]))[:20]
    if not ticket.phone and found.phones:
        ticket.phone = found.phones[0][:50]
    if not ticket.contact_name and found.contact_name:
        ticket.contact_name = found.contact_name[:200]
    ticket.has_error_message = ticket.has_error_message or found.has_error_message
    ticket.missing = missing(ticket)
    return sorted(before - set(ticket.missing), key=MISSING_ITEMS.index)
