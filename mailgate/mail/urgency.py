"""Does the sender mark this mail urgent? Priority headers, then words in the subject, then
words at the start of the new text.

:func:`urgency` returns the first sign found with its evidence (``"Importance: high"``,
``'subject: "DRINGEND"'``), or ``None``. What the desk does with it (priority urgent) is the
caller's business; this module only reads the mail.

Headers: ``Importance: high``, ``X-Priority: 1`` or ``2`` (``"1 (Highest)"``, ``"2 (High)"``),
``Priority: urgent`` (RFC 2156), ``X-MSMail-Priority: High``. ``Priority: non-urgent``,
``X-Priority: 3``-``5``, ``Importance: normal|low`` and ``Precedence`` say nothing.

Words: one table, :data:`PHRASES`, of (phrase, languages, where). Matching is on whole words,
case- and accent-insensitive (``Urgénce`` is ``urgence``, ``URGENT`` is ``urgent``); the words
of a phrase may be joined by spaces or hyphens (``site-down``). Reply and forward prefixes and
ticket tags (``Re:``, ``TR:``, ``[SD-12]``) may come before. Where a phrase counts:

- ``STRONG``: in the subject, and in the first 300 characters of the new text (the quoted
  earlier mail split off, the signature below a ``--`` line cut off). The words that *say*
  urgency (dringend, spoed, urgent, urgence, emergency, noodgeval, Notfall, eilig …) and
  whole-site outages (ligt plat, site down, hors service).
- ``SUBJECT``: in the subject only. Words fine on a subject line but common in running text:
  "asap"/"zsm" ("answer asap"), "en panne" (a car), "is down" ("traffic is down"), "niet
  bereikbaar" ("ik ben morgen niet bereikbaar"), "hors ligne", "outage", "ausgefallen".
- ``TAG``: in the subject only as a tag: ``[CRITICAL]``/``(kritiek)`` anywhere, or the first
  word (after prefixes) followed by ``:``, ``!`` or nothing — ``"Critical: menu weg"``. Used
  for critical/critique/kritiek, which are ordinary words elsewhere: "Critical CSS", "critical
  rendering path", "Critique du nouveau site" (criticism), "Kritiek op de huisstijl".

Qualifiers (a phrase does not count when, in its clause — the text back to the last ``,``
``.`` ``:`` ``;`` ``!`` ``?`` bracket, quote or spaced dash —):

- one of the two words before it is a negation or a condition: "niet dringend", "geen spoed",
  "pas urgent", "sans urgence", "rien d'urgent", "not urgent", "non-urgent", "isn't urgent",
  "nicht eilig"; "indien dringend", "bij dringende vragen" (signatures), "si urgent", "en cas
  d'urgence", "in case of emergency", "if urgent", "als het dringend is"; "planned outage".
  One-letter elisions (``d'``, ``l'``) and articles like "a" are not counted as words.
- for the states one can also *ask for* (hors service, hors ligne, site down, website down),
  a request verb anywhere earlier in the clause: "Mise hors ligne de la page X", "Mettre
  l'ancien site hors service", "Take the site down tonight".

Decisions:

- "werkt niet meer" and "ne fonctionne plus" are left out: they say that something broke, not
  that it is urgent; most requests to the desk are of that form, so the flag would lose its
  meaning.
- Inflections are rows of their own ("dringende", "urgente", "spoedeisende", "urgently"):
  "Dringende vraag" is urgent. "urgentie"/"Urgenties in het menu" is not (whole words only;
  "urgent" does not match inside "urgentie" or "urgentiebeleid").
- "kritiek" (Dutch noun: criticism) and "critique" (French noun: criticism) are tags only;
  the adjective forms that cannot be nouns count anywhere in the subject ("kritieke fout",
  "erreur critique", "critical error", "critical issue").
- "plat" alone never counts ("plat tarief"); "ligt plat" and "ligt eruit" do.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from mailgate.mail.parse import ParsedMail


@dataclass(frozen=True)
class Urgency:
    """Why the mail counts as urgent: ``"Importance: high"``, ``"X-Priority: 1 (Highest)"``,
    ``'subject: "DRINGEND"'``, ``'text: "ligt plat"'`` (as written in the mail)."""

    evidence: str


STRONG, SUBJECT, TAG = "strong", "subject", "tag"


@dataclass(frozen=True)
class Phrase:
    text: str        # lower case, no accents; words separated by one space
    languages: str   # "nl", "fr", "en", "de", space-separated when shared
    where: str       # STRONG | SUBJECT | TAG (see the module docstring)


PHRASES: tuple[Phrase, ...] = (
    # Dutch (and German, where the word is the same)
    Phrase("dringend", "nl de", STRONG),
    Phrase("dringende", "nl de", STRONG),
    Phrase("spoed", "nl", STRONG),
    Phrase("spoedeisend", "nl", STRONG),
    Phrase("spoedeisende", "nl", STRONG),
    Phrase("noodgeval", "nl", STRONG),
    Phrase("ligt plat", "nl", STRONG),
    Phrase("ligt eruit", "nl", SUBJECT),
    Phrase("onbereikbaar", "nl", SUBJECT),
    Phrase("niet bereikbaar", "nl", SUBJECT),
    Phrase("zsm", "nl", SUBJECT),
    Phrase("kritieke", "nl", SUBJECT),
    Phrase("kritiek", "nl", TAG),
    # French (and English, where the word is the same)
    Phrase("urgent", "fr en", STRONG),
    Phrase("urgente", "fr", STRONG),
    Phrase("urgence", "fr", STRONG),
    Phrase("hors service", "fr", STRONG),
    Phrase("en panne", "fr", SUBJECT),
    Phrase("hors ligne", "fr", SUBJECT),
    Phrase("site inaccessible", "fr", SUBJECT),
    Phrase("erreur critique", "fr", SUBJECT),
    Phrase("critique", "fr", TAG),
    # English
    Phrase("urgently", "en", STRONG),
    Phrase("emergency", "en", STRONG),
    Phrase("site down", "en", STRONG),
    Phrase("website down", "en", STRONG),
    Phrase("asap", "en", SUBJECT),
    Phrase("is down", "en", SUBJECT),
    Phrase("outage", "en", SUBJECT),
    Phrase("critical error", "en", SUBJECT),
    Phrase("critical issue", "en", SUBJECT),
    Phrase("critical", "en", TAG),
    # German
    Phrase("eilig", "de", STRONG),
    Phrase("notfall", "de", STRONG),
    Phrase("ausgefallen", "de", SUBJECT),
    Phrase("nicht erreichbar", "de", SUBJECT),
)

# A phrase does not count when one of the two words before it (same clause) is one of these.
NEGATIONS = frozenset({
    "niet", "geen", "zonder", "minder", "weinig", "niets", "nooit",                  # nl
    "pas", "non", "sans", "moins", "peu", "rien", "aucun", "aucune", "jamais",       # fr
    "not", "no", "without", "less", "nothing", "never", "isnt", "arent", "wasnt",    # en
    "dont", "doesnt",
    "nicht", "kein", "keine", "keinen", "keiner", "ohne", "nichts", "weniger",       # de
})
CONDITIONS = frozenset({
    "indien", "bij", "ingeval", "geval",                                             # nl
    "si", "cas",                                                                     # fr
    "if", "case",                                                                    # en
    "falls", "wenn", "bei",                                                          # de
    "gepland", "geplande", "prevu", "prevue", "planifie", "planifiee",               # announced,
    "planned", "scheduled", "geplant", "geplante",                                   # not now
})
# "als" is both "if" and "as" in Dutch ("gelieve dit als dringend te behandelen" is urgent):
# only these pairs, right before the phrase, are conditions.
CONDITION_PAIRS = frozenset({("als", "het"), ("als", "dit"), ("als", "er"), ("als", "u"),
                             ("als", "je")})
# Asking for the state rather than reporting it: "Mise hors ligne de la page", "Take the site
# down". Checked in the whole clause before these phrases only ("Mise à jour urgente" stays
# urgent).
REQUEST_VERBS = frozenset({"mettre", "mets", "mettez", "mise", "mis", "remettre", "placer",
                           "take", "taking", "took", "bring", "put"})
ASKABLE = frozenset({"hors service", "hors ligne", "site down", "website down"})

BODY_CHARS = 300


# --- normalising: lower case, no accents, with the way back to the original text ----------

def _fold(text: str) -> tuple[str, list[int]]:
    """``text`` case-folded without accents, and for each character of it the index of the
    character of ``text`` it came from."""
    if text.isascii():  # nothing to decompose, and casefold() is lower() there
        return text.lower(), list(range(len(text)))
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        folded = _fold_char(ch)
        out.append(folded)
        where.extend([i] * len(folded))
    return "".join(out), where


@functools.lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    return "".join(c.casefold() for c in unicodedata.normalize("NFKD", ch)
                   if not unicodedata.combining(c))


def _pattern(phrases: list[Phrase]) -> re.Pattern[str]:
    alternatives = sorted((p.text for p in phrases), key=len, reverse=True)
    body = "|".join(r"[\s\-]+".join(map(re.escape, a.split())) for a in alternatives)
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)")


_BY_TEXT = {p.text: p for p in PHRASES}
assert len(_BY_TEXT) == len(PHRASES), "a phrase is in the table twice"
assert all(_fold(p.text)[0] == p.text for p in PHRASES), "table phrases: lower case, no accents"

_SUBJECT = _pattern([p for p in PHRASES if p.where in (STRONG, SUBJECT)])
_BODY = _pattern([p for p in PHRASES if p.where == STRONG])
_TAG_WORDS = "|".join(re.escape(p.text) for p in PHRASES if p.where == TAG)
_PREFIXES = (r"(?:\s*(?:(?:re|aw|antw|sv|vs|r|rif|ref|fwd?|fw|tr|wg|doorst|trans|rv)\s*"
             r"(?:\[\d+\])?\s*:|\[[^\]]*\]|\*+))*\s*")
_TAG = re.compile(rf"[\[(]\s*({_TAG_WORDS})\s*[\])]|^{_PREFIXES}({_TAG_WORDS})\s*(?:[:!]|$)")

_CLAUSE_END = re.compile(r".*(?:[,.;:!?()\[\]{}<>|/\"«»“”\n]|\s[-–—]+\s)", re.DOTALL)
_WORD = re.compile(r"\w+(?:['’]\w+)*")
_SIGNATURE = re.compile(r"^(?:--\s*|__+\s*|-- .*)$", re.MULTILINE)


def _clause_before(folded: str, start: int) -> list[str]:
    """The words of the clause that ends where a match starts, one-letter words left out."""
    before = folded[:start]
    m = _CLAUSE_END.match(before)
    if m:
        before = before[m.end():]
    return [w.replace("'", "").replace("’", "") for w in _WORD.findall(before) if len(w) > 1]


def _qualified(folded: str, start: int, phrase: str) -> bool:
    """Negated, conditional, announced or asked for: the phrase does not make the mail
    urgent."""
    words = _clause_before(folded, start)
    window = words[-2:]
    if any(w in NEGATIONS or w in CONDITIONS for w in window) or tuple(window) in CONDITION_PAIRS:
        return True
    return phrase in ASKABLE and any(w in REQUEST_VERBS for w in words)


def _find(text: str, pattern: re.Pattern[str]) -> str | None:
    """The first unqualified phrase of ``pattern`` in ``text``, as written there."""
    folded, where = _fold(text)
    for m in pattern.finditer(folded):
        phrase = re.sub(r"[\s\-]+", " ", m.group(0))
        if not _qualified(folded, m.start(), phrase):
            return text[where[m.start()]:where[m.end() - 1] + 1]
    return None


def _find_tag(subject: str) -> str | None:
    folded, where = _fold(subject)
    for m in _TAG.finditer(folded):
        group = 1 if m.group(1) is not None else 2
        if not _qualified(folded, m.start(group), m.group(group)):
            return subject[where[m.start(group)]:where[m.end(group) - 1] + 1]
    return None


# --- the checks ---------------------------------------------------------------------------

_X_PRIORITY = re.compile(r"^\s*[12](?!\d)")


def _header_urgency(mail: ParsedMail) -> Urgency | None:
    importance = mail.header("importance").strip()
    if importance.lower() == "high":
        return Urgency(f"Importance: {importance}")
    x_priority = mail.header("x-priority").strip()
    if _X_PRIORITY.match(x_priority):
        return Urgency(f"X-Priority: {x_priority[:40]}")
    priority = mail.header("priority").strip()
    if priority.lower() == "urgent":
        return Urgency(f"Priority: {priority}")
    ms_priority = mail.header("x-msmail-priority").strip()
    if ms_priority.lower() == "high":
        return Urgency(f"X-MSMail-Priority: {ms_priority}")
    return None


def _start_of_text(mail: ParsedMail) -> str:
    """The new text above the signature, its first BODY_CHARS characters."""
    text = mail.new_text
    m = _SIGNATURE.search(text)
    if m:
        text = text[:m.start()]
    return text.lstrip()[:BODY_CHARS]


def urgency(mail: ParsedMail) -> Urgency | None:
    """The first sign that the sender marks the mail urgent: a priority header, a phrase of
    :data:`PHRASES` in the subject, a ``STRONG`` phrase at the start of the new text."""
    found = _header_urgency(mail)
    if found:
        return found
    word = _find(mail.subject, _SUBJECT) or _find_tag(mail.subject)
    if word:
        return Urgency(f'subject: "{word}"')
    word = _find(_start_of_text(mail), _BODY)
    if word:
        return Urgency(f'text: "{word}"')
    return None
