"""The shared corpus (``../shared/corpus`` beside the repository): which files are mails, what
each source says a mail should be, and one cached parse of each (the suite reads them often).

Expectations come from SOURCES.md and the sources' own file names and tests (cited per rule).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from mailgate.mail.automatic import Automatic, detect
from mailgate.mail.parse import ParsedMail, UnparseableMail, parse

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"

REPORT: dict[str, str] = {}   # section title → markdown table, filled by the tests


def report(title: str, table: str) -> None:
    """Record one section of the corpus report (also printed by the test itself); conftest.py
    prints and writes the whole report at the end of the run."""
    REPORT[title] = table
    print(f"\n## {title}\n{table}")

# Bodies without headers: they go through quotes.split_reply, not parse().
BODY_SOURCES = ("email_reply_parser", "mail-parser-reply")
_NOT_MAIL_SUFFIXES = {".md", ".png", ".jpg", ".doc", ".dat", ".html"}
_NOT_MAIL_NAMES = {"LICENSE", ".gitattributes", "gitattributes", "Readme.txt",
                   "sample_output_multipart"}


def source_of(rel: str) -> str:
    return rel.split("/", 1)[0]


def is_mail(rel: str) -> bool:
    """A whole message (headers and body), as opposed to a body, an attachment or a note."""
    path = Path(rel)
    if source_of(rel) in BODY_SOURCES or path.suffix in _NOT_MAIL_SUFFIXES \
            or path.name in _NOT_MAIL_NAMES:
        return False
    if rel.startswith("talon/") and ("/signature/" in rel or rel.endswith("_reply_text")):
        return False  # talon's signature fixtures are bodies; *_reply_text are expectations
    # mail-mime-parser's files/ hold the original attachment files the messages encode.
    return not rel.startswith("mail-mime-parser/tests/_data/emails/files/")


@functools.cache
def all_files() -> tuple[str, ...]:
    if not CORPUS.is_dir():
        return ()
    return tuple(sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()))


def mail_files() -> tuple[str, ...]:
    return tuple(r for r in all_files() if is_mail(r))


def body_files() -> tuple[str, ...]:
    """Bodies without headers: the reply-parser fixtures and talon's signature samples."""
    return tuple(r for r in all_files() if source_of(r) in BODY_SOURCES
                 or r.startswith("talon/tests/fixtures/signature/"))


@dataclass(frozen=True)
class Outcome:
    rel: str
    mail: ParsedMail | None
    unparseable: str            # the reason, when parse() refused the mail
    automatic: Automatic | None


@functools.cache
def outcome(rel: str) -> Outcome:
    """parse() and detect() on one corpus file; anything but UnparseableMail propagates."""
    raw = (CORPUS / rel).read_bytes()
    try:
        mail = parse(raw)
    except UnparseableMail as exc:
        return Outcome(rel, None, str(exc), None)
    return Outcome(rel, mail, "", detect(mail))


# --- what each source says a mail is ------------------------------------------------------
# "bounce" / "auto-reply": automatic, and of that kind; "automatic": automatic, kind not
# stated by the source (complaints, challenge-response); "not": a person's mail;
# None: the source states nothing usable.

_MDSBP_AUTO_REPLY = {"aol-vacation", "autoreply", "polish-autoreply"}
# Challenge-response and whitelist requests: t/non-bounce.t says "not a bounce", yet a machine.
_MDSBP_AUTOMATIC = {"bluebottle", "boxbe-cr", "boxbe-cr2", "whitelist"}
# Spam that bounce parsers must not take for bounces (t/spam-*.t: "non-bounce spam message").
_MDSBP_NOT = {"spam-with-image", "spam-lots-of-bogus-addresses", "spam-bogus-email-in-report",
              "spam-with-badly-parsed-email"}


# Files where we read the mail differently from the blanket rule of its folder, and why.
OVERRIDES: dict[str, tuple[str, str]] = {
    "sisimai-set-of-emails/maildir/not/rb-issue-368-bug.eml": (
        "bounce", "in not/ for a sisimai parser bug; it is a bounce: Return-Path <>, "
        "Auto-Submitted, 'reject reason: Mailbox full'"),
    "sisimai-set-of-emails/maildir/bsd/lhost-sendmail-14.eml": (
        "not", "a person forwarding a bounce with Apple Mail ('Fwd: Returned mail')"),
    "sisimai-set-of-emails/maildir/err/make-test-36.eml": (
        "not", "a person forwarding a bounce ('Fwd: Returned mail', From the original sender)"),
    "mail-deliverystatus-bounceparser/t/corpus/warning-6.msg": (
        "auto-reply", "Lotus Notes out-of-office: 'AUTO: … is out of the office'"),
    "mail-deliverystatus-bounceparser/xt/corpus/virus-caused-multiple-weird-reports.msg": (
        "not", "a virus-carrying phishing mail, not a report"),
}


def expectation(rel: str) -> str | None:
    if rel in OVERRIDES:
        return OVERRIDES[rel][0]
    src, name = source_of(rel), Path(rel).name
    stem = Path(rel).stem
    if src == "sisimai-set-of-emails":
        if "/maildir/not/" in rel:
            return "not"
        if "/maildir/bsd/" in rel:
            if name.startswith("rfc3834-"):
                return "auto-reply"
            if name.startswith("arf-"):
                return "automatic"  # ARF feedback reports
            return "bounce"
        if "/maildir/err/" in rel:
            return "bounce"  # sisimai's "make test" bounces
        return None  # mailbox/ (mbox files), to-be-debugged-because/
    if src == "cws-mail-bounce-handler":
        if name.startswith("bounce_"):
            return "bounce"
        if name.startswith("fbl_"):
            return "automatic"
        return None  # unknown_*: "unclassifiable" by the source; measured, not asserted
    if src == "php-bounce-handler":
        if stem.isdigit() or stem in ("5.1.1", "testfile") or stem.startswith("exchange"):
            return "bounce"
        if stem.startswith(("arf", "fbl-")) or stem == "hotmailbounce":
            return "automatic"
        return None
    if src == "mail-deliverystatus-bounceparser":
        if stem in _MDSBP_AUTO_REPLY:
            return "auto-reply"
        if stem in _MDSBP_AUTOMATIC:
            return "automatic"
        if stem in _MDSBP_NOT:
            return "not"
        # non-autoreply.msg is an Exim bounce: t/non-autoreply.t asserts is_bounce.
        return "bounce"
    if src == "flanker":
        if "/bounce/" in rel:
            return "bounce"
        if "/complaints/" in rel:
            return "automatic"
        if name == "disposition-notification.eml":
            return "auto-reply"
        return None
    return None
