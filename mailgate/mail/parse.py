"""Raw bytes → :class:`ParsedMail`, a frozen value the rest of the flow reads.

mail-parser does the MIME walk and decodes the body text (with its charset recovery); we keep
only what the desk needs and refuse (with a reason) what cannot become a ticket entry.

Robustness rules (the raw bytes are always kept in the database, so display text may be
approximate, but nothing may crash and nothing may vanish without a trace):

- Header fields: RFC 2047 encoded words and raw 8-bit (RFC 6532) values are decoded by us,
  charset by charset: an unknown or wrong charset falls back to UTF-8, then windows-1252 with
  U+FFFD for what is left; lone surrogates and NUL never reach a field.
- Every part that is not body text becomes a :class:`ParsedAttachment` (inline images with their
  Content-ID, ``winmail.dat`` as ``application/ms-tnef``, enclosed ``message/rfc822`` as an
  ``.eml`` holding the whole enclosed message); parts of a delivery report are exposed as
  fields instead (:attr:`ParsedMail.delivery_status`, :attr:`ParsedMail.returned_headers`).
- HTML-only mail becomes text through :func:`html_to_text`; the quoted earlier mail is split off
  into :attr:`ParsedMail.quoted_text` by :func:`mailgate.mail.quotes.split_reply`.
- Whatever cannot be read raises :class:`UnparseableMail` with the reason (the worker
  quarantines the mail).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.header
import mimetypes
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

import mailparser

from mailgate.mail.addresses import is_valid_address, normalize
from mailgate.mail.htmltext import html_to_text
from mailgate.mail.quotes import is_forward_subject, split_reply


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
    """One mail as the desk reads it.

    ``from_addr`` is the lower-cased From address. It is ``""`` only for a machine's mail that
    names no usable sender (``From: MAILER-DAEMON``, ``From: <>`` with a null Return-Path or a
    delivery report): such a mail is parsed so that it can be recognised as a bounce; any
    other mail without a valid From address is refused.

    Added for classification and display:

    - ``new_text``: the new part of ``text`` (the quoted earlier mail split off, see
      :mod:`mailgate.mail.quotes`); the whole ``text`` when nothing could safely be split off
      (inline answers, a mail that is only a quote, a forward). Never empty unless ``text`` is.
    - ``quoted_text``: what was split off (``""`` when nothing was).
    - ``report_type``: the ``report-type`` parameter of a ``multipart/report`` in the mail
      (outside enclosed messages), lower-cased: ``delivery-status`` (DSN, RFC 3464),
      ``disposition-notification`` (read receipt, RFC 8098), ``feedback-report`` (abuse
      complaint, RFC 5965); ``""`` when there is none.
    - ``delivery_status``: one dict per recipient of each ``message/delivery-status`` part
      (RFC 3464 per-recipient fields), field names lower-cased, values unfolded:
      ``final-recipient`` ("rfc822; a@b"), ``original-recipient``, ``action`` (failed, delayed,
      delivered, relayed, expanded), ``status`` ("5.1.1"), ``diagnostic-code``,
      ``remote-mta``, … The per-message fields (Reporting-MTA, Arrival-Date) are left out.
    - ``returned_headers``: the header fields (first value of each, lower-cased names, decoded)
      of the first enclosed message — the ``message/rfc822`` or ``text/rfc822-headers`` part.
      For a bounce, that is the mail that bounced: its ``message-id`` leads to our outgoing mail.
    """

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
    new_text: str = ""
    quoted_text: str = ""
    report_type: str = ""
    delivery_status: tuple[dict[str, str], ...] = ()
    returned_headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.new_text:
            object.__setattr__(self, "new_text", self.text)

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
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_MAX_DEPTH = 60

# What mail says vs. what it means (WHATWG encoding practice: declared charsets are often the
# subset of what was really used), and spellings Python does not know.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "utf-8",
    "ascii": "utf-8", "ansi_x3.4-1968": "utf-8", "iso-8859-8-i": "iso-8859-8",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030",
    "big5": "big5hkscs", "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932",
    "x-sjis": "cp932", "euc-kr": "cp949", "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949",
    "windows-874": "cp874", "tis-620": "cp874", "utf8": "utf-8", "uft-8": "utf-8",
    "unicode-1-1-utf-7": "utf-7", "x-unknown": "utf-8", "unknown-8bit": "utf-8",
    "unknown": "utf-8", "default": "utf-8", "x-user-defined": "utf-8",
}


def _codec(charset: str | None) -> str:
    name = (charset or "").strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name)
    try:
        return codecs.lookup(name).name if name else "utf-8"
    except LookupError:
        return "utf-8"


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Text from bytes in a declared charset; never raises, never returns surrogates.

    The declared charset first (unknown names: UTF-8), then UTF-8, then windows-1252 with
    U+FFFD for undefined bytes.
    """
    for name in (_codec(charset), "utf-8"):
        try:
            text = data.decode(name)
        except (UnicodeError, LookupError):
            continue
        return _SURROGATE.sub("\ufffd", text)
    return _SURROGATE.sub("\ufffd", data.decode("cp1252", "replace"))


def _as_bytes(value: object) -> bytes:
    """A stored header value as the bytes that came in (compat32 keeps 8-bit bytes as
    surrogate escapes in its str values)."""
    if isinstance(value, bytes):
        return value
    return str(value or "").encode("utf-8", "surrogateescape")


def _raw_text(value: object) -> str:
    """A stored header value as text: raw 8-bit bytes read as UTF-8, else windows-1252."""
    return decode_bytes(_as_bytes(value))


def _word_bytes(m: re.Match[bytes]) -> bytes | None:
    enc, data = m.group(2).upper(), m.group(3)
    try:
        if enc == b"B":
            data = data.rstrip(b"=")   # senders get the padding wrong both ways
            return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
        return quopri.decodestring(data.replace(b"_", b" "), header=True)
    except (binascii.Error, ValueError):
        return None


def decode_header_value(value: object) -> str:
    """RFC 2047 encoded words and raw 8-bit (RFC 6532) decoded; folding and space collapsed.

    Adjacent encoded words in one charset are joined before decoding (senders split
    multi-byte characters and ISO-2022-JP escape sequences across words); the space between
    two encoded words is dropped, as RFC 2047 §6.2 says.
    """
    data = _as_bytes(value)
    pieces: list[tuple[str | None, bytes]] = []   # (charset of an encoded word | None, bytes)
    pos = 0
    for m in _ENCODED_WORD.finditer(data):
        between = data[pos:m.start()]
        pos = m.end()
        raw = _word_bytes(m)
        after_word = bool(pieces) and pieces[-1][0] is not None
        if between and not (raw is not None and after_word and not between.strip()):
            pieces.append((None, between))
        if raw is None:  # not a valid encoded word: kept as written
            pieces.append((None, m.group(0)))
            continue
        charset = m.group(1).split(b"*", 1)[0].decode("ascii", "replace").lower()
        if pieces and pieces[-1][0] == charset:
            pieces[-1] = (charset, pieces[-1][1] + raw)
        else:
            pieces.append((charset, raw))
    pieces.append((None, data[pos:]))
    text = "".join(decode_bytes(raw, charset) for charset, raw in pieces)
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", text)).strip()


def _msgids(value: str) -> tuple[str, ...]:
    return tuple(_MSGID.findall(value or ""))


def _raw_values(msg: Message, name: str) -> list[str]:
    key = name.lower()
    return [_raw_text(v) for k, v in msg.raw_items() if k.lower() == key]


def _addresses(values: list[str]) -> tuple[str, ...]:
    try:
        pairs = getaddresses(values)
    except Exception:  # email.utils on hostile input: treat as no address
        return ()
    return tuple(normalize(a) for _n, a in pairs if is_valid_address(a))


def _clean(text: str) -> str:
    return _CONTROL.sub("", text or "").strip()


def _headers(msg: Message) -> dict[str, str]:
    """First value of each header, decoded for display, keyed in lower case."""
    out: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = _clean(_raw_text(name)).lower()
        if key and key not in out:
            out[key] = decode_header_value(value)
    return out


def _sender(msg: Message) -> tuple[str, str]:
    """(address, display name) of From, or ("", name) when it names no valid address."""
    values = _raw_values(msg, "From")
    try:
        pairs = getaddresses(values[:1])
    except Exception:
        pairs = []
    for name, addr in pairs:
        if is_valid_address(addr):
            return normalize(addr), _clean(decode_header_value(name))
    name = pairs[0][0] if pairs else ""
    # "Big Bug bb@bug.com", "a@x b@x": no brackets, no commas. The first address-like word.
    for word in re.findall(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+", " ".join(values[:1])):
        if is_valid_address(word):
            return normalize(word), ""
    return "", _clean(decode_header_value(name))


_MACHINE_LOCAL = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|mailerdaemon|"
                            r"mail delivery (?:subsystem|system))$", re.IGNORECASE)


def _machine_without_sender(msg: Message, headers: dict[str, str]) -> bool:
    """A delivery system's mail whose From names no address: kept so it can be classified."""
    if msg.get_content_type() == "multipart/report":
        return True
    if headers.get("return-path", "").replace(" ", "") == "<>":
        return True
    from_value = headers.get("from", "")
    try:
        pairs = getaddresses([from_value])
    except Exception:
        pairs = []
    words = [from_value, *(w for pair in pairs for w in pair)]
    return any(_MACHINE_LOCAL.match(w.split("@", 1)[0].strip(' "<>')) for w in words if w)


# --- the MIME walk for attachments and report parts ---------------------------------------

_BODY_TYPES = ("text/plain", "text/html")
_REPORT_PARTS = ("message/delivery-status", "message/global-delivery-status",
                 "message/disposition-notification", "message/feedback-report")
_ENCLOSED = ("message/rfc822", "message/global", "message/news")
_RECIPIENT_FIELDS = {"final-recipient", "original-recipient", "action", "status"}


@dataclass
class _Walk:
    attachments: list[ParsedAttachment] = field(default_factory=list)
    fallback_text: list[str] = field(default_factory=list)
    report_type: str = ""
    delivery_status: list[dict[str, str]] = field(default_factory=list)
    returned_headers: dict[str, str] = field(default_factory=dict)


def _part_bytes(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/* parsed into parts: their bytes, as sent
        return b"".join(_message_bytes(p) for p in payload if isinstance(p, Message))
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _message_bytes(msg: Message) -> bytes:
    try:
        return msg.as_bytes()
    except Exception:
        try:
            return msg.as_string().encode("utf-8", "surrogateescape")
        except Exception:
            return b""


def _first(part: Message, name: str) -> str | None:
    key = name.lower()
    return next((v for k, v in part.raw_items() if k.lower() == key), None)


def _filename(part: Message) -> str:
    """filename / name parameter (RFC 2231 continuations and charsets included), decoded.

    The parameters are read from a copy of the fields as text, so that a raw 8-bit name is
    decoded like any header rather than mangled by compat32's unknown-8bit handling.
    """
    fields = Message()
    for name in ("Content-Disposition", "Content-Type"):
        value = _first(part, name)
        if value is not None:
            fields[name] = _raw_text(value)
    try:
        name = fields.get_filename() or ""
    except Exception:
        name = ""
    return _clean(decode_header_value(name))


def _field_blocks(part: Message) -> list[dict[str, str]]:
    """The field groups of a message/delivery-status part (RFC 3464 §2.1)."""
    payload = part.get_payload()
    blocks: list[dict[str, str]] = []
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                blocks.append({k.lower(): decode_header_value(v) for k, v in block.raw_items()})
        return blocks
    text = decode_bytes(_part_bytes(part), part.get_content_charset())
    for chunk in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")):
        fields = HeaderParser().parsestr(chunk.strip() + "\n")
        blocks.append({k.lower(): decode_header_value(v) for k, v in fields.raw_items()})
    return blocks


def _enclosed_name(inner: Message | None, filename: str) -> str:
    if filename:
        return filename if filename.lower().endswith(".eml") else f"{filename}.eml"
    subject = decode_header_value(_first(inner, "Subject") or "") if inner is not None else ""
    subject = re.sub(r'[\\/:*?"<>|]+', " ", _clean(subject)).strip(" .")[:80]
    return f"{subject or 'message'}.eml"


def _walk(msg: Message) -> _Walk:
    out = _Walk()
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise UnparseableMail(f"MIME parts nested deeper than {_MAX_DEPTH} levels")
        ctype = part.get_content_type()
        payload = part.get_payload()
        if ctype.startswith("multipart/"):
            if ctype == "multipart/report" and not out.report_type:
                out.report_type = str(part.get_param("report-type") or "").lower().strip()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in reversed(payload) if isinstance(p, Message))
            else:  # no usable boundary: its words are the text, raw MIME lines and all
                out.fallback_text.append(decode_bytes(_part_bytes(part), "utf-8"))
            continue
        if ctype in _REPORT_PARTS:
            if ctype.endswith("delivery-status"):
                out.delivery_status.extend(
                    b for b in _field_blocks(part) if _RECIPIENT_FIELDS & b.keys())
            continue
        if ctype in _ENCLOSED:
            first = payload[0] if isinstance(payload, list) and payload else None
            inner = first if isinstance(first, Message) else None
            data = _message_bytes(inner) if isinstance(inner, Message) else _part_bytes(part)
            if inner is not None and not out.returned_headers:
                out.returned_headers = _headers(inner)
            out.attachments.append(ParsedAttachment(
                filename=_enclosed_name(inner, _filename(part)), content_type="message/rfc822",
                payload=data, content_id=_clean(_raw_text(part.get("Content-ID", "")))))
            continue
        if ctype == "text/rfc822-headers":
            if not out.returned_headers:
                text = decode_bytes(_part_bytes(part), part.get_content_charset())
                out.returned_headers = _headers(HeaderParser().parsestr(text))
            continue
        filename = _filename(part)
        disposition = (part.get_content_disposition() or "").lower()
        if ctype in _BODY_TYPES and not filename and disposition != "attachment":
            continue  # body text: mail-parser decodes it
        data = _part_bytes(part)
        if ctype.startswith("text/") and not filename and disposition != "attachment":
            out.fallback_text.append(decode_bytes(data, part.get_content_charset()))
        if ctype in ("application/ms-tnef", "application/vnd.ms-tnef") \
                or filename.lower() == "winmail.dat":
            ctype, filename = "application/ms-tnef", filename or "winmail.dat"
        out.attachments.append(ParsedAttachment(
            filename=filename, content_type=ctype, payload=data,
            content_id=_clean(_raw_text(part.get("Content-ID", "")))))
    return out


def _message(raw: bytes) -> mailparser.MailParser:
    # Blank or space-only lines before the first header (broken copies, some pipes) would end
    # the header block at once.
    raw = re.sub(rb"\A(?:[ \t]*\r?\n)+", b"", raw)
    try:
        msg = email.message_from_bytes(raw)
        if msg.epilogue is None:
            msg.epilogue = ""  # mail-parser reads it when a boundary is missing
        return mailparser.MailParser(msg)
    except RecursionError as exc:
        raise UnparseableMail("MIME structure nested too deeply to read") from exc
    except Exception as exc:  # mail-parser raises many kinds on broken input
        raise UnparseableMail(f"MIME structure could not be read: {exc!r}") from exc


_UUENCODED = re.compile(r"^begin [0-7]{3,4} ([^\n]+?)[ \t]*\n(.*?)^end[ \t]*$",
                        re.MULTILINE | re.DOTALL)


def _uudecode(block: str) -> bytes | None:
    out = bytearray()
    for line in block.splitlines():
        if not line or line in ("`", " "):
            continue
        try:
            out += binascii.a2b_uu(line)
        except binascii.Error:
            # Some encoders drop trailing spaces: the length byte says how much to expect.
            length = ((ord(line[0]) - 32) & 63) * 4 // 3
            try:
                out += binascii.a2b_uu(line[:length + 1].ljust(length + 1))
            except binascii.Error:
                return None
    return bytes(out)


def _uuencoded_files(text: str) -> tuple[str, list[ParsedAttachment]]:
    """Files pasted into the text as uuencode (Lotus Notes, old clients) become attachments;
    the text keeps a "[attachment: name]" line in their place."""
    found: list[ParsedAttachment] = []

    def take(m: re.Match[str]) -> str:
        data = _uudecode(m.group(2))
        if data is None:
            return m.group(0)
        name = _clean(m.group(1))
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        found.append(ParsedAttachment(filename=name, content_type=ctype, payload=data))
        return f"[attachment: {name}]"

    if "begin " not in text:
        return text, found
    return _UUENCODED.sub(take, text), found


def _body_text(parsed: mailparser.MailParser, walk: _Walk) -> str:
    plain = "\n".join(t for t in parsed.text_plain if t and t.strip()).strip()
    if plain:
        text = plain
    elif any(t and t.strip() for t in parsed.text_html):
        text = html_to_text("\n".join(parsed.text_html))
    else:
        text = "\n".join(t for t in walk.fallback_text if t.strip())
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _SURROGATE.sub("\ufffd", _TEXT_CONTROL.sub("", text)).strip()


def parse(raw: bytes) -> ParsedMail:
    """Parse one stored mail; raises :class:`UnparseableMail` with the reason."""
    parsed = _message(raw)
    msg = parsed.message
    if msg is None or not msg.keys():
        raise UnparseableMail("no header fields found")
    try:
        return _build(parsed, msg)
    except UnparseableMail:
        raise
    except RecursionError as exc:
        raise UnparseableMail("MIME structure nested too deeply to read") from exc
    except Exception as exc:  # a parser bug must quarantine the mail, not stop the worker
        raise UnparseableMail(f"mail could not be read: {exc!r}") from exc


def _build(parsed: mailparser.MailParser, msg: Message) -> ParsedMail:
    headers = _headers(msg)
    from_addr, from_name = _sender(msg)
    if not from_addr and not _machine_without_sender(msg, headers):
        raise UnparseableMail(f"no valid sender address in From: {headers.get('from', '')!r}")
    walk = _walk(msg)
    text, pasted = _uuencoded_files(_body_text(parsed, walk))
    subject = _clean(headers.get("subject", ""))
    new_text, quoted = (text, "") if is_forward_subject(subject) else split_reply(text)
    return ParsedMail(
        message_id=(_msgids(" ".join(_raw_values(msg, "Message-ID"))) or ("",))[0],
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        to=_addresses(_raw_values(msg, "To")),
        cc=_addresses(_raw_values(msg, "Cc")),
        reply_to=next(iter(_addresses(_raw_values(msg, "Reply-To"))), ""),
        in_reply_to=_msgids(" ".join(_raw_values(msg, "In-Reply-To"))),
        references=_msgids(" ".join(_raw_values(msg, "References"))),
        text=text,
        headers=headers,
        attachments=(*walk.attachments, *pasted),
        content_type=msg.get_content_type(),
        new_text=new_text,
        quoted_text=quoted,
        report_type=walk.report_type,
        delivery_status=tuple(walk.delivery_status),
        returned_headers=walk.returned_headers,
    )
