"""SQLAlchemy 2.0 typed models: the durable state of the desk.

Every timestamp is stored as naive UTC and handed out as aware UTC (:class:`UTCDateTime`),
because SQLite keeps no zone and PostgreSQL's ``timestamptz`` would otherwise round-trip
differently on the two engines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from mailgate.db.status import InboundStatus, OutboxStatus

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Editors per site: enforced by the database too, through a slot number 1..3 unique per site.
MAX_EDITORS_PER_SITE = 3


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use the clock")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(), dict[str, Any]: JSON, bytes: LargeBinary}


class Site(Base):
    __tablename__ = "site"
    __table_args__ = (CheckConstraint("length(site_id) = 4", name="site_id_4_digits"),)

    site_id: Mapped[str] = mapped_column(String(4), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]
    editors: Mapped[list[Editor]] = relationship(back_populates="site", order_by="Editor.slot")


class Editor(Base):
    __tablename__ = "editor"
    __table_args__ = (
        UniqueConstraint("site_id", "slot", name="uq_editor_site_slot"),
        CheckConstraint(f"slot >= 1 AND slot <= {MAX_EDITORS_PER_SITE}", name="slot_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("site.site_id", ondelete="CASCADE"))
    slot: Mapped[int]
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    phone: Mapped[str] = mapped_column(String(50), default="")
    language: Mapped[str] = mapped_column(String(2), default="")
    created_at: Mapped[datetime]
    site: Mapped[Site] = relationship(back_populates="editors")


class Agent(Base):
    __tablename__ = "agent"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]


class Counter(Base):
    """Named counters (ticket numbers): UPDATE ... RETURNING is atomic on both engines."""

    __tablename__ = "counter"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class Setting(Base):
    """Values the instances must share, e.g. the generated Message-ID signing secret."""

    __tablename__ = "setting"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Ticket(Base):
    __tablename__ = "ticket"
    __table_args__ = (
        Index("ix_ticket_state", "state"),
        Index("ix_ticket_first_response_due", "first_response_due"),
        Index("ix_ticket_remind_at", "remind_at"),
        Index("ix_ticket_close_at", "close_at"),
        Index("ix_ticket_assignee", "assignee"),
        Index("ix_ticket_sla_alert_at", "sla_alert_at"),
        Index("ix_ticket_priority", "priority"),
        Index("ix_ticket_closed_at", "closed_at"),  # the retention sweep (tickets/retention.py)
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, unique=True)
    ref: Mapped[str] = mapped_column(String(24), unique=True)
    state: Mapped[str] = mapped_column(String(20))
    priority: Mapped[str] = mapped_column(String(10), default="normal")
    kind: Mapped[str] = mapped_column(String(20), default="request")
    site_id: Mapped[str | None] = mapped_column(String(4))
    requester: Mapped[str] = mapped_column(String(254))
    requester_name: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str] = mapped_column(String(998))
    language: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_response_due: Mapped[datetime | None]
    first_response_at: Mapped[datetime | None]
    remind_at: Mapped[datetime | None]
    close_at: Mapped[datetime | None]
    linked_to_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"))
    # The agent who has the ticket (an agent's e-mail), set by #assign or the CLI.
    assignee: Mapped[str | None] = mapped_column(String(254))
    # The clock (docs/design.md §1.5): each due column is set only while something is due,
    # so a sweep reads the due rows through its index, never the whole table.
    waiting_since: Mapped[datetime | None] = mapped_column(default=None)
    reminders_sent: Mapped[int] = mapped_column(default=0, server_default="0")
    # Next first-response alert to the agents: the warning, then the breach, then nothing.
    sla_alert_at: Mapped[datetime | None] = mapped_column(default=None)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    # What the request holds (mail/extract.py), kept up to date by the editor's follow-ups,
    # and what it still lacks (the keys the acknowledgement and reminders ask for).
    urls: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")
    phone: Mapped[str] = mapped_column(String(50), default="", server_default="")
    contact_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    has_error_message: Mapped[bool] = mapped_column(default=False, server_default=false())
    missing: Mapped[list[Any]] = mapped_column(JSON, default=list, server_default="[]")

    messages: Mapped[list[Message]] = relationship(
        back_populates="ticket", order_by="Message.id")
    linked_to: Mapped[Ticket | None] = relationship(remote_side=[id])


class Inbound(Base):
    """Every mail as it arrived: the raw bytes are the truth, all else is derived."""

    __tablename__ = "inbound"
    __table_args__ = (Index("ix_inbound_status", "status", "id"),
                      Index("ix_inbound_ticket_id", "ticket_id"))  # a ticket's mails: retention

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64))
    message_id: Mapped[str] = mapped_column(String(998), default="")
    # sha256 over Message-ID and digest: the idempotency key of docs/design.md §1.2.
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    channel: Mapped[str] = mapped_column(String(40))
    envelope_from: Mapped[str] = mapped_column(String(998), default="")
    envelope_to: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default=InboundStatus.PENDING)
    reason: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(30), default="")
    trail: Mapped[list[Any]] = mapped_column(JSON, default=list)
    attempts: Mapped[int] = mapped_column(default=0)
    processed_at: Mapped[datetime | None]
    # Sender authenticity: "pass: …", "fail: …", or "" when not checked (README, access).
    authenticity: Mapped[str] = mapped_column(String(200), default="")
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"))
    ticket: Mapped[Ticket | None] = relationship()


class Message(Base):
    """One mail on a ticket, in or out, as the agents see it."""

    __tablename__ = "message"
    __table_args__ = (Index("ix_message_message_id", "message_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
    direction: Mapped[str] = mapped_column(String(3))
    kind: Mapped[str] = mapped_column(String(30))
    from_addr: Mapped[str] = mapped_column(String(254))
    to_addrs: Mapped[str] = mapped_column(Text, default="")
    cc_addrs: Mapped[str] = mapped_column(Text, default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    message_id: Mapped[str] = mapped_column(String(998), default="")
    body_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    ticket: Mapped[Ticket] = relationship(back_populates="messages")
    attachments: Mapped[list[Attachment]] = relationship(order_by="Attachment.id")


class Blob(Base):
    """Content-addressed bytes, shared by every instance on the same database."""

    __tablename__ = "blob"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int]
    # "database": bytes in `data`; "directory": a file named by the hash; "raw": over the
    # size cap, so only in the stored raw mail.
    location: Mapped[str] = mapped_column(String(10), default="database")
    data: Mapped[bytes | None] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachment"
    __table_args__ = (Index("ix_attachment_sha256", "sha256"),)  # who uses a blob: retention

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255), default="")
    content_type: Mapped[str] = mapped_column(String(255), default="application/octet-stream")
    content_id: Mapped[str] = mapped_column(String(998), default="")
    size: Mapped[int]
    sha256: Mapped[str] = mapped_column(ForeignKey("blob.sha256"))


class Outbox(Base):
    """Mail to send, written in the transaction that decided to send it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),
                      Index("ix_outbox_ticket_id", "ticket_id"))  # a ticket's mails: retention

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"))
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
    kind: Mapped[str] = mapped_column(String(30))
    sender: Mapped[str] = mapped_column(String(254))
    # Enhanced status code from a bounce (DSN) of this mail, e.g. "5.1.1".
    dsn_status: Mapped[str] = mapped_column(String(20), default="")
    recipients: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    subject: Mapped[str] = mapped_column(String(998), default="")
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(20), default=OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    # A sender claims a row until this time, so two instances never send it twice at once.
    lease_until: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]


class Event(Base):
    """Audit trail: one row per state change, never updated."""

    __tablename__ = "event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("ticket.id"), index=True)
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Written at the commit, all of a transaction's at once (db/eventlog.py): the ids follow
    # the order in which they were recorded.


class AutoAnswer(Base):
    """Automatic mails sent (or suppressed) per address: the loop brake of RFC 3834 §2."""

    __tablename__ = "auto_answer"
    __table_args__ = (Index("ix_auto_answer_address_at", "address", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(254))
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(30))
    suppressed: Mapped[bool] = mapped_column(default=False)
    # Digest of the text answered: the same text again and again is a loop, not a person.
    digest: Mapped[str] = mapped_column(String(64), default="", server_default="")
    inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))


class BouncingAddress(Base):
    """Addresses our mail bounced from, so agents see why an editor hears nothing."""

    __tablename__ = "bouncing_address"

    address: Mapped[str] = mapped_column(String(254), primary_key=True)
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]
    count: Mapped[int] = mapped_column(default=1)
    last_status: Mapped[str] = mapped_column(String(20), default="")
    last_inbound_id: Mapped[int | None] = mapped_column(ForeignKey("inbound.id"))
