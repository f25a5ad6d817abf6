"""Raw bytes → :class:`ParsedMail`, a frozen value the rest of the flow reads.

mail-parser does the MIME walk and decodes the body text (with its charset recovery); we keep
only what the desk needs and refuse (with a reason) what cannot become a ticket entry.

Robustness rules (the raw bytes are always kept in the database, so display text may be
approximate, but nothing may crash and nothing may vanish without a trace):

- Header fields: RFC 2047 encoded words and raw 8-bit (RFC 6532) values are decoded by us,
  charset by charset: an unknown or wrong charset falls back to UTF-8, then a detector
  (charset-normalizer), then windows-1252 with U+FFFD for what is left. Raw 8-bit values with
  no charset of their own are read as UTF-8 when they are, else in the charsets the message
  declares elsewhere (its parts, its encoded words), else as the detector says over all of
  the message's 8-bit header bytes. Lone surrogates and NUL never reach a field. Encoded
  words with spaces inside (against RFC 2047, some clients write them) are decoded.
- Header lines a gateway unfolded (continuation lines that lost their leading space) are put
  back as continuations when a known header field follows them, so From, To and Subject do
  not fall into the body.
- The sender: the first usable address of the From fields (several From fields: the first
  good one; a trailing dot after the domain dropped), else Sender, Reply-To, the envelope
  sender, Return-Path — never a piece of an address: ``<power quadrant system@x>`` is no
  address, and ``system@x`` is not guessed out of it. A mail with no usable sender at all is
  parsed (``from_addr == ""``): it may be a bounce, and the desk ignores it with that reason.
- Body text parts declared in a charset that is really a subset of what was written
  (GB2312 holding GBK, Shift_JIS holding cp932, …) are decoded in the superset; a part whose
  declared charset fails is decoded in the detected one.
- MIME nested deeper than :data:`MAX_DEPTH` levels: the parts below are not read (a line in
  the text says so); the mail is kept and parsed, never refused for it.
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
import itertools
import mimetypes
import quopri
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses

import mailparser
from charset_normalizer import from_bytes as _detect_charsets

from mailgate.mail import bigparts
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
    # Where from_addr came from: "from", "sender", "reply-to", "envelope", "return-path";
    # "" when the mail names no usable sender.
    sender_header: str = "from"
    # What pure functions of the mail worked out once (extract.extract): kept with the mail,
    # so that the parse-ahead helper can work it out beside the parse, off the worker's
    # interpreter lock. Not part of the mail's value; a replace() starts afresh.
    derived: dict[str, object] = field(default_factory=dict, init=False, compare=False,
                                       repr=False)

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


# ASCII only: a Message-ID goes back out in In-Reply-To/References, which are ASCII (an
# 8-bit one, "<é1@x>", is dropped rather than break the answer).
_MSGID = re.compile(r"<[!-;=?-~]+>")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# The encoded text may hold spaces: "=?UTF-8?Q? Personal=C3=A4nderung?=" (against RFC 2047,
# written by some clients); it never holds "?", so a match ends at the first "?=".
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([QqBb])\?([^?\r\n]*)\?=")
MAX_DEPTH = 60
_TOO_DEEP = (f"[MIME parts nested deeper than {MAX_DEPTH} levels were not read; "
             "the raw mail is kept]")

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


# The legacy charsets mail is written in, for the detector to choose from (it would otherwise
# also consider UTF-16 and the like, which no header is written in).
_DETECT_AMONG = ["gb18030", "cp932", "euc_jp", "big5hkscs", "cp949", "cp1251", "koi8_r",
                 "cp1250", "cp1252", "iso8859_2", "cp1253", "cp1254", "cp1255", "cp1256",
                 "cp1257", "cp874", "iso2022_jp"]


# Single-byte charsets the detector confuses with windows-1252 on short Western text
# ("Problème" read as windows-1250 "Problčme"): the desk's mail is Western European first.
_NEAR_CP1252 = {"cp1250", "iso8859-2", "cp1257", "cp1254", "iso8859-15", "iso8859-9"}


def detect_charset(data: bytes) -> str | None:
    """The codec charset-normalizer finds for these bytes, among the charsets mail is written
    in; ``None`` when it finds none. Reliable from a few dozen 8-bit bytes on, not below."""
    try:
        best = _detect_charsets(data, cp_isolation=_DETECT_AMONG).best()
    except Exception:  # a detector bug must not stop the parse
        return None
    if best is None:
        return None
    codec = _codec(best.encoding)
    if codec in _NEAR_CP1252 and _strict(data, "cp1252") is not None:
        return "cp1252"
    return codec


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeError, LookupError):
        return None


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Text from bytes in a declared charset; never raises, never returns surrogates.

    The declared charset first (unknown names: UTF-8), then UTF-8, then the detected
    charset, then windows-1252 with U+FFFD for undefined bytes.
    """
    for name in (_codec(charset), "utf-8"):
        text = _strict(data, name)
        if text is not None:
            return _SURROGATE.sub("\ufffd", text)
    detected = detect_charset(data)
    text = _strict(data, detected) if detected else None
    if text is not None:
        return _SURROGATE.sub("\ufffd", text)
    return _SURROGATE.sub("\ufffd", data.decode("cp1252", "replace"))


class Charsets:
    """How one message's raw 8-bit header bytes (no charset of their own) are read.

    UTF-8 when they are valid UTF-8 (legacy 8-bit text almost never is by accident); else the
    charsets the message declares for its parts and encoded words, in order (a mail written
    in GBK declares gb2312 in its Content-Type and leaves its file names raw); else what the
    detector finds over all the message's 8-bit header bytes together (one short name alone
    is too little for it); else windows-1252.
    """

    def __init__(self, msg: Message | None = None) -> None:
        # Read from the message the first time a value needs them: most mail has no raw
        # 8-bit header at all, and then the walk is not worth its time.
        self._msg = msg
        self._read: tuple[tuple[str, ...], bytes] | None = None if msg is not None else ((), b"")
        self._detected: str | bool | None = False   # False: not looked for yet

    def _declared_and_sample(self) -> tuple[tuple[str, ...], bytes]:
        if self._read is None:
            assert self._msg is not None
            self._read = _declared_charsets(self._msg)
        return self._read

    @property
    def declared(self) -> tuple[str, ...]:
        return self._declared_and_sample()[0]

    def freeze(self) -> None:
        """Read the message now, before the body parts get the charsets that read them."""
        self._declared_and_sample()

    def detected(self) -> str | None:
        if self._detected is False:
            sample = self._declared_and_sample()[1]
            self._detected = detect_charset(sample) if sample else None
        return self._detected if isinstance(self._detected, str) else None

    def text(self, data: bytes) -> str:
        if data.isascii():
            return data.decode("ascii")
        for codec in ("utf-8", *self.declared):
            text = _strict(data, codec)
            if text is not None:
                return _SURROGATE.sub("\ufffd", text)
        detected = self.detected() or detect_charset(data)
        text = _strict(data, detected) if detected else None
        if text is not None:
            return _SURROGATE.sub("\ufffd", text)
        return _SURROGATE.sub("\ufffd", data.decode("cp1252", "replace"))


_PLAIN = Charsets()
_CHARSET_PARAM = re.compile(rb"charset\s*=\s*\"?([A-Za-z0-9._:+-]+)", re.IGNORECASE)


def _declared_charsets(msg: Message) -> tuple[tuple[str, ...], bytes]:
    """The charsets this message declares (parts first, then encoded words), and the sample
    of its 8-bit header bytes for the detector."""
    declared: dict[str, None] = {}
    sample = bytearray()
    parts: list[Message] = [msg]
    seen = 0
    while parts and seen < 200:   # bounded: a hostile mail may have thousands of parts
        part = parts.pop(0)
        seen += 1
        for _name, value in part.raw_items():
            data = _as_bytes(value)
            if not data.isascii():
                sample += data + b"\n"
            for m in _ENCODED_WORD.finditer(data):
                declared.setdefault(_codec(m.group(1).split(b"*", 1)[0].decode(
                    "ascii", "replace")), None)
        charset = _CHARSET_PARAM.search(_as_bytes(part.get("Content-Type", "")))
        if charset:
            declared.setdefault(_codec(charset.group(1).decode("ascii", "replace")), None)
        payload = part.get_payload()
        if isinstance(payload, list):
            parts.extend(p for p in payload if isinstance(p, Message))
    declared.pop("utf-8", None)
    return tuple(declared), bytes(sample[:20000])


def _as_bytes(value: object) -> bytes:
    """A stored header value as the bytes that came in (compat32 keeps 8-bit bytes as
    surrogate escapes in its str values)."""
    if isinstance(value, bytes):
        return value
    return str(value or "").encode("utf-8", "surrogateescape")


def _raw_text(value: object, charsets: Charsets = _PLAIN) -> str:
    """A stored header value as text: raw 8-bit bytes read as :class:`Charsets` says."""
    return charsets.text(_as_bytes(value))


def _word_bytes(m: re.Match[bytes]) -> bytes | None:
    enc, data = m.group(2).upper(), m.group(3)
    try:
        if enc == b"B":
            # Senders get the padding wrong both ways.
            data = re.sub(rb"\s+", b"", data).rstrip(b"=")
            return base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
        return quopri.decodestring(data.replace(b"_", b" "), header=True)
    except (binascii.Error, ValueError):
        return None


def decode_header_value(value: object, charsets: Charsets = _PLAIN) -> str:
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
    text = "".join(decode_bytes(raw, charset) if charset is not None else charsets.text(raw)
                   for charset, raw in pieces)
    return re.sub(r"\s+", " ", _CONTROL.sub(" ", text)).strip()


def _msgids(value: str) -> tuple[str, ...]:
    return tuple(_MSGID.findall(value or ""))


def _raw_values(msg: Message, name: str, charsets: Charsets = _PLAIN) -> list[str]:
    key = name.lower()
    return [_raw_text(v, charsets) for k, v in msg.raw_items() if k.lower() == key]


def _addresses(values: list[str]) -> tuple[str, ...]:
    try:
        pairs = getaddresses(values)
    except Exception:  # email.utils on hostile input: treat as no address
        return ()
    return tuple(u for _n, a in pairs if (u := usable_address(a)))


def _clean(text: str) -> str:
    return _CONTROL.sub("", text or "").strip()


def _headers(msg: Message, charsets: Charsets = _PLAIN) -> dict[str, str]:
    """First value of each header, decoded for display, keyed in lower case."""
    out: dict[str, str] = {}
    for name, value in msg.raw_items():
        key = _clean(_raw_text(name)).lower()
        if key and key not in out:
            out[key] = decode_header_value(value, charsets)
    return out


def usable_address(addr: str) -> str:
    """The address, lower-cased, if it is one we may write to; else "". The trailing dot of
    a fully qualified domain (``user@yahoo.com.``) is dropped; nothing else is changed."""
    addr = (addr or "").strip()
    if "@" in addr:
        addr = addr.rstrip(".") if not addr.endswith("..") else addr
    quoted = re.fullmatch(r'"([^"\\]+)"(@.+)', addr)
    if quoted:  # "#FAX#123"@x is #FAX#123@x when the quotes hold no special character
        addr = quoted.group(1) + quoted.group(2)
    return normalize(addr) if is_valid_address(addr) else ""


def _address_in(value: str) -> tuple[str, str] | None:
    """(address, display name) of the first usable address in one address header value.

    An address in angle brackets is taken whole or not at all: ``<power quadrant
    system@example.com>`` names no address, and ``system@example.com`` is a stranger's.
    Without brackets, "Big Bug bb@bug.com" (a name and an address, no quotes): the
    address-like word."""
    try:
        pairs = getaddresses([value])
    except Exception:
        pairs = []
    for name, addr in pairs:
        found = usable_address(addr)
        if found:
            return found, name
    if "<" in value or '"' in value:
        return None
    for word in re.findall(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+", value):
        found = usable_address(word)
        if found:
            return found, ""
    return None


def _sender(msg: Message, charsets: Charsets, envelope_from: str) -> tuple[str, str, str]:
    """(address, display name, where it came from); ("", name, "") without a usable one.

    From first (every From field, in order: a junk first one does not hide a good second);
    then Sender, Reply-To, the envelope sender, Return-Path: real addresses the mail names,
    in the order the mail's author meant them — never one guessed from a broken From."""
    from_values = _raw_values(msg, "From", charsets)
    name = ""
    for value in from_values:
        found = _address_in(value)
        if found is not None:
            return found[0], _clean(decode_header_value(found[1], charsets)), "from"
        if not name:
            try:
                pairs = getaddresses([value])
            except Exception:
                pairs = []
            name = next((n for n, _a in pairs if n), "")
            if not name and "@" not in value and "<" not in value:
                name = value   # "From: Kijitora": a name with no address at all
    name = _clean(decode_header_value(name, charsets))
    fallbacks = [("sender", v) for v in _raw_values(msg, "Sender", charsets)]
    fallbacks += [("reply-to", v) for v in _raw_values(msg, "Reply-To", charsets)]
    fallbacks.append(("envelope", envelope_from))
    fallbacks += [("return-path", v) for v in _raw_values(msg, "Return-Path", charsets)]
    for source, value in fallbacks:
        found = _address_in(value) if value else None
        if found is not None:
            return found[0], name or _clean(decode_header_value(found[1], charsets)), source
    return "", name, ""


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
    too_deep: bool = False
    # Body text parts in document order, each with the multipart/alternative it is one
    # choice of (its id and which branch), or None when it stands on its own in the mail.
    body_parts: list[tuple[tuple[int, int] | None, str, Message]] = field(default_factory=list)


_UU_CTES = ("x-uuencode", "uuencode", "uue", "x-uue")


def _part_bytes(part: Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, list):  # message/* parsed into parts: their bytes, as sent
        return b"".join(_message_bytes(p) for p in payload if isinstance(p, Message))
    data: object = bigparts.decoded(part)  # a big base64 attachment: from the raw bytes
    if data is None:
        data = part.get_payload(decode=True)
    if isinstance(data, bytes) and isinstance(payload, str) \
            and str(part.get("Content-Transfer-Encoding", "")).strip().lower() in _UU_CTES \
            and not re.search(r"^begin ", payload, re.MULTILINE):
        # x-uuencode without the "begin" line (Mac mailers): Python hands the encoded text
        # back as it is; the lines alone decode all the same.
        decoded = _uudecode(re.sub(r"(?m)^end[ \t]*$", "", payload.strip()))
        data = decoded if decoded is not None else data
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


def _filename(part: Message, charsets: Charsets = _PLAIN) -> str:
    """filename / name parameter (RFC 2231 continuations and charsets included), decoded.

    The parameters are read from a copy of the fields as text, so that a raw 8-bit name is
    decoded like any header rather than mangled by compat32's unknown-8bit handling.
    """
    fields = Message()
    for name in ("Content-Disposition", "Content-Type"):
        value = _first(part, name)
        if value is not None:
            fields[name] = _raw_text(value, charsets)
    try:
        name = fields.get_filename() or ""
    except Exception:
        name = ""
    return _clean(decode_header_value(name, charsets))


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


def _walk(msg: Message, charsets: Charsets = _PLAIN) -> _Walk:
    out = _Walk()
    stack: list[tuple[Message, int, tuple[int, int] | None]] = [(msg, 0, None)]
    while stack:
        part, depth, choice = stack.pop()
        if depth > MAX_DEPTH:
            out.too_deep = True   # not read; the raw mail keeps it
            continue
        ctype = part.get_content_type()
        payload = part.get_payload()
        if ctype == _CUT_TYPE.decode():
            out.too_deep = True
            continue
        if ctype.startswith("multipart/"):
            if ctype == "multipart/report" and not out.report_type:
                out.report_type = str(part.get_param("report-type") or "").lower().strip()
            if isinstance(payload, list):
                children = [p for p in payload if isinstance(p, Message)]
                alternative = ctype == "multipart/alternative"
                stack.extend((p, depth + 1, (id(part), i) if alternative else choice)
                             for i, p in reversed(list(enumerate(children))))
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
                out.returned_headers = _headers(inner, charsets)
            out.attachments.append(ParsedAttachment(
                filename=_enclosed_name(inner, _filename(part, charsets)),
                content_type="message/rfc822",
                payload=data, content_id=_clean(_raw_text(part.get("Content-ID", "")))))
            continue
        if ctype == "text/rfc822-headers":
            if not out.returned_headers:
                text = decode_bytes(_part_bytes(part), part.get_content_charset())
                out.returned_headers = _headers(HeaderParser().parsestr(text))
            continue
        filename = _filename(part, charsets)
        disposition = (part.get_content_disposition() or "").lower()
        if ctype in _BODY_TYPES and not filename and disposition != "attachment":
            out.body_parts.append((choice, ctype, part))
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


# --- repairs before Python's parser sees the bytes ----------------------------------------

_FIELD_LINE = re.compile(rb"[!-9;-~]+[ \t]*:")
# Fields a mail's header block is made of: one of these after an orphan line shows that the
# header block goes on (a gateway unfolded the lines), where "Note: …" in a body would not.
_KNOWN_FIELD = re.compile(
    rb"(?:from|to|cc|bcc|subject|date|message-id|received|return-path|reply-to|sender|"
    rb"in-reply-to|references|mime-version|content-[a-z-]+|x-[!-9;-~]+|delivered-to|"
    rb"importance|priority|thread-[a-z]+|list-[a-z-]+|dkim-signature|authentication-results|"
    rb"arc-[a-z-]+|user-agent|organization|precedence|auto-submitted|accept-language|"
    rb"received-spf)[ \t]*:", re.IGNORECASE)


def repair_unfolded_headers(raw: bytes) -> bytes:
    """Continuation lines that lost their leading whitespace get it back.

    A gateway that strips it leaves lines like ``by mx.example (Postfix) …`` or the rest of a
    long ``X-…-Tracker:`` value on their own; Python's parser would end the header block at
    the first one and read From, To and Subject as body text. Such a line is a continuation
    when a known header field follows it before the blank line that ends the header block.
    """
    if raw[:1] in (b" ", b"\t") and _FIELD_LINE.match(raw.lstrip(b" \t")):
        raw = raw.lstrip(b" \t")   # " From: …" on the first line: an indented header
    m = re.search(rb"\r?\n\r?\n", raw)
    end = m.start() + 1 if m else len(raw)
    lines = raw[:end].splitlines(keepends=True)
    kinds: list[str] = []
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t"):
            kinds.append("cont")
        elif _FIELD_LINE.match(line) or (i == 0 and line.startswith(b"From ")):
            kinds.append("field")
        else:
            kinds.append("orphan")
    if kinds and kinds[0] == "orphan":
        # A line of junk above the header fields ("---- Original email message ----", a
        # copy pasted by a gateway): the mail starts at the first known field, if one of the
        # next few lines is one (the stored raw mail keeps the line).
        first = next((i for i, k in enumerate(kinds[:5]) if k == "field"), None)
        if first is None or not _KNOWN_FIELD.match(lines[first]):
            return raw
        return repair_unfolded_headers(raw[sum(len(x) for x in lines[:first]):])
    if "orphan" not in kinds:
        return raw
    known_after = [False] * (len(lines) + 1)
    for i in range(len(lines) - 1, -1, -1):
        known_after[i] = known_after[i + 1] or (
            kinds[i] == "field" and bool(_KNOWN_FIELD.match(lines[i])))
    out = [b" " + line if kind == "orphan" and known_after[i + 1] else line
           for i, (line, kind) in enumerate(zip(lines, kinds, strict=True))]
    return b"".join(out) + raw[end:]


_BOUNDARY = re.compile(rb"boundary\s*=\s*(?:\"([^\"\r\n]+)\"|([^\s;\"]+))", re.IGNORECASE)
_CONTENT_TYPE = re.compile(rb"content-type[ \t]*:[ \t]*([A-Za-z0-9!#$&^_.+-]+/"
                           rb"[A-Za-z0-9!#$&^_.+-]+)", re.IGNORECASE)


_CUT_TYPE = b"application/x-mailgate-too-deep"
_NESTING = re.compile(rb"(?i)boundary\s*=|message/")


_CHUNK = 1 << 20


def _may_be_too_deep(raw: bytes, window: int = 5_000_000) -> bool:
    """Whether the first ``window`` bytes hold more than MAX_DEPTH nesting marks. First an
    upper bound at C speed (each mark holds one of the two words): 0.3 ms for a 270 KB mail
    with a screenshot, where the case-blind pattern alone took 6 ms. The pattern counts
    only where the bound is passed, as far as needed."""
    view, bound = memoryview(raw)[:window], 0
    for start in range(0, len(view), _CHUNK):
        # A MiB at a time (a big mail's copy stays small); a word across the cut is in the
        # first piece, one inside the overlap in both: still an upper bound.
        piece = bytes(view[start:start + _CHUNK + 16]).lower()
        bound += piece.count(b"boundary") + piece.count(b"message/")
        if bound > MAX_DEPTH:
            break
    else:
        return False
    return sum(1 for _ in itertools.islice(_NESTING.finditer(raw, 0, window),
                                           MAX_DEPTH + 1)) > MAX_DEPTH


def cut_deep_nesting(raw: bytes, limit: int = MAX_DEPTH) -> bytes:
    """The raw mail with every multipart or message part deeper than ``limit`` levels turned
    into a leaf part of type :data:`_CUT_TYPE` (neither read nor an attachment), so that
    Python's parser (recursive) can read the rest. Only used on mail that may be that deep:
    MIME nested 1,000 deep is an attack or a broken program, and what lies below the limit
    stays in the raw mail.
    """
    lines = raw.splitlines(keepends=True)
    out: list[bytes] = []
    open_boundaries: list[bytes] = []   # the boundaries of the multiparts we are inside
    depth_of: dict[bytes, int] = {}
    in_headers, header_depth = True, 0
    block: list[bytes] = []

    def close_block() -> None:
        nonlocal in_headers
        text = b"".join(block)
        ctype_m = _CONTENT_TYPE.search(text)
        ctype = ctype_m.group(1).lower() if ctype_m else b"text/plain"
        nested = ctype.startswith(b"multipart/") or ctype.startswith(b"message/")
        if nested and header_depth >= limit and ctype_m is not None:
            text = text[:ctype_m.start(1)] + _CUT_TYPE + text[ctype_m.end(1):]
            text = _BOUNDARY.sub(b"x-cut=1", text)
            nested = False
        out.append(text)
        in_headers = False
        if ctype.startswith(b"multipart/") and nested:
            b = _BOUNDARY.search(text)
            if b is not None:
                boundary = b.group(1) or b.group(2)
                open_boundaries.append(boundary)
                depth_of[boundary] = header_depth + 1
        elif ctype.startswith(b"message/") and nested:
            start_headers(header_depth + 1)

    def start_headers(depth: int) -> None:
        nonlocal in_headers, header_depth
        in_headers, header_depth = True, depth
        block.clear()

    for line in lines:
        if in_headers:
            if line.strip():
                block.append(line)
                continue
            close_block()
            out.append(line)
            continue
        stripped = line.rstrip(b"\r\n")
        if stripped.startswith(b"--") and open_boundaries:
            name = stripped[2:].rstrip()
            closing = name.endswith(b"--") and name[:-2] in depth_of
            key = name[:-2] if closing else name
            if key in depth_of and key in open_boundaries:
                while open_boundaries and open_boundaries[-1] != key:
                    open_boundaries.pop()
                out.append(line)
                if closing:
                    open_boundaries.pop()
                else:
                    start_headers(depth_of[key])
                continue
        out.append(line)
    if in_headers and block:
        out.append(b"".join(block))
    return b"".join(out)


def _fix_body_charsets(msg: Message, charsets: Charsets) -> None:
    """mail-parser decodes the body parts in their declared charset, without the aliases
    above: a part declared GB2312 that holds GBK characters would come out as U+FFFD. Each
    body text part gets the charset that really reads it: the superset of the declared one,
    or, when the declared one fails (or none is declared and the bytes are not UTF-8), the
    detected one."""
    stack, seen = [msg], 0
    while stack and seen < 500:
        part = stack.pop()
        seen += 1
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, Message))
            continue
        if part.get_content_maintype() != "text":
            continue
        declared = part.get_content_charset()
        cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
        if cte not in ("base64", "quoted-printable") and isinstance(payload, str) \
                and payload.isascii():
            continue   # 7-bit text: every charset mail uses reads it alike
        try:
            data = part.get_payload(decode=True)
        except Exception:
            continue
        if not isinstance(data, bytes) or data.isascii():
            continue
        codec = _codec(declared)
        if _strict(data, codec) is None:
            charsets.freeze()   # what the mail itself declares, before we change any of it
            # The headers' charset when they have one, else the detector on the text itself.
            codec = next((c for c in ("utf-8", *charsets.declared, charsets.detected())
                          if c and _strict(data, c) is not None), None) \
                or detect_charset(data[:20000]) or "cp1252"
            if _strict(data, codec) is None:
                codec = "cp1252"   # undefined bytes become U+FFFD, the rest is kept
        if declared is None and codec == "utf-8":
            continue
        if codec != (declared or "").lower():
            try:
                part.set_param("charset", codec)
            except Exception:
                continue


def _message(raw: bytes) -> tuple[mailparser.MailParser, Charsets]:
    # Blank or space-only lines before the first header (broken copies, some pipes) would end
    # the header block at once.
    raw = repair_unfolded_headers(re.sub(rb"\A(?:[ \t]*\r?\n)+", b"", raw))
    # Python's parser recurses per level and takes seconds before it runs out of stack on
    # 1,000 levels: a mail that could be that deep is cut first (a no-op when it is not).
    if _may_be_too_deep(raw):
        raw = cut_deep_nesting(raw)
    try:
        try:
            return _mailparser(raw)
        except RecursionError:
            return _mailparser(cut_deep_nesting(raw))
    except RecursionError as exc:
        raise UnparseableMail("MIME structure nested too deeply to read") from exc
    except Exception as exc:  # mail-parser raises many kinds on broken input
        raise UnparseableMail(f"MIME structure could not be read: {exc!r}") from exc


def _mailparser(raw: bytes) -> tuple[mailparser.MailParser, Charsets]:
    # Long base64 bodies stay out of the parser (a big attachment cost ~8x its size there);
    # their parts are decoded from the raw bytes by _part_bytes (mail/bigparts.py).
    skeleton, stashed = bigparts.stash(raw)
    msg = email.message_from_bytes(skeleton)
    bigparts.restore(msg, stashed)
    if msg.epilogue is None:
        msg.epilogue = ""  # mail-parser reads it when a boundary is missing
    charsets = Charsets(msg)
    if msg.keys():   # (a mail without header fields is refused as such in parse())
        _fix_body_charsets(msg, charsets)
    return mailparser.MailParser(msg), charsets


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


def _text_of(part: Message, ctype: str) -> str:
    text = decode_bytes(_part_bytes(part), part.get_content_charset())
    return html_to_text(text) if ctype == "text/html" else text


def _sequence_text(walk: _Walk) -> str | None:
    """The body when the mail's text is several parts in a row, not one choice among
    alternatives: an HTML part beside a plain one in multipart/mixed (a text mail with an
    HTML signature, an HTML message with a text footer). Every such part is the message;
    of each multipart/alternative only one branch is (the plain one where there is one).
    None when the mail is not of that kind, and the usual choice applies."""
    parts = walk.body_parts
    if not any(c is None and t == "text/html" for c, t, _ in parts) \
            or not any(t == "text/plain" for _, t, _ in parts):
        return None
    branches: dict[int, dict[int, list[str]]] = {}
    for choice, ctype, _ in parts:
        if choice is not None:
            branches.setdefault(choice[0], {}).setdefault(choice[1], []).append(ctype)
    chosen: dict[int, int] = {}
    for alt, by_branch in branches.items():
        plain_only = [b for b, types in by_branch.items() if set(types) == {"text/plain"}]
        with_plain = [b for b, types in by_branch.items() if "text/plain" in types]
        chosen[alt] = (plain_only or with_plain or [max(by_branch)])[0]
    pieces: list[str] = []
    for choice, ctype, part in parts:
        if choice is not None and chosen[choice[0]] != choice[1]:
            continue
        text = _text_of(part, ctype).strip("\r\n")
        # A sender that put the plain and the HTML copy side by side in multipart/mixed
        # (meaning alternatives) sends the same words twice: keep them once.
        if text.strip() and (not pieces or " ".join(text.split()) != " ".join(pieces[-1].split())):
            pieces.append(text)
    return "\n".join(pieces)


def _body_text(parsed: mailparser.MailParser, walk: _Walk) -> str:
    plain = "\n".join(t for t in parsed.text_plain if t and t.strip()).strip()
    sequence = _sequence_text(walk)
    if sequence is not None:
        text = sequence
    elif plain:
        text = plain
    elif any(t and t.strip() for t in parsed.text_html):
        text = html_to_text("\n".join(parsed.text_html))
    else:
        text = "\n".join(t for t in walk.fallback_text if t.strip())
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _SURROGATE.sub("\ufffd", _TEXT_CONTROL.sub("", text)).strip()


def parse(raw: bytes, envelope_from: str = "") -> ParsedMail:
    """Parse one stored mail; raises :class:`UnparseableMail` with the reason.

    ``envelope_from`` is the SMTP MAIL FROM the mail came with, if known: the sender of last
    resort when the mail's own fields name none.
    """
    parsed, charsets = _message(raw)
    msg = parsed.message
    if msg is None or not msg.keys():
        raise UnparseableMail("no header fields found")
    try:
        return _build(parsed, msg, charsets, envelope_from)
    except UnparseableMail:
        raise
    except RecursionError as exc:
        raise UnparseableMail("MIME structure nested too deeply to read") from exc
    except Exception as exc:  # a parser bug must quarantine the mail, not stop the worker
        raise UnparseableMail(f"mail could not be read: {exc!r}") from exc


def _build(parsed: mailparser.MailParser, msg: Message, charsets: Charsets,
           envelope_from: str) -> ParsedMail:
    headers = _headers(msg, charsets)
    from_addr, from_name, source = _sender(msg, charsets, envelope_from)
    walk = _walk(msg, charsets)
    text, pasted = _uuencoded_files(_body_text(parsed, walk))
    if walk.too_deep:
        text = f"{text}\n\n{_TOO_DEEP}".strip()
    subject = _clean(headers.get("subject", ""))
    new_text, quoted = (text, "") if is_forward_subject(subject) else split_reply(text)
    return ParsedMail(
        message_id=(_msgids(" ".join(_raw_values(msg, "Message-ID"))) or ("",))[0],
        sender_header=source,
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        to=_addresses(_raw_values(msg, "To", charsets)),
        cc=_addresses(_raw_values(msg, "Cc", charsets)),
        reply_to=next(iter(_addresses(_raw_values(msg, "Reply-To", charsets))), ""),
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
