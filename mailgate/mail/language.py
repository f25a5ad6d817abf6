"""The language of a mail's own text: ``nl``, ``fr``, ``en`` or ``de``, or None when unclear.

``detect(text) -> str | None``. The detector is lingua (``lingua-language-detector``): its
models ship inside the wheel (nothing is fetched at run time), and it is built once, on first
use, restricted to the four languages, in high-accuracy mode with the models preloaded
(about 140 MB resident and 1–2 s to build; a call then takes well under a millisecond). The
package is imported inside the function that builds the detector, so importing this module —
as ``mailgate deliver`` does through the mail package — costs nothing; only the daemon, which
calls :func:`detect`, pays once.

What is looked at, in order:

1. The first :data:`MAX_SCAN` characters. Lines quoting an earlier mail (``>``) go, and so do
   URLs, e-mail addresses and paths.
2. The signature: everything after a ``--`` line, or after the first closing line
   (``Met vriendelijke groeten``, ``Cordialement``, ``Kind regards``, ``Mit freundlichen
   Grüßen`` …), which itself stays — it is one of the best signs of the writer's language.
3. Machine output: stack-trace lines (``Traceback …``, ``File "…", line``, ``at x.y(…)``,
   ``java.lang.…Exception``) and lines made mostly of symbols and digits.
4. Passages in double quotes (``"…"``, ``“…”``, ``«…»``, ``„…“``): a pasted error message or a
   page title is someone else's words — unless taking them out leaves too little to judge.
5. Digits, then the first :data:`MAX_CHARS` characters. Fewer than :data:`MIN_LETTERS`
   letters left: None ("Dank u", "Merci" — which Flemish editors write too — "OK").
6. The detector's confidence for the best language must reach :data:`THRESHOLD`, else None.
7. English is where pasted material comes from (error messages, UI texts, logs): when the
   whole says ``en``, the lines that are not English on their own are judged together, and
   when they say nl, fr or de with confidence, that is the writer's language. A French mail
   around an English error message is French.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lingua import Language, LanguageDetector

LANGUAGES = ("nl", "fr", "en", "de")

MAX_SCAN = 20_000   # raw characters looked at (quotes and signatures are cut from these)
MAX_CHARS = 2000    # cleaned characters given to the detector
MIN_LETTERS = 20    # fewer letters than this: None
THRESHOLD = 0.5     # lingua's confidence for the best of the four (their values sum to 1)

_URL = re.compile(r"(?:\b[a-z][a-z0-9+.-]*://|\bwww\.)\S+", re.IGNORECASE)
_ADDRESS = re.compile(r"\S+@\S+")
# Paths and bare domains: /var/www/index.php, C:\Users\x, example.be/contact, belgium.be.
_PATH = re.compile(r"\S*[/\\]\S*|\b[\w-]+(?:\.[\w-]+)*\.(?:be|eu|com|org|net|nl|fr|de|lu|int)\b\S*",
                   re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
# A run of 200+ non-spaces is no word of any language (a base64 blob, a minified log line):
# dropped first, because _ADDRESS and _PATH backtrack over such a run quadratically (a 20 KB
# token took seconds of the worker; the listener takes lines of up to 64 KiB).
_LONG_TOKEN = re.compile(r"\S{200,}")
_NOT_LETTER = re.compile(r"[\W\d_]+")

_SEPARATOR = re.compile(r"^\s*(?:--|__)\s*$")
_CLOSING = re.compile(
    r"^\s*(?:"
    r"(?:met\s+)?(?:vriendelijke|hartelijke|beste|collegiale)\s+groet(?:en|jes)?|groet(?:en|jes)?|mvg"
    r"|cordialement|bien\s+(?:à|a)\s+vous|(?:bien\s+)?(?:sinc[eè]res\s+)?salutations"
    r"|meilleures\s+salutations|bonne\s+(?:journée|journee|soirée|fin\s+de\s+journée)"
    r"|(?:kind|best|warm|many\s+thanks\s+and\s+kind)\s+regards|regards|best\s+wishes|cheers"
    r"|(?:yours\s+)?sincerely|thanks\s+in\s+advance"
    r"|mit\s+(?:freundlichen|besten)\s+gr(?:ü|ue)(?:ß|ss)en|(?:viele|beste|liebe)\s+gr(?:ü|ue)(?:ß|ss)e"
    r"|mfg"
    r")\b[^\n]{0,40}$",
    re.IGNORECASE)
# A short thanks line, with at most a name after it, ends the text too ("Merci, Marie").
_THANKS = re.compile(
    r"^\s*(?:alvast\s+|nogmaals\s+)?(?:bedankt|dank\s+u(?:\s+wel)?|dank\s+je(?:\s+wel)?"
    r"|merci(?:\s+(?:d'avance|beaucoup|bien))?|thanks|thank\s+you|many\s+thanks"
    r"|danke(?:\s+sch(?:ö|oe)n)?|vielen\s+dank)[\s,.!]*(?:[^\W\d_]+[\s.]*)?$",
    re.IGNORECASE)
_TRACE = re.compile(
    r"^\s*(?:Traceback \(most recent call last\)|File \".*\", line|at [\w$.<>]+\(.*\)\s*$)"
    r"|\b[a-z_$][\w$]+(?:\.[\w$]{2,}){2,}"        # java.lang.NullPointerException (not d.w.z.)
    r"|\b\w+(?:Error|Exception)\b:")              # ValueError: …, NullPointerException: …
_QUOTED = re.compile(r'"[^"]{1,500}"|“[^”]{1,500}”|«[^»]{1,500}»|„[^“”]{1,500}[“”]')

_lock = threading.Lock()
_detector: tuple[LanguageDetector, dict[Language, str]] | None = None


def warm_up() -> None:
    """Builds the detector now (1–2 s), so that the first mail does not wait for it."""
    _get_detector()


def detect(text: str) -> str | None:
    """The language the mail's own text is written in, one of :data:`LANGUAGES`, or None when
    it is too short or the detector is not confident enough."""
    own = _own_text(text)
    if _letters(own) < MIN_LETTERS:
        return None
    detector, codes = _get_detector()
    best = detector.compute_language_confidence_values(own)[0]
    language = codes[best.language]
    if language == "en":
        # The lines that are not English by themselves, judged together.
        others = [line for line in own.splitlines() if _letters(line)
                  and codes[detector.compute_language_confidence_values(line)[0].language] != "en"]
        rest = "\n".join(others)
        if _letters(rest) >= MIN_LETTERS:
            best_rest = detector.compute_language_confidence_values(rest)[0]
            if codes[best_rest.language] != "en" and best_rest.value >= THRESHOLD:
                return codes[best_rest.language]
    return language if best.value >= THRESHOLD else None


def _own_text(text: str) -> str:
    """Steps 1–5 of the module's rule: the text the detector is given."""
    lines: list[str] = []
    originals = text[:MAX_SCAN].splitlines()
    cleaned = _without_links("\n".join(originals)).split("\n") if originals else []
    for original, line in zip(originals, cleaned, strict=True):
        if original.lstrip().startswith(">"):
            continue
        if _SEPARATOR.match(original):
            break
        if _TRACE.search(line) or _mostly_symbols(line):
            continue
        lines.append(line)
        closing = _CLOSING.match(line) or _THANKS.match(line)
        if closing and any(_letters(earlier) for earlier in lines[:-1]):
            break
    own = "\n".join(lines)
    unquoted = _QUOTED.sub(" ", own)
    if _letters(unquoted) >= MIN_LETTERS:
        own = unquoted
    return _DIGITS.sub(" ", own)[:MAX_CHARS]


def _without_links(text: str) -> str:
    """URLs, addresses, paths, host names and long tokens replaced by a space; over the
    whole text at once, as none of them crosses a line."""
    return _PATH.sub(" ", _ADDRESS.sub(" ", _URL.sub(" ", _LONG_TOKEN.sub(" ", text))))


def _letters(text: str) -> int:
    return len(_NOT_LETTER.sub("", text))


def _mostly_symbols(line: str) -> bool:
    """A line whose visible characters are less than 60 % letters (a phone number, a log
    line, a table rule), blank lines excepted."""
    visible = len("".join(line.split()))
    return visible > 0 and _letters(line) < 0.6 * visible


def _get_detector() -> tuple[LanguageDetector, dict[Language, str]]:
    """The detector and its languages' codes, built once (under a lock: the daemon's threads
    may ask at the same time, and a second build would cost another 140 MB for a while)."""
    global _detector
    if _detector is None:
        with _lock:
            if _detector is None:
                from lingua import Language, LanguageDetectorBuilder

                codes: dict[Language, str] = {
                    Language.DUTCH: "nl", Language.FRENCH: "fr",
                    Language.ENGLISH: "en", Language.GERMAN: "de"}
                detector = (LanguageDetectorBuilder.from_languages(*codes)
                            .with_preloaded_language_models().build())
                _detector = (detector, codes)
    return _detector
