"""Builds outgoing messages. Headers are made only from checked values (no injection)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from mailgate.mail.addresses import is_valid_address

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")


def safe_header_text(value: str, limit: int = 200) -> str:
    """Free text (a subject, a name) fit for a header: one line, bounded."""
    text = re.sub(r"\s+", " ", _UNSAFE.sub(" ", value or "")).strip()
    return text[:limit]


@dataclass(frozen=True)
class OutAttachment:
    filename: str        # already made safe for display (mail/attachments.display_name)
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Outgoing:
    from_name: str
    from_addr: str
    to: tuple[str, ...]
    subject: str
    body: str
    message_id: str
    in_reply_to: str = ""
    references: tuple[str, ...] = ()
    auto_submitted: str = "auto-replied"
    language: str = ""
    loop_marker: str = ""
    date: datetime | None = None
    cc: tuple[str, ...] = ()
    reply_to: str = ""
    attachments: tuple[OutAttachment, ...] = ()

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.to, *self.cc)


def build(out: Outgoing) -> bytes:
    for addr in (out.from_addr, *out.to, *out.cc, *([out.reply_to] if out.reply_to else [])):
        if not is_valid_address(addr):
            raise ValueError(f"refusing to put {addr!r} in an outgoing header")
    msg = EmailMessage(policy=SMTP)
    msg["From"] = Address(display_name=safe_header_text(out.from_name, 100),
                          addr_spec=out.from_addr)
    msg["To"] = ", ".join(out.to)
    if out.cc:
        msg["Cc"] = ", ".join(out.cc)
    if out.reply_to:
        msg["Reply-To"] = out.reply_to
    msg["Subject"] = safe_header_text(out.subject, 250)
    msg["Message-ID"] = out.message_id
    if out.date is not None:
        msg["Date"] = format_datetime(out.date)
    if out.in_reply_to:
        msg["In-Reply-To"] = out.in_reply_to
    refs = [r for r in out.references if re.fullmatch(r"<[^<>\s]+>", r)][-20:]
    if refs:
        msg["References"] = " ".join(refs)
    if out.auto_submitted:
        msg["Auto-Submitted"] = out.auto_submitted
        # Outlook/Exchange honour this instead of RFC 3834: no out-of-office back to us.
        msg["X-Auto-Response-Suppress"] = "All"
    if out.loop_marker:
        msg["X-Loop"] = out.loop_marker
    if out.language:
        msg["Content-Language"] = out.language
    msg.set_content(out.body, charset="utf-8")
    for att in out.attachments:
        maintype, _, subtype = att.content_type.partition("/")
        # A forwarded mail goes as bytes: message/* parts may not be base64-encoded.
        if (maintype == "message" or not re.fullmatch(r"[\w.+-]+", maintype)
                or not re.fullmatch(r"[\w.+-]+", subtype)):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype,
                           filename=safe_header_text(att.filename, 200) or "attachment")
    return msg.as_bytes()
