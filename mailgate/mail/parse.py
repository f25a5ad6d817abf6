"""Raw bytes → :class:`ParsedMail`, a frozen value the rest of the flow reads.

mail-parser does the MIME walk and RFC 2047/2231 decoding; we keep only what the
desk needs and refuse (with a reason) what cannot become a ticket entry.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from email.message import Message
from email.utils import getaddresses, parseaddr

import mailparser

from mailgate.mail.addresses import is_valid_address, normalize
from mailgate.mail.htmltext import html_to_text


class UnparseableMail(Exception):
    """The message cannot be read as a mail the desk can act on; the text says why."""


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str
    content_type: str
    payload: bytes
    content_id: str = ""


@dataclass(frozen=True)
class ParsedMail:
    message_id: str
    subject: str
    from_addr: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    reply_to: str
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    attachments: tuple[ParsedAttachment, ...] = ()
    content_type: str = "text/plain"

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """Message-IDs this mail says it answers, nearest first."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)


_MSGID = re.compile(r"<[^<>\s]+>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _msgids(value: str) -> tuple[str, ...]:
    return tuple(_MSGID.findall(value or ""))


def _addresses(values: list[str]) -> tuple[str, ...]:
    return tuple(normalize(a) for _n, a in getaddresses(values) if is_valid_address(a))


def _clean(text: str) -> str:
    return _CONTROL.sub("", text or "").strip()


def _headers(msg: Message) -> dict[str, str]:
    """First value of each header, decoded for display, keyed in lower case."""
    out: dict[str, str] = {}
    for name, value in msg.items():
        key = name.lower()
        if key not in out:
            out[key] = re.sub(r"\s+", " ", str(value)).strip()
    return out


def _attachments(parsed: mailparser.MailParser) -> tuple[ParsedAttachment, ...]:
    out = []
    for att in parsed.attachments:
        payload = att.get("payload") or ""
        if att.get("binary"):
            data = base64.b64decode(payload)
        else:
            data = payload.encode(att.get("charset") or "utf-8", "surrogateescape") \
                if isinstance(payload, str) else bytes(payload)
        cid = (att.get("content-id") or "").strip()
        out.append(ParsedAttachment(
            filename=_clean(att.get("filename") or ""),
            content_type=(att.get("mail_content_type") or "application/octet-stream").lower(),
            payload=data, content_id=cid))
    return tuple(out)


def parse(raw: bytes) -> ParsedMail:
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises many kinds on broken input
        raise UnparseableMail(f"MIME structure could not be read: {exc}") from exc
    msg = parsed.message
    if msg is None or not msg.keys():
        raise UnparseableMail("no header fields found")
    headers = _headers(msg)
    from_name, from_addr = parseaddr(msg.get("From", "") or "")
    if not is_valid_address(from_addr):
        raise UnparseableMail(f"no valid sender address in From: {headers.get('from', '')!r}")
    text = "\n".join(t for t in parsed.text_plain if t).strip()
    if not text and parsed.text_html:
        text = html_to_text("\n".join(parsed.text_html))
    try:
        attachments = _attachments(parsed)
    except (ValueError, TypeError) as exc:
        raise UnparseableMail(f"attachment could not be decoded: {exc}") from exc
    return ParsedMail(
        message_id=(_msgids(msg.get("Message-ID", "")) or ("",))[0],
        subject=_clean(parsed.subject or ""),
        from_addr=normalize(from_addr),
        from_name=_clean(_decoded_name(parsed, from_name)),
        to=_addresses(msg.get_all("To", []) or []),
        cc=_addresses(msg.get_all("Cc", []) or []),
        reply_to=next(iter(_addresses(msg.get_all("Reply-To", []) or [])), ""),
        in_reply_to=_msgids(msg.get("In-Reply-To", "")),
        references=_msgids(re.sub(r"\s+", " ", msg.get("References", "") or "")),
        text=text,
        headers=headers,
        attachments=attachments,
        content_type=msg.get_content_type(),
    )


def _decoded_name(parsed: mailparser.MailParser, fallback: str) -> str:
    pairs = parsed.from_ or []
    return pairs[0][0] if pairs and pairs[0][0] else fallback
