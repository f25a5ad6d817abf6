"""What the ticket policy needs from outside: settings, Message-IDs, texts, calendar."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.calendar import BusinessCalendar
from mailgate.config import Settings
from mailgate.mail.references import MessageIds
from mailgate.outbound.render import Renderer


@dataclass(frozen=True)
class Desk:
    settings: Settings
    ids: MessageIds
    renderer: Renderer
    calendar: BusinessCalendar
