"""What a request holds, read from a parsed mail, so the desk keeps it on the ticket.

:func:`extract` returns an :class:`Extracted`: the site IDs, URLs and phone numbers the mail
names, the writer's name from the signature, whether an error message is there (and what
showed it), and whether the mail holds several unrelated requests. Everything is a
heuristic on plain text; the rules, and what they refuse on purpose:

Which text is read
    The subject and :attr:`ParsedMail.new_text` (the quoted earlier mail is someone else's
    sites, links and signature); for a forward (``Fwd:``, ``TR:``, ``Doorst:``, ``WG:`` …)
    the whole :attr:`ParsedMail.text`, because the forwarded part *is* the request. The
    signature name is read from the forwarder's own part only. Lines starting with ``>``
    are never read for a name or a list. At most 200,000 characters of body are read.

Masking
    Before numbers are read, URLs, mail addresses, dates (``01-12-2026``, ``12/2026``,
    ``2026-12-01``, ``1 december 2026``) and times (``14:30``, ``14u30``, ``14h30``) are
    masked; phone numbers found are masked before site IDs are read. So a site ID is never
    a piece of a URL path, a date, a time or a phone number.

Site IDs
    Explicit forms count whether or not the site is known: ``site 1234``, ``site: 1234``,
    ``site-id: 1234``, ``site ID 1234``, ``siteID 1234``, ``site n° 1234``, ``site nr. 1234``,
    ``website 1234``, ``webstek 1234``, ``site web 1234``, ``ID 1234``, ``identifiant 1234``,
    ``ID du site : 1234``, ``nummer van de site 1234``, lists after the word (``sites 1234,
    5678 en 9012``), and ``[1234]`` in the subject. ``ID`` after ``ticket``, ``user``,
    ``node``, ``dossier`` … is not a site's. A bare four-digit number counts only when it is
    in ``known_sites``, and not when it is a plausible year (1900–2099), glued to other
    digit groups (IBAN, amounts), next to ``€``/``EUR``/a unit, after ``error``/``code``/
    ``ticket``/``page`` …, or a postcode (``1000 Brussel`` at a line start, after a comma or
    ``B-``). Order of first appearance, subject first; duplicates dropped.

URLs
    ``http(s)://…`` and ``www.…`` (given ``https://``); trailing ``.,;:!?'"`` and ``>`` are
    stripped, a trailing ``)`` only when it has no ``(`` partner inside the URL. Outlook
    Safe Links are unwrapped to the URL they protect. A ``www.`` inside a mail address is
    not a URL, nor is a URL naming one of ``own_addresses`` (an unsubscribe or compose link
    for the desk's own mailbox). At most 20, deduplicated (a trailing ``/`` ignored).

Phones
    Numbers starting with ``+``, ``00``, ``0`` or ``(0``, digit groups separated by one of
    space ``.`` ``/`` ``-`` or ``(0)``. Belgian numbers become E.164: 9 digits after a
    ``0`` trunk (``02 123 45 67``, ``0800 12 345``, ``04 123 45 67`` Liège) or 10 digits
    ``04[5-9]…`` (mobiles) → ``+32…``; ``+32``/``0032`` with 8 digits or 9 digits ``4[5-9]…``
    (a ``(0)`` or a stray ``0`` after the country code dropped). Other ``+``/``00`` numbers
    with 8–15 digits become ``+<digits>``. A run of groups holding two numbers
    (``02 123 45 67 / 0470 12 34 56``) is split. What cannot be normalised is kept as written
    only after a ``tel``/``gsm``/``phone``/``téléphone`` label. Refused: fax numbers (after
    ``fax``), IBAN and enterprise/VAT numbers (after ``BE68``, ``BTW``, ``TVA``, ``KBO`` …),
    ticket numbers (``SD-12``: glued to a word), amounts (``1.234,56``), more than 15 digits.

Contact name
    The last closing line of the writer's own text (``Met vriendelijke groet(en)``,
    ``Vriendelijke groeten``, ``Groeten``, ``Mvg``, ``Bedankt``, ``Kind/Best regards``,
    ``Regards``, ``Thanks``, ``Cordialement``, ``Bien à vous``, ``Salutations``,
    ``Merci``, ``Mit freundlichen Grüßen``, a ``--`` signature line …) whose rest of line,
    or one of the next three non-empty lines, looks like a person's name: 2–4 words of
    letters (hyphens, apostrophes, initials), capitalised except particles (``van``,
    ``de``, ``le`` …), no digits, no ``@``, no department or job words (``Dienst``,
    ``Communicatie``, ``Webmaster``, ``Stad`` …). A title (``Dhr.``, ``Mme``, ``Dr.``) is
    dropped. Otherwise ``""``.

Error message
    Looked for in this order, the first one found is the evidence: a stack trace
    (``Traceback (most recent call last)``, ``at com.x.Y(…)``, ``Exception in thread``,
    ``Fatal error:``, ``Warning: … on line 12``, ``Uncaught TypeError``, ``SQLSTATE[``,
    a dotted ``…Exception``); an HTTP status (``error 500``, ``fout 404``, ``erreur 500``,
    ``HTTP 500``, ``500 Internal Server Error``, ``404 Not Found``, ``403 Forbidden``,
    ``502 Bad Gateway``, ``404-fout`` …, for the 4xx/5xx codes sites show); an error
    sentence (``Error:``, ``Fout:``, ``Erreur :``, ``…foutmelding…:``, ``message d'erreur :``,
    ``error message "…"`` followed by text on the same or the next line — not "zie
    bijlage"); an image: attached, or inline and screenshot-sized (at least 400×150 pixels
    by its PNG/GIF/JPEG header, or 30 KB when the size cannot be read) — signature logos
    are inline and small. Evidence is at most 80 characters.

Several requests
    Two or more distinct *known* site IDs; or list items (``1.``, ``2)``, ``-``, ``*``,
    ``•``, ``a)``) of which at least two describe something (4 words or more, not starting
    with a UI verb such as klik/open/ga/click/go/cliquez/ouvrez, also after ``ik``/``I``/
    ``je``/``dan``/``then``/``puis``), more such items than step items, a plural word
    naming requests in the text (problemen, problèmes, problems, issues, vragen,
    questions, verzoeken, demandes, requests, punten, points, zaken) and no word naming
    steps (stappen, steps, étapes, reproduce, reproduceren, reproduire).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from urllib.parse import parse_qs, urlsplit

from mailgate.mail.parse import ParsedAttachment, ParsedMail
from mailgate.mail.quotes import is_forward_subject


@dataclass(frozen=True)
class Extracted:
    site_ids: tuple[str, ...]      # 4-digit site IDs named, in order of appearance, deduplicated
    urls: tuple[str, ...]          # http(s) URLs named (trailing punctuation stripped, max 20)
    phones: tuple[str, ...]        # phone numbers, E.164 where possible (+32...)
    contact_name: str              # from the signature, else ""
    has_error_message: bool        # pasted error text, stack trace, HTTP status, screenshot
    error_evidence: str            # what made has_error_message true ("" when false), short
    several_requests: bool         # the mail clearly holds several unrelated requests


MAX_URLS = 20
MAX_BODY = 200_000
_EVIDENCE_LEN = 80


def extract(mail: ParsedMail, known_sites: frozenset[str] = frozenset(), *,
            own_addresses: Iterable[str] = ()) -> Extracted:
    """What ``mail`` holds; see the module documentation for the rules. Worked out once per
    mail and arguments (the parse-ahead helper does it for the worker)."""
    own = tuple(own_addresses)
    done = mail.derived.get("extract")
    if isinstance(done, _Done) and done.own == own and done.known_sites == known_sites:
        return done.found
    found = _extract(mail, known_sites, own)
    mail.derived["extract"] = _Done(known_sites, own, found)
    return found


@dataclass(frozen=True)
class _Done:
    known_sites: frozenset[str]
    own: tuple[str, ...]
    found: Extracted


def _extract(mail: ParsedMail, known_sites: frozenset[str],
             own_addresses: tuple[str, ...]) -> Extracted:
    subject = _normal(mail.subject)
    forward = is_forward_subject(mail.subject)
    body = _normal((mail.text if forward else mail.new_text)[:MAX_BODY])
    # Subject and body read as one text, so that positions give the order of appearance.
    text = f"{subject}\n\n{body}"

    masked = _mask(text, _NOT_NUMBERS)
    phones, phone_spans = _phones(masked)
    masked = _mask_spans(masked, phone_spans)
    site_ids = _site_ids(masked, len(subject), known_sites)
    urls = _urls(text, own_addresses)
    own = _own_part(body) if forward else body
    evidence = _error_evidence(subject, body, mail.attachments)
    known_named = [s for s in site_ids if s in known_sites]
    return Extracted(
        site_ids=site_ids,
        urls=urls,
        phones=phones,
        contact_name=_contact_name(own),
        has_error_message=bool(evidence),
        error_evidence=evidence,
        several_requests=len(known_named) >= 2 or _several_listed(body, text),
    )


# --- text preparation -----------------------------------------------------------------------

def _normal(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\xa0", " ").replace("\u202f", " ").replace("\u200b", "")


_MONTHS = (r"(?:jan(?:uari|uary|vier)?|feb(?:ruari|ruary)?|févr(?:ier)?|fevr(?:ier)?|"
           r"maart|mars?|march|apr(?:il)?|avr(?:il)?|mei|may|mai|jun[ei]?|juin|jul[iy]?|"
           r"juil(?:let)?|aug(?:ustus|ust)?|août|aout|sep(?:t(?:ember|embre)?)?|"
           r"o[ck]t(?:ober|obre)?|nov(?:ember|embre)?|dec(?:ember)?|déc(?:embre)?)\.?")
_URL_CHARS = r"[^\s<>\"'`{}|\\^\[\]]"
_URL = re.compile(rf"(?<![@\w.])(?:https?://|www\.(?=[\w-]+\.[\w-]))(?:{_URL_CHARS})+",
                  re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+'-])[\w.+'-]{1,64}@[\w-]+(?:\.[\w-]+)+")
_DATES = (
    r"(?<![\d./-])\d{1,2}(?P<s1>[./-])\d{1,2}(?P=s1)(?:19|20)\d{2}(?!\d)",  # 01-12-2026
    r"(?<![\d./-])(?:19|20)\d{2}(?P<s2>[./-])\d{1,2}(?P=s2)\d{1,2}(?!\d)",  # 2026-12-01
    r"(?<![\d./-])\d{1,2}[./-](?:19|20)\d{2}(?![\d]|[./-]\d)",  # 12/2026
    rf"\b\d{{1,2}}(?:e|er|ste|de|st|nd|rd|th)?\s+{_MONTHS}\s+\d{{4}}(?!\d)",  # 1 dec. 2026
    rf"\b{_MONTHS}\s+(?:\d{{1,2}},?\s+)?\d{{4}}(?!\d)",          # December 1, 2026; mei 2026
)
_TIME = r"(?<![\d:.])\d{1,2}(?::\d{2}(?::\d{2})?|[hu]\d{2})(?![\d:])"
_NOT_NUMBERS = re.compile(
    "|".join([_URL.pattern, _EMAIL.pattern, *(f"(?:{d})" for d in _DATES), _TIME]),
    re.IGNORECASE)


def _mask(text: str, pattern: re.Pattern[str]) -> str:
    return pattern.sub(lambda m: "_" * len(m.group(0)), text)


def _before(text: str, pos: int, width: int = 1000) -> str:
    """Up to ``width`` characters before ``pos`` on its line."""
    return text[max(0, pos - width):pos].rsplit("\n", 1)[-1]


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        chars[start:end] = "_" * (end - start)
    return "".join(chars)


# --- phones -------------------------------------------------------------------------------

_PHONE = re.compile(r"""
    (?<![\w+])(?<!\d[./-])(?<![^\W\d_]-)       # not glued to a word, a number or "SD-"
    (?:\+|\(\+?)?\d+\)?                        # +32, 0032, 0470, (02), (+32)
    (?:(?:[ \t]?\(0\)[ \t]?|[ \t]?[./-][ \t]?|[ \t])\(?\d+\)?)*
    (?!\w)(?![.,/-]\d)
""", re.VERBOSE)
_TOKEN = re.compile(r"\D*\d+\)?")
_LABEL = re.compile(
    r"(?:\b(?:tel|tél|telefoon|telefoonnummer|telephone|téléphone|phone|gsm|mobile|mobiel|"
    r"portable|mob|t|m)\b\.?\s*(?:nr\.?|n°)?\s*[:.]?\s*)$", re.IGNORECASE)
_FAX = re.compile(r"\b(?:tele)?fax\b\.?\s*(?:nr\.?|n°)?\s*[:.]?\s*$", re.IGNORECASE)
_NOT_PHONE_BEFORE = re.compile(
    r"(?:\b(?:btw|tva|vat|kbo|bce|ondernemingsnummer|ondernemingsnr|entreprise|enterprise|"
    r"rekening|rekeningnummer|compte|iban|account|rijksregister\w*|rrn|niss|insz|"
    r"registre\s+national)\b\.?\s*(?:nr\.?|n°|number|nummer)?\s*[:.]?\s*(?:BE\s?)?|"
    r"\b[A-Z]{2}\d{2}\s?|[€$£]\s?)$", re.IGNORECASE)
_NOT_PHONE_AFTER = re.compile(r"^\s?(?:€|eur\b|euro)", re.IGNORECASE)


def _e164(raw: str) -> str | None:
    """``raw`` as an E.164 number, or None when it is no phone number we can normalise."""
    intl = raw.startswith(("+", "(+")) or re.sub(r"\D", "", raw).startswith("00")
    if intl:
        raw = re.sub(r"\(\s*0\s*\)", "", raw)
    digits = re.sub(r"\D", "", raw)
    if not 8 <= len(digits) <= 17:
        return None
    if intl:
        number = digits[2:] if digits.startswith("00") else digits
        if number.startswith("32"):
            national = number[2:]
            if national.startswith("0"):
                national = national[1:]
            if (len(national) == 8 and national[0] != "0") or \
                    (len(national) == 9 and national[:2] in ("45", "46", "47", "48", "49")):
                return f"+32{national}"
            return None
        if number[:1] in ("", "0") or not 8 <= len(number) <= 15:
            return None
        return f"+{number}"
    if not digits.startswith("0") or digits.startswith("00"):
        return None
    if len(digits) == 9 or (len(digits) == 10 and digits[1:3] in ("45", "46", "47", "48", "49")):
        return f"+32{digits[1:]}"
    return None


def _partition(tokens: list[str], start: int) -> list[tuple[int, int, str]]:
    """Numbers read from ``tokens`` (a candidate cut into separator+digits pieces): at each
    point the longest valid run of pieces; where none starts, reading resumes after the next
    spaced separator ("02 123 45 67 - 0470 12 34 56") or stops."""
    found: list[tuple[int, int, str]] = []
    i = 0
    offsets = [start]
    for token in tokens:
        offsets.append(offsets[-1] + len(token))
    while i < len(tokens):
        last, digits = i, 0
        while last < len(tokens) and digits <= 17:   # no number is longer than that
            digits += sum(c.isdigit() for c in tokens[last])
            last += 1
        for j in range(last, i, -1):
            piece = "".join(tokens[i:j])
            number = _e164(piece.strip(" \t./-"))
            if number is not None:
                lead = len(piece) - len(piece.lstrip(" \t./-"))
                found.append((offsets[i] + lead, offsets[j], number))
                i = j
                break
        else:
            i = next((k for k in range(i + 1, len(tokens))
                      if re.match(r"[ \t][./-][ \t]", tokens[k])), len(tokens))
    return found


def _phones(masked: str) -> tuple[tuple[str, ...], list[tuple[int, int]]]:
    found: dict[str, None] = {}
    spans: list[tuple[int, int]] = []
    for m in _PHONE.finditer(masked):
        before = _before(masked, m.start(), 40)
        if _FAX.search(before) or _NOT_PHONE_BEFORE.search(before) \
                or _NOT_PHONE_AFTER.match(masked[m.end():m.end() + 6]):
            continue
        numbers = _partition(_TOKEN.findall(m.group(0)), m.start())
        for start, end, number in numbers:
            found.setdefault(number, None)
            spans.append((start, end))
        if not numbers and _LABEL.search(before) \
                and 8 <= len(re.sub(r"\D", "", m.group(0))) <= 15:
            found.setdefault(m.group(0).strip(), None)
            spans.append(m.span())
    return tuple(found), spans


# --- site IDs -------------------------------------------------------------------------------

_SITE_WORD = (r"(?:web)?sites?(?:[\s-]?(?:web|internet))?|webstek(?:ken)?|site-?ids?|siteids?")
_NUMBER_WORD = r"(?:n°|nº|nr\.?|no\.|no\b|#|number|nummer|numéro|numero|id)"
_OF_SITE = (r"\s+(?:du|de\s+la|de|van\s+de|van\s+het|van|of\s+the|of|of\s+your)\s+"
            r"(?:web)?(?:site|webstek)")
_ID_LIST = r"\d{4}(?:\s*(?:,|/|&|\band\b|\ben\b|\bet\b|\bund\b)\s*\d{4})*"
_SITE_EXPLICIT = re.compile(
    rf"\b(?:(?:{_SITE_WORD})(?:[\s-]*{_NUMBER_WORD})?"
    rf"|(?:id|identifiant|identificatie|identifier|nummer|number|numéro|n°|nº|nr\.?)"
    rf"(?:{_OF_SITE})"
    rf"|id|identifiant)"
    rf"\s*[:=#]?\s*(?P<ids>{_ID_LIST})(?![\d])(?![.,/:-]\d)",
    re.IGNORECASE)
_SUBJECT_TAG = re.compile(r"\[(\d{4})\]")
_NOT_SITE_OWNER = re.compile(
    r"\b(?:ticket|case|dossier|order|bestelling|commande|user|gebruikers?|utilisateur|sessie|"
    r"session|transacti\w*|klant|client|aanvraag|demande|request|melding|factuur|facture|"
    r"invoice|document|object|node|pagina|page|media|bestand|fichier|file|product|item|"
    r"artikel|article|video|form(?:ulier|ulaire)?|content|inhoud|taak|task)[\s-]*$",
    re.IGNORECASE)
_BARE = re.compile(r"(?<![\w.,/:+#€$-])\d{4}(?![\w]|[.,/:-]\d)")
_NOT_SITE_BEFORE = re.compile(
    r"(?:\b(?:error|fout|erreur|code|foutcode|status|ticket|sd|nr|no|n°|ref|referentie|"
    r"référence|reference|factuur|facture|invoice|order|bestelling|commande|kamer|bureau|"
    r"lokaal|postbus|bus|boîte|bte|pagina|page|p|artikel|article|art|versie|version|v|"
    r"eur|pin|id)\.?\s*[:#]?\s*|"
    r"[€$£]\s*|\d[\s./-]|\b[A-Z]{2}\d{2}\s)$", re.IGNORECASE)
_NOT_SITE_AFTER = re.compile(
    r"^(?:\s?[./-]?\s?\d|\s*(?:€|eur\b|euro|u\b|h\b|uur|heures?|hrs?\b|km|m²|m2\b|kb|mb|gb|"
    r"px|%|x\d|pixels?))", re.IGNORECASE)
_POSTCODE = re.compile(r"^[ \t]+[A-ZÀ-Ý][^\W\d_]+")
_POSTCODE_BEFORE = re.compile(r"(?:^|[,;]|\bB-|\bBE-)\s*$")


def _site_ids(masked: str, subject_len: int, known: frozenset[str]) -> tuple[str, ...]:
    hits: list[tuple[int, str]] = []
    for m in _SITE_EXPLICIT.finditer(masked):
        if _NOT_SITE_OWNER.search(masked[max(0, m.start() - 30):m.start()]):
            continue
        start = m.start("ids")
        hits += [(start + d.start(), d.group(0)) for d in re.finditer(r"\d{4}", m.group("ids"))]
    hits += [(m.start(1), m.group(1)) for m in _SUBJECT_TAG.finditer(masked[:subject_len])]
    for m in _BARE.finditer(masked):
        number = m.group(0)
        if number not in known or 1900 <= int(number) <= 2099:
            continue
        before = _before(masked, m.start(), 30)
        after = masked[m.end():m.end() + 12]
        if _NOT_SITE_BEFORE.search(before) or _NOT_SITE_AFTER.match(after):
            continue
        if _POSTCODE.match(after) and _POSTCODE_BEFORE.search(before):
            continue
        hits.append((m.start(), number))
    seen: dict[str, None] = {}
    for _pos, number in sorted(hits):
        seen.setdefault(number, None)
    return tuple(seen)


# --- URLs -----------------------------------------------------------------------------------

_TRAILING = ".,;:!?'\">»"


def _clean_url(url: str) -> str:
    while url:
        if url[-1] in _TRAILING or (url[-1] == ")" and url.count("(") < url.count(")")):
            url = url[:-1]
        else:
            break
    return url


def _unwrap(url: str) -> str:
    """Outlook Safe Links → the URL they protect."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.hostname and parts.hostname.endswith("safelinks.protection.outlook.com"):
        target = parse_qs(parts.query).get("url", [""])[0]
        if target.lower().startswith(("http://", "https://")):
            return target
    return url


def _urls(text: str, own_addresses: Iterable[str]) -> tuple[str, ...]:
    own = [a.lower() for a in own_addresses if a]
    own += [a.replace("@", "%40") for a in own]
    found: dict[str, str] = {}
    for m in _URL.finditer(text):
        url = _clean_url(m.group(0))
        if url.lower().startswith("www."):
            url = f"https://{url}"
        url = _unwrap(url)
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            continue
        if "." not in host and host != "localhost":
            continue
        if any(a in url.lower() for a in own):
            continue
        found.setdefault(url.rstrip("/").lower(), url)
        if len(found) >= MAX_URLS:
            break
    return tuple(found.values())


# --- contact name ---------------------------------------------------------------------------

_CLOSING = re.compile(r"""^\s*(?:
    met\s+(?:vriendelijke|hartelijke|beste|collegiale)\s+groet(?:en)?
  | (?:vriendelijke|hartelijke|beste|warme|collegiale)\s+groet(?:en|jes)?
  | groet(?:en|jes)? | mvg | m\.v\.g\.? | vg
  | (?:alvast\s+)?(?:bedankt|dank\s+u(?:\s+wel)?|dank\s+je(?:\s+wel)?|hartelijk\s+dank)
    (?:\s+alvast)?(?:\s+voor\s+[^,.!\n]{1,40})?
  | (?:kind|best|warm|warmest|kindest)\s+regards | regards | best\s+wishes | cheers | best
  | (?:many\s+)?thanks(?:\s+in\s+advance)? | thank\s+you(?:\s+in\s+advance)?
  | (?:bien\s+|très\s+)?cordialement | bien\s+à\s+vous | bien\s+à\s+toi
  | (?:(?:meilleures|sincères|sinceres|mes)\s+)?salutations(?:\s+distinguées)?
  | merci(?:\s+d'avance|\s+d’avance|\s+beaucoup|\s+bien)?
  | mit\s+freundlichen\s+gr(?:ü|ue|u)(?:ß|ss)en | mfg | viele\s+gr(?:ü|ue|u)(?:ß|ss)e
  | --
)\s*[,.!:]*(?:\s+(?P<rest>.*?))?\s*$""", re.IGNORECASE | re.VERBOSE)
_PARTICLES = {"van", "de", "der", "den", "het", "ter", "ten", "te", "le", "la", "du", "des",
              "von", "zu", "di", "da", "del", "dos", "el", "vd", "v.d.", "d'", "t'", "l'"}
_TITLES = re.compile(r"^(?:dhr|mevr|mw|mr|mrs|ms|dr|prof|ir|ing|mme|mlle|m|me|herr|frau|"
                     r"meneer|mevrouw|madame|monsieur)\.?\s+", re.IGNORECASE)
_NOT_NAME_WORDS = {
    "stad", "gemeente", "provincie", "fod", "spf", "service", "services", "cel", "cellule",
    "team", "webteam", "office", "desk", "support", "sent", "verzonden", "envoyé", "iphone",
    "android", "outlook", "mobile", "website", "site", "web", "page", "pagina", "vzw", "asbl",
    "nv", "bv", "bvba", "sa", "srl", "sprl", "cabinet", "kabinet", "federal", "federale",
    "fédéral", "vlaamse", "public", "publique", "openbare", "belgium", "belgië", "belgique",
    "vlaanderen", "wallonie", "region", "région", "regie", "manager", "director", "directeur",
    "chef", "hoofd", "head", "officer", "expert", "attaché", "attache", "collaborateur",
    "verantwoordelijke", "responsable", "editor", "content", "adviseur", "conseiller",
    "conseillère", "ministre", "minister", "secretariaat", "secrétariat", "unit", "eenheid",
    "group", "groups", "groep", "groupe", "get", "from", "my", "account", "gmail", "google",
    "yahoo", "microsoft", "mailer", "daemon", "postmaster", "administrator", "admin",
}
_NOT_NAME_PARTS = ("dienst", "communicat", "redact", "rédact", "medewerker", "bestuur",
                   "overheid", "ministe", "departement", "département", "afdeling", "agentschap",
                   "universit", "webmaster", "helpdesk", "servicedesk", "coördinat", "coordinat",
                   "administrat", "direct", "service")
_NAME_WORD = re.compile(r"^[^\W\d_]+(?:['’-][^\W\d_]+)*\.?$")
_FORWARD_START = re.compile(
    r"^\s*(?:-{2,}.*-{2,}|_{5,}|Begin forwarded message:|Begin doorgestuurd bericht:|"
    r"Début du message réexpédié|Anfang der weitergeleiteten Nachricht:|"
    r"\*?(?:From|Van|De|Von)\s?:\*?\s)", re.IGNORECASE)


def _own_part(body: str) -> str:
    """The forwarder's own words: the text above the forwarded mail."""
    lines = body.split("\n")
    for i, line in enumerate(lines):
        if _FORWARD_START.match(line):
            return "\n".join(lines[:i])
    return body


def _name(line: str) -> str:
    line = _TITLES.sub("", line.strip().strip(",.;"))
    if not line or re.search(r"[\d@:/|()<>\[\]]", line):
        return ""
    words = line.split()
    if not 2 <= len(words) <= 4:
        return ""
    capitalised = 0
    for word in words:
        low = word.lower()
        if low in _NOT_NAME_WORDS or any(p in low for p in _NOT_NAME_PARTS):
            return ""
        if low in _PARTICLES or (low.startswith(("d'", "d’")) and word[:1].islower()):
            continue
        if not _NAME_WORD.match(word) or not word[0].isupper():
            return ""
        capitalised += 1
    if capitalised < 2 or not words[0][0].isupper() or words[-1].lower() in _PARTICLES:
        return ""
    return " ".join(words)


def _contact_name(own: str) -> str:
    lines = own.split("\n")
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if line.lstrip().startswith(">"):
            continue
        m = _CLOSING.match(line)
        if not m:
            continue
        rest = m.group("rest") or ""
        if rest:
            name = _name(rest)
            if name:
                return name
            continue  # "Groeten uit Gent": a sentence, not a closing line
        for candidate in islice((ln for ln in lines[i + 1:] if ln.strip()), 3):
            if candidate.lstrip().startswith(">"):
                break
            name = _name(candidate)
            if name:
                return name
    return ""


# --- error message --------------------------------------------------------------------------

_STACK = re.compile(
    r"Traceback \(most recent call last\)"
    r"|Exception in thread \"?[\w-]+"
    r"|^[ \t]*at (?:[\w$<>]+\.){2,30}[\w$<>]+\([^)\n]{0,200}\)"
    r"|\b(?:PHP )?(?:Fatal error|Parse error|Catchable fatal error)\s*:[^\n]{0,60}"
    r"|\b(?:Warning|Notice|Deprecated)\s*:[^\n]{1,200}? on line \d+"
    r"|\bUncaught (?:\w+Error|\w*Exception)\b[^\n]{0,60}"
    r"|\bSQLSTATE\[\w+\][^\n]{0,60}"
    r"|\bORA-\d{5}\b[^\n]{0,60}"
    r"|(?<![\w.])(?:[a-z]\w*\.){1,12}[A-Z]\w*(?:Exception|Error)\b[^\n]{0,60}"
    r"|\bStack trace:",
    re.MULTILINE)
_STATUS_CODES = r"(?:400|401|403|404|405|408|410|413|429|500|501|502|503|504)"
_STATUS_NAMES = (r"(?:Bad Request|Unauthori[sz]ed|Forbidden|Not Found|Method Not Allowed|"
                 r"Request Time-?out|Gone|Payload Too Large|Request Entity Too Large|"
                 r"Too Many Requests|Internal Server Error|Not Implemented|Bad Gateway|"
                 r"Service (?:Temporarily )?Unavailable|Gateway Time-?out)")
_HTTP_STATUS = re.compile(
    rf"\b{_STATUS_CODES}\s*[-:]?\s*{_STATUS_NAMES}\b"
    rf"|\b(?:error|fout|erreur|fehler|foutcode|code|status|statuscode|http(?:/\d(?:\.\d)?)?)"
    rf"(?:\s+code)?\s*[:-]?\s*{_STATUS_CODES}(?![\d])(?![.,/-]\d)"
    rf"|(?<![\d.,/-])\b{_STATUS_CODES}[- ](?:error|fout|foutmelding|erreur|fehler|"
    rf"pagina|page)\b",
    re.IGNORECASE)
_ERROR_LABEL = re.compile(
    r"(?:^|(?<=[\s\"“«(]))(?:"
    r"(?P<word>error|fout|erreur|fehler)\s?:"
    r"|(?P<phrase>foutmelding|foutboodschap|error\s+message|message\s+d['’]erreur|"
    r"fehlermeldung|melding\s+van\s+de\s+fout)\b[^\n:.!?\"“«]{0,60}?\s*(?P<sep>[:\"“«])"
    r")", re.IGNORECASE | re.MULTILINE)
_ATTACHED = re.compile(
    r"^(?:zie|see|voir|in|en|ci|cf)\b.{0,20}(?:bijlage|attach|pi[eè]ce|annexe|joint)|"
    r"^(?:screenshot|schermafdruk|capture)", re.IGNORECASE)


def _short(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= _EVIDENCE_LEN else text[:_EVIDENCE_LEN - 1].rstrip() + "…"


def _unquote(text: str) -> str:
    text = text.strip()
    if text[:1] in "\"“«'‘" and text[-1:] in "\"”»'’":
        text = text[1:-1].strip()
    return text.strip("\"“”«»")


def _error_sentence(body: str) -> str:
    for m in _ERROR_LABEL.finditer(body):
        if _before(body, m.start()).lstrip().startswith(">"):
            continue
        line_end = body.find("\n", m.end())
        rest = body[m.end():line_end if line_end >= 0 else len(body)]
        if m.group("sep") in ("\"", "“", "«"):
            rest = re.split(r"[\"”»]", rest, maxsplit=1)[0]
        rest = _unquote(rest)
        if not rest and line_end >= 0:
            following = body[line_end + 1:line_end + 2000].split("\n")[:3]
            nxt = next((ln for ln in following if ln.strip()), "")
            rest = "" if nxt.lstrip().startswith(">") else _unquote(nxt)
        if sum(c.isalpha() for c in rest) < 3 or _ATTACHED.match(rest):
            continue
        label = (m.group("word") or m.group("phrase") or "").strip()
        return _short(f"{label}: {rest}")
    return ""


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, GIF or JPEG header; None when it cannot be read."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return int(w), int(h)
            i += 2 + length
    return None


def _is_screenshot(att: ParsedAttachment) -> bool:
    if not att.content_type.lower().startswith("image/"):
        return False
    if not att.content_id:
        return True            # attached on purpose
    size = _image_size(att.payload)
    if size is None:
        return len(att.payload) >= 30_000
    return size[0] >= 400 and size[1] >= 150


def _error_evidence(subject: str, body: str,
                    attachments: tuple[ParsedAttachment, ...]) -> str:
    finders: list[Callable[[], str]] = [
        lambda: _first_match(_STACK, body),
        lambda: _first_match(_HTTP_STATUS, f"{subject}\n{body}"),
        lambda: _error_sentence(body),
    ]
    for find in finders:
        found = find()
        if found:
            return found
    for att in attachments:
        if _is_screenshot(att):
            return _short(f"screenshot {att.filename or att.content_type}")
    return ""


def _first_match(pattern: re.Pattern[str], text: str) -> str:
    for m in pattern.finditer(text):
        if not _before(text, m.start()).lstrip().startswith(">"):
            return _short(m.group(0))
    return ""


# --- several requests -----------------------------------------------------------------------

_ITEM = re.compile(r"^\s*(?:\(?\d{1,2}\s*[.):]|\d{1,2}\s+[-–]|[-*•·▪◦–—]|\(?[a-h][.)])\s+(\S.*)$")
_STEP_VERBS = {
    # nl
    "klik", "klikken", "open", "openen", "ga", "gaan", "navigeer", "selecteer", "kies", "vul",
    "typ", "tik", "log", "druk", "scroll", "surf", "herlaad", "ververs", "wacht", "sla",
    "zoek", "bezoek", "bekijk",
    # en
    "click", "go", "navigate", "select", "choose", "type", "enter", "fill", "press", "reload",
    "refresh", "save", "wait", "visit", "browse", "login", "then", "search", "hit", "tap",
    # fr
    "cliquez", "cliquer", "clique", "ouvrez", "ouvrir", "ouvre", "allez", "aller", "va",
    "sélectionnez", "selectionnez", "choisissez", "saisissez", "tapez", "remplissez",
    "connectez", "naviguez", "appuyez", "rechargez", "enregistrez", "attendez", "cherchez",
    "j'ouvre", "j’ouvre", "j'accède", "j’accède", "accédez",
}
_LEAD_WORDS = {"ik", "je", "u", "we", "wij", "i", "you", "on", "nous", "dan", "daarna",
               "vervolgens", "then", "puis", "ensuite", "and", "en", "et", "next", "first",
               "eerst", "d'abord", "tout"}
_REQUEST_WORDS = re.compile(
    r"\b(?:problemen|problèmes|problemes|problems|issues|vragen|vraagjes|questions|verzoeken|"
    r"demandes|requests|punten|points|zaken|soucis|bugs)\b", re.IGNORECASE)
_STEP_WORDS = re.compile(
    r"\b(?:stappen|stap\s+\d|steps?|étapes?|etapes?|reproduce|reproduceren|reproduire|"
    r"procédure\s+suivie)\b", re.IGNORECASE)


def _is_step(item: str) -> bool:
    words = [w.strip(",.:;!?\"'()").lower() for w in item.split()]
    for word in words[:3]:
        if word in _STEP_VERBS:
            return True
        if word not in _LEAD_WORDS:
            return False
    return False


def _several_listed(body: str, text: str) -> bool:
    if not _REQUEST_WORDS.search(text) or _STEP_WORDS.search(text):
        return False
    problems = steps = 0
    for line in body.split("\n"):
        if line.lstrip().startswith(">"):
            continue
        m = _ITEM.match(line)
        if not m:
            continue
        item = m.group(1)
        if _is_step(item):
            steps += 1
        elif len(item.split()) >= 4:
            problems += 1
    return problems >= 2 and steps < problems
