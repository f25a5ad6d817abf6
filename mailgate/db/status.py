"""The stored status vocabularies of inbound and outbox rows.

They live beside the models, not beside the ticket states: the ways in and the sender
write them too, and neither may import the ticket policy (docs/design.md §1.6).
"""

from __future__ import annotations

from enum import StrEnum


class InboundStatus(StrEnum):
    PENDING = "pending"          # stored, not processed yet
    TICKET = "ticket"            # made or joined a ticket
    IGNORED = "ignored"          # kept, nothing done (loop, list mail, unproven auto-reply)
    REFUSED = "refused"          # a stranger, answered with a refusal
    QUARANTINED = "quarantined"  # could not be processed; waits for `quarantine replay`


class OutboxStatus(StrEnum):
    PENDING = "pending"  # due at next_attempt_at
    SENT = "sent"        # the relay said 250 (or it is in the Maildir)
    FAILED = "failed"    # refused for good (5xx) or bounced; `outbox retry` makes it due
