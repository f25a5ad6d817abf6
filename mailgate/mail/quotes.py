"""Separate the new part of a mail from the earlier mail it quotes.

``split_reply(text) -> (new, quoted)``. The rule, in order:

1. A forward (``---------- Forwarded message ---------``, ``Begin forwarded message:``,
   ``Doorgestuurd bericht``, ``Message transféré``, ``Weitergeleitete Nachricht``) is not a
   quote: what was forwarded *is* the request, so nothing is split off.
2. The first *reply header* splits the text: an attribution line (``On … wrote:``,
   ``Op … schreef …:``, ``Op … heeft … het volgende geschreven:``, ``Le … a écrit :``,
   ``Am … schrieb …:``, also wrapped over up to three lines), an Outlook block (``From:/Sent:``,
   ``Van:/Verzonden:``, ``De :/Envoyé :``, ``Von:/Gesendet:`` …, two lines or more) or a
   separator (``-----Original Message-----``, ``-----Oorspronkelijk bericht-----``,
   ``-----Message d'origine-----``, ``-----Ursprüngliche Nachricht-----``). Header patterns
   come from mail-parser-reply (languages nl, fr, de, en) plus our own for what it misses
   (Dutch Gmail/Apple Mail attributions, French Outlook with no-break spaces, ``De:`` without a
   space, wrapped attributions).
3. Without a header, a block of ``>`` lines does it; the line just above it that ends in ``:``
   and carries a date or an address (``02.04.2012 14:20 … <bob@x> написал:``) goes with the quote.
4. The quote must be one block. Answers written between quoted lines (inline answers) mean the
   new text is spread over the quote: nothing is split off. A mail that is only a quote, or
   whose new text would be empty, is not split either. Text *below* a single quote block with
   nothing above (bottom-posting) is the new text. A mailing-list footer or signature
   (``--``/``__`` line) below the quote belongs to the quote.

When nothing is split off, ``new`` is the text as given and ``quoted`` is ``""`` — so ``new``
is never empty unless the text is. Signatures are kept in ``new`` (an agent wants the name and
phone number); only the earlier mail goes.
"""

from __future__ import annotations

import re

from mailparser_reply.parser import EmailMessage

# mail-parser-reply's own header patterns (attribution lines, Outlook blocks, separators) for
# the languages our editors write in; English is always included by the library.
_LIBRARY_HEADERS: re.Pattern[str] = EmailMessage(
    text="", languages=["nl", "fr", "de", "en"]).HEADER_REGEX

_Q = r"(?:>\s?)*"  # allow the header inside a quote: "> On … wrote:"
_VERBS = r"(?:wrote|writes|schreef|geschreven|a\s+écrit|écrit|schrieb|geschrieben)"
# "On/Op/Le/Am <date>, <name> wrote/schreef/a écrit/schrieb …:" — the verb anywhere, ":" last.
_ATTRIBUTION = re.compile(
    rf"^{_Q}(?:On|Op|Le|Am)\s.{{0,250}}?{_VERBS}\b.{{0,160}}?\s?:$")
_SEPARATOR = re.compile(
    rf"^{_Q}-{{2,}}\s*(?:Original Message|Oorspronkelijk bericht|Origineel bericht|"
    r"Message d'origine|Ursprüngliche Nachricht|Original[- ]?Nachricht)\s*-{2,}$",
    re.IGNORECASE)
_FORWARD = re.compile(
    rf"^{_Q}(?:-{{2,}}\s*(?:Forwarded message|Doorgestuurd bericht|Message transféré|"
    r"Weitergeleitete Nachricht|Forwarded Message)\s*-{2,}|"
    r"Begin forwarded message:|Begin doorgestuurd bericht:|Début du message réexpédié :?|"
    r"Anfang der weitergeleiteten Nachricht:)\s*$", re.IGNORECASE)
# Outlook header blocks: label lines; at least two in a row, one of them "From"-like.
_FROM_LABELS = r"From|Van|De|Von"
_OTHER_LABELS = (r"Sent|To|Cc|Subject|Date|Verzonden|Aan|Onderwerp|Datum|Envoyé|À|A|Objet|"
                 r"Gesendet|An|Betreff")
_LABEL = re.compile(rf"^{_Q}\*?(?:({_FROM_LABELS})|(?:{_OTHER_LABELS}))\*?\s?:\*?(?:\s|$)")
_RULE_LINE = re.compile(r"^[_\-=*]{5,}$")
_FOOTER_START = re.compile(r"^(?:--\s*$|__+|-- )")
# Forward prefixes of nl/fr/de/en clients (and a few more): "Fwd:", "FW:", "TR:" (Outlook
# fr), "WG:" (Outlook de), "W.:" and "Wtr:" (German webmail), "Doorst:" (Outlook nl).
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fwd?|fw|tr|wg|w\.|wtr|doorst|trans|rv|i)\s*:",
                              re.IGNORECASE)


def is_forward_subject(subject: str) -> bool:
    """A subject whose first prefix is a forward one (Fwd:, FW:, TR:, WG:, W.:, Doorst:):
    whatever separator follows in the text ("----- Original Nachricht ----", "-----Original
    Message-----"), the forwarded mail is the request, not quoted history."""
    return bool(_FORWARD_SUBJECT.match(subject or ""))


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos)


def _library_header(norm: list[str]) -> tuple[int, int] | None:
    joined = "\n".join(norm)
    m = _LIBRARY_HEADERS.search(joined)
    if m is None:
        return None
    start = m.start()
    while start < m.end() and joined[start] == "\n":
        start += 1
    return _line_of(joined, start), _line_of(joined, max(start, m.end() - 1)) + 1


def _own_header(norm: list[str]) -> tuple[int, int] | None:
    """First header line and the line after it, from our own patterns."""
    for i, line in enumerate(norm):
        if not line:
            continue
        if _SEPARATOR.match(line):
            return i, i + 1
        if line.lstrip("> ")[:2] in ("On", "Op", "Le", "Am"):
            window = line
            for j in range(i, min(i + 3, len(norm))):
                if j > i:
                    if not norm[j]:
                        break
                    window = f"{window} {norm[j].lstrip('> ')}"
                if len(window) <= 400 and _ATTRIBUTION.match(window):
                    return i, j + 1
        m = _LABEL.match(line)
        if m and i + 1 < len(norm) and _LABEL.match(norm[i + 1]):
            block = [m]
            k = i + 1
            while k < len(norm) and (lm := _LABEL.match(norm[k])):
                block.append(lm)
                k += 1
            if any(b.group(1) for b in block):
                return i, k
    return None


def _forward_line(norm: list[str]) -> int | None:
    return next((i for i, line in enumerate(norm) if _FORWARD.match(line)), None)


def _kind(line: str) -> str:
    return "" if not line else ("q" if line.startswith(">") else "p")


def _runs(kinds: list[str], start: int = 0) -> list[tuple[str, int, int]]:
    """Runs of quoted ("q") / plain ("p") lines from ``start``; blank lines join either."""
    runs: list[tuple[str, int, int]] = []
    for i in range(start, len(kinds)):
        k = kinds[i]
        if not k:
            continue
        if runs and runs[-1][0] == k:
            runs[-1] = (k, runs[-1][1], i + 1)
        else:
            runs.append((k, i, i + 1))
    return runs


def _join(lines: list[str]) -> str:
    return "\n".join(lines).strip("\n").rstrip()


def _trim_new(norm: list[str], end: int) -> int:
    """Move trailing separator lines (Outlook's ____ rule) from the new part to the quote."""
    while end > 0 and (not norm[end - 1] or _RULE_LINE.match(norm[end - 1])):
        end -= 1
    return end


def _attribution_start(norm: list[str], quote_start: int) -> int:
    """Where the attribution above a bare ``>`` block begins (``quote_start`` if none)."""
    i = quote_start - 1
    while i >= 0 and not norm[i]:
        i -= 1
    if i < 0 or not norm[i].endswith(":"):
        return quote_start
    line = norm[i]
    if not (re.search(r"\d|@", line) or re.search(_VERBS, line)):
        return quote_start
    start = i
    # A wrapped attribution: the adjacent line above, with a date and no sentence end.
    if i > 0 and norm[i - 1] and re.search(r"\d", norm[i - 1]) \
            and not norm[i - 1].endswith((".", "!", "?")):
        start = i - 1
    return start


def split_reply(text: str) -> tuple[str, str]:
    """``(new, quoted)``; ``(text, "")`` when nothing can safely be split off."""
    if not text or not text.strip():
        return text, ""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    norm = [ln.replace("\xa0", " ").replace("\u200b", "").strip() for ln in lines]
    kinds = [_kind(n) for n in norm]
    found = [h for h in (_library_header(norm), _own_header(norm)) if h is not None]
    forward = _forward_line(norm)
    if not found:
        if forward is not None:
            return text, ""
        return _split_bare_quote(text, lines, norm, kinds)
    header, header_end = min(found)
    if forward is not None and forward <= header:
        return text, ""
    header_end = max(e for s, e in found if s == header)
    runs = _runs(kinds, header_end)
    prefixed = bool(runs) and runs[0][0] == "q"  # "On … wrote:" then "> …" lines

    if kinds[header] == "q":
        # The header sits inside a ">" quote ("> On … wrote:"): the quote starts where that
        # block of ">" lines starts, with its own attribution line above it, if any.
        start = header
        while start > 0 and kinds[start - 1] in ("q", ""):
            start -= 1
        while kinds[start] != "q":
            start += 1
        header, runs, prefixed = _attribution_start(norm, start), _runs(kinds, start), True
    if any(kinds[:header]):
        # New text above the header. A ">" quote below it must be one block (a footer may
        # follow); anything else written below or between its lines is an inline answer.
        if prefixed and len(runs) > 1 and (
                len(runs) > 2 or not _FOOTER_START.match(norm[runs[1][1]])):
            return text, ""
        end = _trim_new(norm, header)
        new, quoted = _join(lines[:end]), _join(lines[end:])
        return (new, quoted) if new.strip() else (text, "")
    # Header first: bottom-posting below a ">" quote, or nothing new at all.
    if prefixed and len(runs) == 2 and not _FOOTER_START.match(norm[runs[1][1]]):
        return _join(lines[runs[1][1]:]), _join(lines[:runs[1][1]])
    return text, ""


def _split_bare_quote(text: str, lines: list[str], norm: list[str],
                      kinds: list[str]) -> tuple[str, str]:
    """No reply header: a single block of ">" lines, above or below the new text."""
    runs = _runs(kinds)
    q = [r for r in runs if r[0] == "q"]
    if len(q) != 1:
        return text, ""  # no quote, or inline answers between quoted lines
    qs, qe = q[0][1], q[0][2]
    tail = [r for r in runs if r[1] >= qe]
    head = [r for r in runs if r[2] <= qs]
    footer_only = len(tail) == 1 and bool(_FOOTER_START.match(norm[tail[0][1]]))
    if head and (not tail or footer_only):
        start = _trim_new(norm, _attribution_start(norm, qs))
        new, quoted = _join(lines[:start]), _join(lines[start:])
        return (new, quoted) if new.strip() else (text, "")
    if not head and len(tail) == 1 and not footer_only:
        return _join(lines[tail[0][1]:]), _join(lines[:tail[0][1]])
    return text, ""
