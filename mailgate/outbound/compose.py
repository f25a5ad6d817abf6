"""Builds outgoing messages. Headers are made only from checked values (no injection).

A mail goes out as multipart/alternative: the rendered text as ``text/plain; format=flowed``
(RFC 3676, soft-wrapped at 72 columns: :func:`flow`), then a minimal HTML rendering of the same
text (:func:`html_from_text`). Attachments put a multipart/mixed around the two.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

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
    msg.set_content(flow(out.body), charset="utf-8", params={"format": "flowed"})
    if out.html:
        msg.add_alternative(html_from_text(out.body, lang=out.language,
                                           title=safe_header_text(out.subject, 250)),
                            subtype="html", charset="utf-8")
    for att in out.attachments:
        maintype, _, subtype = att.content_type.partition("/")
        # A forwarded mail goes as bytes: message/* parts may not be base64-encoded.
        if (maintype == "message" or not re.fullmatch(r"[\w.+-]+", maintype)
                or not re.fullmatch(r"[\w.+-]+", subtype)):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(att.data, maintype=maintype, subtype=subtype,
                           filename=safe_header_text(att.filename, 200) or "attachment")
    # Last: set_content clears every Content-* header, and making the mail multipart moves
    # them into the first part.
    if out.language:
        msg["Content-Language"] = out.language
    return msg.as_bytes()


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
