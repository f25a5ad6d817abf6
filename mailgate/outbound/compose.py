"""Builds outgoing messages. Headers are made only from checked values (no injection).

A mail goes out as multipart/alternative: the rendered text as ``text/plain; format=flowed``
(RFC 3676, soft-wrapped at 72 columns: :func:`flow`), then a minimal HTML rendering of the same
text (:func:`html_from_text`). Attachments put a multipart/mixed around the two.
"""

from __future__ import annotations

import base64
import binascii
import html
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from urllib.parse import quote

from mailgate.mail.addresses import is_valid_address
from mailgate.mail.attachments import display_name
from mailgate.mail.parse import ParsedAttachment

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


def attach(parts: Iterable[ParsedAttachment], max_size: int) -> tuple[OutAttachment, ...]:
    """A received mail's attachments, to go along with a mail we send (names made safe;
    larger ones stay only in the stored raw mail)."""
    return tuple(OutAttachment(display_name(a.filename, a.content_type), a.content_type,
                               a.payload) for a in parts if len(a.payload) <= max_size)


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
    # An HTML alternative of the body next to the plain text (multipart/alternative).
    html: bool = True

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.to, *self.cc)


def build(out: Outgoing) -> bytes:
    """The mail as bytes (CRLF line ends), written directly rather than through
    ``EmailMessage``: its header objects parse back every value we set, which made composing
    the largest cost of processing a mail. Every header value is one we checked or made safe
    here; free text goes out as RFC 2047 encoded-words when it is not plain ASCII."""
    for addr in (out.from_addr, *out.to, *out.cc, *([out.reply_to] if out.reply_to else [])):
        if not is_valid_address(addr):
            raise ValueError(f"refusing to put {addr!r} in an outgoing header")
    subject = safe_header_text(out.subject, 250)
    head = [_from_header(safe_header_text(out.from_name, 100), out.from_addr),
            _fold("To", out.to, ", ")]
    if out.cc:
        head.append(_fold("Cc", out.cc, ", "))
    if out.reply_to:
        head.append(f"Reply-To: {out.reply_to}")
    head.append(_fold("Subject", _words(subject), " "))
    head.append(f"Message-ID: {_checked_id(out.message_id)}")
    if out.date is not None:
        head.append(f"Date: {format_datetime(out.date)}")
    if out.in_reply_to and _MSG_ID.fullmatch(out.in_reply_to):
        head.append(f"In-Reply-To: {out.in_reply_to}")
    refs = [r for r in out.references if _MSG_ID.fullmatch(r)][-20:]
    if refs:
        head.append(_fold("References", refs, " "))
    if out.auto_submitted:
        head.append(f"Auto-Submitted: {_token(out.auto_submitted)}")
        # Outlook/Exchange honour this instead of RFC 3834: no out-of-office back to us.
        head.append("X-Auto-Response-Suppress: All")
    if out.loop_marker:
        head.append(f"X-Loop: {safe_header_text(out.loop_marker, 200)}")
    head.append("MIME-Version: 1.0")
    body = _text_part("plain", flow(out.body), '; format="flowed"')
    if out.html:
        page = html_from_text(out.body, lang=out.language, title=subject)
        body = _multipart("alternative", [body, _text_part("html", page)])
    if out.attachments:
        body = _multipart("mixed", [body, *(_attachment(a) for a in out.attachments)])
    if out.language and _LANG.fullmatch(out.language):
        head.append(f"Content-Language: {out.language}")
    return "\r\n".join(head).encode("ascii") + b"\r\n" + body


# --- writing the mail -----------------------------------------------------------------------

_MSG_ID = re.compile(r"<[^<>\s]+>")
_ATEXT_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")
_MIME_TOKEN = re.compile(r"[A-Za-z0-9.+-]+")
_FILENAME_PLAIN = re.compile(r"[A-Za-z0-9 !#$%&'()*+,./:;<=>?@\[\]^_`{|}~-]*")
MAX_LINE = 78
# Bytes of UTF-8 per base64 encoded-word: 42 make 56 characters, the word 68: even after
# "Subject: " the line stays within 78.
_WORD_BYTES = 42


def _checked_id(value: str) -> str:
    """A Message-ID we put in a header: one ``<...>`` without spaces, else refused."""
    if not _MSG_ID.fullmatch(value):
        raise ValueError(f"refusing to put {value!r} in an outgoing header as a Message-ID")
    return value


def _token(value: str) -> str:
    return value if _MIME_TOKEN.fullmatch(value) else "auto-replied"


def _encoded_words(text: str) -> list[str]:
    """``text`` as RFC 2047 base64 encoded-words of at most 75 characters, cut between
    characters (a reader joins adjacent encoded-words without the space between them)."""
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _WORD_BYTES:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk.clear()
        chunk += data
    if chunk or not words:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _words(text: str) -> list[str]:
    """Free text (one line, single spaces) as header words: plain ASCII words as they are,
    each run of other words as encoded-words (so their spaces survive decoding)."""
    out: list[str] = []
    run: list[str] = []
    for word in text.split(" ") if text else []:
        if word.isascii() and "=?" not in word:
            if run:
                out += _encoded_words(" ".join(run))
                run = []
            out.append(word)
        else:
            run.append(word)
    if run:
        out += _encoded_words(" ".join(run))
    return out


def _fold(name: str, items: Iterable[str], sep: str) -> str:
    """``Name: item<sep>item…`` with lines broken before an item where one would pass
    78 characters (an item longer than a line stays whole)."""
    lines: list[str] = []
    line = f"{name}:"
    first = True
    for item in items:
        glue = "" if first else sep.rstrip(" ")
        candidate = f"{line}{glue} {item}"
        if len(candidate) > MAX_LINE and not first:
            lines.append(line + glue)
            line = f" {item}"
        else:
            line = candidate
        first = False
    lines.append(line)
    return "\r\n".join(lines)


@lru_cache(maxsize=256)
def _from_header(name: str, address: str) -> str:
    """The From line; the same few (the desk, an agent's name with the desk) come again and
    again, so each is composed and folded once."""
    if not name:
        return f"From: {address}"
    # Plain words as they are (quoted where they hold specials), runs of other words as
    # encoded-words; the email package writes names the same way.
    phrase = [w if w.startswith("=?") or _ATEXT_PHRASE.fullmatch(w)
              else '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"'
              for w in _words(name)]
    return _fold("From", [*phrase[:-1], f"{phrase[-1]} <{address}>"], " ")


def _boundary() -> str:
    # "=_" never occurs in quoted-printable or base64 text, and 128 random bits in no text.
    return f"=_mailgate_{secrets.token_hex(16)}"


def _text_part(subtype: str, text: str, params: str = "") -> bytes:
    """A text/* part in UTF-8, headers included. The transfer encoding as the email
    package chooses it: 7bit or 8bit while every line fits in 78 bytes, else the shorter of
    quoted-printable and base64."""
    lines = text.encode("utf-8").splitlines()
    if max((len(x) for x in lines), default=0) <= MAX_LINE:
        data = b"\r\n".join(lines) + b"\r\n"
        cte = "7bit" if data.isascii() else "8bit"
    else:
        raw = b"\r\n".join(lines) + b"\r\n"
        qp = binascii.b2a_qp(raw, False, True, False)
        b64 = _base64_lines(raw)
        data, cte = (qp, "quoted-printable") if len(qp) <= len(b64) else (b64, "base64")
    return (f'Content-Type: text/{subtype}; charset="utf-8"{params}\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode("ascii") + data


def _base64_lines(data: bytes) -> bytes:
    """base64 in lines of 76 characters, CRLF after each."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    boundary = _boundary()
    delimiter = f"--{boundary}\r\n".encode("ascii")
    head = f'Content-Type: multipart/{subtype};\r\n boundary="{boundary}"\r\n\r\n'
    return (head.encode("ascii") + delimiter
            + (b"\r\n" + delimiter).join(parts)
            + f"\r\n--{boundary}--\r\n".encode("ascii"))


def _attachment(att: OutAttachment) -> bytes:
    maintype, _, subtype = att.content_type.partition("/")
    # A forwarded mail goes as bytes: message/* parts may not be base64-encoded.
    if (maintype.lower() == "message" or not _MIME_TOKEN.fullmatch(maintype)
            or not _MIME_TOKEN.fullmatch(subtype)):
        maintype, subtype = "application", "octet-stream"
    name = safe_header_text(att.filename, 200) or "attachment"
    if _FILENAME_PLAIN.fullmatch(name):
        param = f'filename="{name}"'
    else:  # RFC 2231: any character, percent-encoded UTF-8
        param = f"filename*=utf-8''{quote(name, safe='')}"
    return (f"Content-Type: {maintype.lower()}/{subtype.lower()}\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment;\r\n {param}\r\n\r\n"
            ).encode("ascii") + _base64_lines(att.data)


# --- format=flowed (RFC 3676) ---------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")
_QUOTE = re.compile(r">+")
SIG_SEP = "-- "


def _needs_stuffing(line: str) -> bool:
    return line.startswith((" ", ">", "From "))


def _break_at(rest: str, avail: int) -> int:
    """Where to end the next physical line of ``rest``: after a run of spaces, the last such
    place within ``avail`` columns, else the first one after (a long word or URL stays whole);
    len(rest) if it fits or cannot be broken. Never inside the leading indentation."""
    if len(rest) <= avail:
        return len(rest)
    best = 0
    for m in re.finditer(r" +(?=[^ ])", rest):
        end = m.end()
        if m.start() == 0:
            continue  # the indentation itself
        if end <= avail:
            best = end
        else:
            return best or end
    return best or len(rest)


def _flow_line(line: str, width: int) -> list[str]:
    """One hard line as physical lines: soft breaks end with a space (DelSp=no)."""
    if line == SIG_SEP:
        return [line]
    quote = _QUOTE.match(line)
    if quote:
        prefix = quote.group()
        rest = line[len(prefix):]
        rest = rest[1:] if rest.startswith(" ") else rest
        if rest == SIG_SEP:
            return [f"{prefix} {rest}"]
        rest = rest.rstrip(" ")
        if not rest:
            return [prefix]
        prefix += " "  # the stuffing space: "> text"; every quoted line is stuffed
    else:
        prefix, rest = "", line.rstrip(" ")
    out: list[str] = []
    while True:
        lead = " " if not quote and _needs_stuffing(rest) else ""
        cut = _break_at(rest, max(width - len(prefix) - len(lead), 1))
        out.append(prefix + lead + rest[:cut])
        rest = rest[cut:]
        if not rest:
            return out


def flow(text: str, width: int = 72) -> str:
    """``text`` as the body of a ``text/plain; format=flowed`` part (RFC 3676, DelSp=no).

    Lines longer than ``width`` are soft-broken after a space (the space ends the line, so a
    flowed-aware reader joins them again); hard line breaks stay; trailing spaces of hard
    lines go, except on the signature separator "-- ". A word longer than the width (a long
    URL) is never cut. Lines that start with ">" are quotes: wrapped with their ">" prefix.
    Lines that start with a space, ">" or "From " are space-stuffed. Line ends are "\\n";
    the SMTP policy of :func:`build` writes them as CRLF.
    """
    return "\n".join(physical for line in _LINE_END.split(text)
                     for physical in _flow_line(line, width))


def unflow(text: str) -> str:
    """The text a format=flowed-aware reader shows (RFC 3676 §4.2, DelSp=no): soft-broken
    lines joined, stuffing removed, quotes written back as ">" marks and one space."""
    out: list[str] = []
    pending: tuple[int, str] | None = None  # (quote depth, text so far) of a flowed line
    for line in _LINE_END.split(text):
        quote = _QUOTE.match(line)
        depth = len(quote.group()) if quote else 0
        content = line[depth:]
        content = content[1:] if content.startswith(" ") else content
        if pending is not None and pending[0] == depth:
            content = pending[1] + content
        elif pending is not None:
            out.append(_quoted(*pending))
        pending = None
        if content.endswith(" ") and content != SIG_SEP:
            pending = (depth, content)
        else:
            out.append(_quoted(depth, content))
    if pending is not None:
        out.append(_quoted(*pending))
    return "\n".join(out)


def _quoted(depth: int, content: str) -> str:
    if not depth:
        return content
    return ">" * depth + (" " + content if content else "")


# --- the HTML alternative ---------------------------------------------------------------------

_URL = re.compile(r"\bhttps?://[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
_LABELLED = re.compile(r"([^\s:][^:]{0,30}):( +)\S")
_LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")
_BODY_STYLE = "font-family: sans-serif; font-size: 14px; line-height: 1.4;"
_QUOTE_STYLE = "margin: 0 0 0 .5em; padding-left: .7em; border-left: 2px solid #ccc;"


def _inline(text: str) -> str:
    """One line of text as HTML: everything escaped, http(s) URLs as links."""
    parts: list[str] = []
    pos = 0
    for m in _URL.finditer(text):
        url = m.group()
        # Sentence punctuation after a URL is not part of it; nor is an unbalanced ")".
        while url and (url[-1] in ".,;:!?" or (url[-1] == ")" and url.count("(") < url.count(")"))):
            url = url[:-1]
        if len(url) <= len("https://"):
            continue
        parts.append(html.escape(text[pos:m.start()]))
        href = html.escape(url, quote=True)
        parts.append(f'<a href="{href}">{href}</a>')
        pos = m.start() + len(url)
    parts.append(html.escape(text[pos:]))
    out = "".join(parts)
    indent = len(out) - len(out.lstrip(" "))
    return "&nbsp;" * indent + out[indent:]


def _aligned(lines: list[str]) -> bool:
    """A block of "Label:   value" lines with the values in one column (a ticket's facts)."""
    if len(lines) < 2:
        return False
    columns: set[int] = set()
    for line in lines:
        m = _LABELLED.match(line)
        if not m:
            return False
        columns.add(m.end() - 1)
    return len(columns) == 1


def _blocks(lines: list[str]) -> list[str]:
    """Paragraphs (split on blank lines), quotes (lines starting with ">") as blockquotes."""
    out: list[str] = []
    para: list[str] = []

    def close_para() -> None:
        if not para:
            return
        if _aligned(para):
            rows = "".join(
                f'<tr><td style="padding-right: 1em;">{_inline(label)}:</td>'
                f"<td>{_inline(value.strip())}</td></tr>\n"
                for label, _, value in (line.partition(":") for line in para))
            out.append(f"<table>\n{rows}</table>")
        else:
            out.append("<p>" + "<br>\n".join(_inline(line) for line in para) + "</p>")
        para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(">"):
            close_para()
            quoted: list[str] = []
            while i < len(lines) and lines[i].startswith(">"):
                inner = lines[i][1:]
                quoted.append(inner[1:] if inner.startswith(" ") else inner)
                i += 1
            out.append(f'<blockquote style="{_QUOTE_STYLE}">\n' + "\n".join(_blocks(quoted))
                       + "\n</blockquote>")
            continue
        if line.strip():
            para.append(line.rstrip())
        else:
            close_para()
        i += 1
    close_para()
    return out


def html_from_text(text: str, *, lang: str = "", title: str = "") -> str:
    """A minimal, safe HTML document of a plain-text mail: every character escaped,
    paragraphs on blank lines, <br> on line breaks, quotes in <blockquote>, http(s) URLs as
    links, aligned "Label: value" lines as a table. No images, scripts or remote content."""
    lang_attr = f' lang="{lang}"' if _LANG.fullmatch(lang or "") else ""
    body = "\n".join(_blocks(_LINE_END.split(text)))
    return ("<!DOCTYPE html>\n"
            f"<html{lang_attr}>\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n</head>\n"
            f'<body style="{_BODY_STYLE}">\n{body}\n</body>\n</html>\n')
