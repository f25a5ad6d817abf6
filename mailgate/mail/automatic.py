"""Is this mail written by a machine? Bounces, auto-replies and bulk mail (RFC 3834, RFC 3464).

:func:`detect` runs an ordered table of small checks, Mailman-style: each check looks at one
thing and either says nothing or returns the kind with its evidence; the first one that speaks
decides. Order is policy: delivery failures first (a DSN also carries ``Auto-Submitted`` and a
null Return-Path), then auto-replies, then list/bulk mail, then the weak signs (null
Return-Path, no-reply senders) that only say "a machine".

Decisions the RFCs leave open, taken here:

- **Kinds.** ``bounce``: a delivery failure or delay (DSN, ``X-Failed-Recipients``, a delivery
  system's mail) and abuse complaints (ARF ``feedback-report``: the recipient refuses our mail,
  which the desk handles like a failure). ``auto-reply``: out-of-office and vacation replies,
  read receipts (MDN), challenge-response, ``Auto-Submitted: auto-generated`` notifications and
  mail from no-reply senders. ``bulk``: ``Precedence: bulk|junk|list``, ``List-Id``,
  ``List-Unsubscribe``.
- **Auto-Submitted: no** is a person's word that a person wrote the mail: the guesses are then
  skipped (subject patterns, failure words in the text, a null Return-Path, no-reply
  senders). What a person's mail program cannot produce still counts: a delivery report,
  ``X-Failed-Recipients``, a MAILER-DAEMON sender, list headers.
- **X-Auto-Response-Suppress** is not evidence alone: it asks *others* not to answer, and
  Outlook/Exchange set it on ordinary mail too (meeting responses, some clients' every mail).
  In the corpus it appears only on mails that other checks already catch. When another check
  decides, it is named in the evidence.
- **Subject patterns are anchored** at the start of the subject: "Automatic reply: …",
  "Afwezig: …", "Réponse automatique : …", "Undeliverable: …". A subject that starts with a
  reply prefix ("Re: Out of office") is a person answering one, and is not matched. Generic
  words ("Absence", "Afwezig", "Abwesend", "Vacation") count only alone or followed by ":"
  ("Absence de connexion au site" is a person's subject).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import getaddresses

from mailgate.mail.parse import ParsedMail


@dataclass(frozen=True)
class Automatic:
    """What kind of machine mail this is, and why we think so.

    ``evidence`` is what the deciding check saw, for people (``"Auto-Submitted:
    auto-replied"``, ``"Subject: Afwezig: …"``); ``check`` is that check's name in
    :data:`CHECKS`.
    ``dsn_status`` is the RFC 3463 enhanced status code ("5.1.1") of the first failed
    recipient of a DSN, or found in a non-standard bounce's text; ``failed_recipients`` are the
    lower-cased addresses that bounced; ``original_message_ids`` the Message-IDs ("<…>") of the
    mail that bounced or was answered: from the returned message's headers, from a copy quoted
    in the bounce text, then In-Reply-To and References.
    """

    kind: str              # "bounce" | "auto-reply" | "bulk"
    evidence: str
    dsn_status: str = ""
    failed_recipients: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()
    check: str = ""        # the name of the check in CHECKS that decided


BOUNCE, AUTO_REPLY, BULK = "bounce", "auto-reply", "bulk"

Finding = tuple[str, str] | None   # (kind, evidence)
Check = Callable[[ParsedMail], Finding]


# --- helpers ------------------------------------------------------------------------------

_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|antw|sv|vs|r|rif|ref|fwd?|fw|tr|wg|w\.|doorst)\s*"
                           r"(?:\[\d+\])?\s*:", re.IGNORECASE)
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
# "550 5.1.1", "550-5.1.1", "550 #5.1.1", "(#5.1.1)" in a bounce's text.
_SMTP_STATUS = re.compile(r"(?:\b[245]\d\d[ -]#?|\(#|\bstatus:? )([245]\.\d{1,3}\.\d{1,3})\b",
                          re.IGNORECASE)
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_MSGID = re.compile(r"<[^<>\s]+@[^<>\s]+>")


def _from_words(mail: ParsedMail) -> tuple[str, str]:
    """(local part of the From address, display name), lower-cased; from the raw header so a
    domain-less ``MAILER-DAEMON`` counts too."""
    value = mail.header("from")
    try:
        pairs = getaddresses([value])
    except Exception:
        pairs = []
    name, addr = pairs[0] if pairs else ("", "")
    addr = addr or mail.from_addr
    return addr.split("@", 1)[0].strip().lower(), (name or mail.from_name).strip().lower()


def _person_says_no(mail: ParsedMail) -> bool:
    return mail.header("auto-submitted").strip().lower().startswith("no")


def _null_return_path(mail: ParsedMail) -> bool:
    return mail.header("return-path").replace(" ", "") == "<>"


# --- checks: delivery failures ------------------------------------------------------------

def delivery_report(mail: ParsedMail) -> Finding:
    """RFC 3464 DSN: multipart/report; report-type=delivery-status, or its status part."""
    if mail.report_type == "delivery-status":
        return BOUNCE, "multipart/report; report-type=delivery-status"
    if mail.delivery_status:
        return BOUNCE, "message/delivery-status part"
    return None


def failed_recipients_header(mail: ParsedMail) -> Finding:
    """Exim and others name the failed addresses in X-Failed-Recipients."""
    value = mail.header("x-failed-recipients")
    return (BOUNCE, f"X-Failed-Recipients: {value}") if value else None


def exchange_ndr(mail: ParsedMail) -> Finding:
    """Exchange marks its non-delivery reports."""
    value = mail.header("x-ms-exchange-message-is-ndr")
    return (BOUNCE, f"X-MS-Exchange-Message-Is-Ndr: {value[:40]}") if value else None


def feedback_report(mail: ParsedMail) -> Finding:
    """RFC 5965 abuse report (feedback loop): the recipient refuses our mail."""
    if mail.report_type == "feedback-report":
        return BOUNCE, "multipart/report; report-type=feedback-report"
    if mail.header("feedback-type"):
        return BOUNCE, f"Feedback-Type: {mail.header('feedback-type')}"
    if _COMPLAINT_SUBJECT.match(mail.subject) and not _person_says_no(mail):
        return BOUNCE, f"Subject: {mail.subject[:80]}"
    return None


# Hotmail/Outlook.com's feedback loop sends no ARF, only this subject and the mail attached.
_COMPLAINT_SUBJECT = re.compile(r"^\s*(?:complaint about message from|email feedback report|"
                                r"\S+ abuse report\b)", re.IGNORECASE)


_DAEMON_LOCAL = re.compile(r"^(?:mailer-daemon|mailerdaemon|mail-daemon|maildaemon|"
                           r"mail\.?delivery\.?(?:sub)?system|post[._-]?master|"
                           r"mdaemon|mailer_daemon)$")
_DAEMON_NAME = re.compile(r"\b(?:mail delivery (?:subsystem|system|service)|"
                          r"mailer[- ]daemon|mail administrator|mail delivery)\b")


def delivery_system_sender(mail: ParsedMail) -> Finding:
    """Sent by the delivery system: MAILER-DAEMON, postmaster, "Mail Delivery Subsystem"."""
    local, name = _from_words(mail)
    if _DAEMON_LOCAL.match(local):
        if local.startswith("post") and not (_null_return_path(mail)
                                             or delivery_failure_subject(mail)
                                             or _BODY_FAILURE.search(mail.text[:5000])):
            return None  # a person may write as postmaster
        return BOUNCE, f"From: {mail.header('from')}"
    if _DAEMON_NAME.search(name):
        return BOUNCE, f"From: {mail.header('from')}"
    return None


_FAILURE_SUBJECTS = re.compile(
    r"^\s*(?:"
    r"undeliver(?:ed|able)\b|undelivered mail|returned mail\b|return(?:ed)? to sender|"
    r"mail delivery fail|delivery (?:status notification|failure|failed|notification)|"
    r"delivery has failed|message delivery (?:has )?failed|failure notice|"
    r"non[- ]?delivery|nondeliverable|non remis|non distribuable|impossible de remettre|"
    r"onbestelbaar|niet bezorgd|kan niet worden bezorgd|unzustellbar|nicht zustellbar|"
    r"non recapitabile|no se puede entregar|warning: could not send|"
    r"delayed mail|mail delivery delayed|delivery delayed|message delayed|"
    r"mail system error|mail could not be delivered|message not delivered|"
    r"could not send message|error sending message|returned mail|bounced mail|"
    r"delivery report|mail failure|failed mail|delivery notification|"
    r"notice of non|unable to deliver|message you sent|your message (?:could not|"
    r"was not|to .* was not|has been (?:rejected|blocked))|"
    r"permanent (?:delivery )?(?:error|failure)|mail delivery problem|"
    r"undelivered message|delivery problem|unknown user|user unknown|"
    r"message status - undeliverable|system undeliverable|"
    r"mail not delivered|nicht zugestellt|non consegnato)",
    re.IGNORECASE)


def delivery_failure_subject(mail: ParsedMail) -> Finding:
    """A delivery failure's subject, at its start, in English, Dutch, French, German, …"""
    if _person_says_no(mail):
        return None
    m = _FAILURE_SUBJECTS.match(mail.subject)
    return (BOUNCE, f"Subject: {mail.subject[:80]}") if m else None


def null_sender_failure_text(mail: ParsedMail) -> Finding:
    """A null sender (``Return-Path: <>``, ``From: <>``, ``From: Some Name <>``) whose text
    says delivery failed."""
    if _person_says_no(mail):
        return None
    if not (_null_return_path(mail) or re.search(r"<\s*>", mail.header("from"))):
        return None
    m = _BODY_FAILURE.search(mail.text[:5000])
    return (BOUNCE, f"null sender, text says {m.group(0)!r}") if m else None


# A failure phrase at the end of a subject, after the original subject: "RE: Offerte :
# non remis (delivery failed)", "Your order - Undeliverable".
_TRAILING_FAILURE = re.compile(
    r"[:\-(\[]\s*(?:non remis|delivery failed|undeliverable|undelivered|not delivered|"
    r"unzustellbar|nicht zugestellt|onbestelbaar|niet bezorgd|non distribuable|"
    r"delivery failure|returned mail)\b[^:]{0,40}$", re.IGNORECASE)
# "your message could not be delivered to jan@site.example": the failure and the address.
_FAILED_TO_ADDRESS = re.compile(
    r"(?:could not be delivered|couldn't be delivered|was not delivered|n'a pas pu [êe]tre "
    r"(?:remis|distribu[ée]|d[ée]livr[ée])|kon niet worden bezorgd|konnte nicht zugestellt)"
    r"[^@\n]{0,80}?[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+", re.IGNORECASE)


def failure_report_from_mailbox(mail: ParsedMail) -> Finding:
    """A plain-text failure report sent from an ordinary mailbox (a gateway or a provider
    that answers as the recipient): the failure named at the end of the subject, and the
    text naming the address the message could not be delivered to. Answering it would be
    backscatter."""
    if _person_says_no(mail):
        return None
    if not _TRAILING_FAILURE.search(mail.subject):
        return None
    m = _FAILED_TO_ADDRESS.search(mail.text[:5000])
    return (BOUNCE, f"Subject: {mail.subject[:80]}; text says {m.group(0)[:60]!r}") if m \
        else None


# --- checks: auto-replies -----------------------------------------------------------------

def read_receipt(mail: ParsedMail) -> Finding:
    """RFC 8098 message disposition notification (read receipt)."""
    if mail.report_type == "disposition-notification":
        return AUTO_REPLY, "multipart/report; report-type=disposition-notification"
    return None


def other_report(mail: ParsedMail) -> Finding:
    """Any other multipart/report is a machine's report too."""
    if mail.report_type or mail.content_type == "multipart/report":
        return AUTO_REPLY, f"multipart/report; report-type={mail.report_type or '?'}"
    return None


def auto_submitted(mail: ParsedMail) -> Finding:
    """RFC 3834 Auto-Submitted: anything but "no"."""
    value = mail.header("auto-submitted").strip()
    if value and not value.lower().startswith("no"):
        return AUTO_REPLY, f"Auto-Submitted: {value}"
    return None


_AUTOREPLY_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-mail-autoreply",
                      "x-autoreply-from", "x-autogenerated", "x-fc-machinegenerated",
                      "x-autorespond-id", "x-ms-exchange-inbox-rules-loop")


def autoreply_headers(mail: ParsedMail) -> Finding:
    """Vendor headers of vacation programs (X-Autoreply, X-Autorespond, X-Mail-Autoreply, …)."""
    for name in _AUTOREPLY_HEADERS:
        value = mail.header(name)
        if value and value.strip().lower() not in ("no", "false", "0"):
            shown = "-".join(p.capitalize() for p in name.split("-"))
            return AUTO_REPLY, f"{shown}: {value[:60]}"
    return None


_CHALLENGE_HEADERS = ("x-bluebottle-request", "x-boxbe-challenge", "x-spamarrest-challenge",
                      "x-challenge-response", "x-mailblocks-challenge")
_CHALLENGE_TEXT = re.compile(
    r"(?:added|add your (?:e-?mail )?address) to (?:the recipient's |my |his |her |their )?"
    r"(?:allowed|approved|white|safe|trusted)[ -]?(?:list|senders)", re.IGNORECASE)


def challenge_response(mail: ParsedMail) -> Finding:
    """Challenge-response filters (Bluebottle, Boxbe, Spam Arrest): "click the link to have
    your address added to the recipient's allowed list". A machine; answering it would
    confirm our address to a filter, and its link is not ours to follow."""
    for name in _CHALLENGE_HEADERS:
        if mail.header(name):
            return AUTO_REPLY, f"{name}: {mail.header(name)[:40]}"
    if _person_says_no(mail):
        return None
    m = _CHALLENGE_TEXT.search(mail.text[:5000])
    if m and re.search(r"https?://", mail.text[:5000]):
        return AUTO_REPLY, f"challenge-response: text says {m.group(0)[:60]!r}"
    return None


def precedence_auto_reply(mail: ParsedMail) -> Finding:
    value = mail.header("precedence").strip().lower()
    return (AUTO_REPLY, f"Precedence: {value}") if value == "auto_reply" else None


_OOO_SUBJECTS = re.compile(
    r"^\s*(?:"
    # specific phrases: anything may follow
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?re(?:ply|sponse)|autorespons|"
    r"automated (?:reply|response)|away from (?:the )?office|vacation (?:reply|response|notice)|"
    r"r[ée]ponse automatique|message d'absence|absent(?:e)? du bureau|absence du bureau|"
    r"automatisch antwoord|automatisch bericht|afwezigheidsbericht|afwezigheidsmelding|"
    r"niet op kantoor|buiten kantoor|"
    r"automatische antwort|abwesenheitsnotiz|abwesenheitsmeldung|abwesenheitsnachricht|"
    r"automatische r[üu]ckantwort|nicht im b[üu]ro|"
    r"risposta automatica|respuesta autom[áa]tica|automatyczna odpowied[źz]|"
    r"\[?automatyczna|auto:|autosvar|automatisk svar|"
    # generic words: alone, or followed by ":"
    r"(?:absence|absent|afwezig|afwezigheid|abwesend|abwesenheit|vacation|on vacation|"
    r"on leave|away|out of office)\s*(?::|$)"
    r")", re.IGNORECASE)
_OOO_INLINE = re.compile(r"\bis out of (?:the )?office\b|\(automatic response\)|"
                         r"\bist au(?:ss|ß)er haus\b|\bis afwezig\b", re.IGNORECASE)


def out_of_office_subject(mail: ParsedMail) -> Finding:
    """Out-of-office subjects at the start ("Automatic reply: …", "Afwezig: …"), or Lotus
    Notes' "<name> is out of the office"."""
    if _person_says_no(mail):
        return None
    if _REPLY_PREFIX.match(mail.subject) and not _OOO_INLINE.search(mail.subject):
        return None  # a person answering an out-of-office ("Re: Afwezig")
    if _OOO_SUBJECTS.match(mail.subject) or _OOO_INLINE.search(mail.subject):
        return AUTO_REPLY, f"Subject: {mail.subject[:80]}"
    return None


# --- checks: lists and bulk ---------------------------------------------------------------

def precedence_bulk(mail: ParsedMail) -> Finding:
    value = mail.header("precedence").strip().lower()
    return (BULK, f"Precedence: {value}") if value in ("bulk", "junk", "list") else None


_LIST_HEADERS = (("list-id", "List-Id"), ("list-unsubscribe", "List-Unsubscribe"),
                 ("list-post", "List-Post"), ("list-help", "List-Help"),
                 ("list-subscribe", "List-Subscribe"), ("list-owner", "List-Owner"),
                 ("list-archive", "List-Archive"), ("mailing-list", "Mailing-List"),
                 ("x-mlserver", "X-MLServer"))


def list_headers(mail: ParsedMail) -> Finding:
    """RFC 2919/2369 list headers (List-Id, List-Unsubscribe, List-Post, …)."""
    for name, shown in _LIST_HEADERS:
        value = mail.header(name)
        if value:
            return BULK, f"{shown}: {value[:60]}"
    return None


# --- checks: weak signs of a machine ------------------------------------------------------

_BODY_FAILURE = re.compile(
    r"could not be delivered|couldn't be delivered|was not delivered|undeliverable|"
    r"delivery (?:has )?failed|delivery to the following recipient|permanent(?:ly)? (?:error|"
    r"fatal)|user unknown|unknown user|no such (?:user|address|recipient|mailbox)|"
    r"not a valid (?:user|recipient|address)|invalid (?:user|recipient) address|"
    r"mailbox (?:unavailable|full|is full)|"
    r"message (?:was )?rejected|returned to sender|non remis|unzustellbar|onbestelbaar|"
    r"delivery status notification|this is the mail system at|could not deliver|"
    r"recipient address rejected|does not exist", re.IGNORECASE)


def null_return_path(mail: ParsedMail) -> Finding:
    """``Return-Path: <>`` (RFC 3834 §3.3: automatic responses go to the null sender)."""
    if _person_says_no(mail) or not _null_return_path(mail):
        return None
    return AUTO_REPLY, "Return-Path: <>"


_NOREPLY = re.compile(r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|"
                      r"noreply[-_.].*|.*[-_.]noreply|bounces?(?:[-+].*)?|"
                      r"auto[-_.]?(?:reply|responder|confirm|notify))$")


def noreply_sender(mail: ParsedMail) -> Finding:
    """From noreply@, no-reply@, do-not-reply@, bounce@…: nobody reads answers to it."""
    if _person_says_no(mail):
        return None
    local, _name = _from_words(mail)
    if _NOREPLY.match(local):
        return AUTO_REPLY, f"From: {mail.header('from')[:80]}"
    return None


def no_sender(mail: ParsedMail) -> Finding:
    """No usable sender address at all, and a text that says delivery failed: a delivery
    system's report whose From is broken (``"Mail Delivery" <\\"x\\"@y>``, a name alone).
    Other mail without a sender is no machine's for sure: the policy ignores it as such."""
    if mail.from_addr or _person_says_no(mail):
        return None
    m = _BODY_FAILURE.search(mail.text[:5000]) or _FAILURE_SUBJECTS.match(mail.subject)
    return (BOUNCE, f"From: {mail.header('from') or '(none)'}, "
                    f"{'text' if _BODY_FAILURE.search(mail.text[:5000]) else 'subject'} "
                    f"says {m.group(0)[:60]!r}") if m else None


# Order is policy; first hit wins (see the module docstring).
CHECKS: tuple[tuple[str, Check], ...] = (
    ("delivery-report", delivery_report),
    ("failed-recipients", failed_recipients_header),
    ("exchange-ndr", exchange_ndr),
    ("feedback-report", feedback_report),
    ("read-receipt", read_receipt),
    ("delivery-system-sender", delivery_system_sender),
    ("delivery-failure-subject", delivery_failure_subject),
    ("null-sender-failure-text", null_sender_failure_text),
    ("failure-report-from-mailbox", failure_report_from_mailbox),
    ("other-report", other_report),
    ("auto-submitted", auto_submitted),
    ("autoreply-headers", autoreply_headers),
    ("precedence-auto-reply", precedence_auto_reply),
    ("challenge-response", challenge_response),
    ("out-of-office-subject", out_of_office_subject),
    # A list never sends with a null sender (it wants its bounces); a vacation program does,
    # often with Precedence: bulk/junk.
    ("null-return-path", null_return_path),
    ("precedence-bulk", precedence_bulk),
    ("list-headers", list_headers),
    ("noreply-sender", noreply_sender),
    ("no-sender", no_sender),
)


# --- what a bounce tells about the failed mail --------------------------------------------

def _recipient(value: str) -> str:
    """"rfc822; a@b" → "a@b" (lower-cased), "" if it holds no address."""
    m = _ADDRESS.search(value.split(";", 1)[-1])
    return m.group(0).lower().rstrip(".") if m else ""


def _by_action(groups: tuple[dict[str, str], ...], prefix: str) -> list[dict[str, str]]:
    return [g for g in groups if g.get("action", "").lower().startswith(prefix)]


def _status(mail: ParsedMail) -> str:
    groups = mail.delivery_status
    for g in (*_by_action(groups, "failed"), *_by_action(groups, "delayed"), *groups):
        m = _STATUS.search(g.get("status", ""))
        if m:
            return m.group(1)
    m = _SMTP_STATUS.search(mail.text[:20000]) or re.search(
        r"^\s*Status:\s*([245]\.\d{1,3}\.\d{1,3})", mail.text[:20000], re.MULTILINE)
    return m.group(1) if m else ""


def _failed_recipients(mail: ParsedMail) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for a in _ADDRESS.findall(mail.header("x-failed-recipients")):
        seen.setdefault(a.lower(), None)
    groups = mail.delivery_status
    # The failed recipients; else the delayed ones (a delay report); never the delivered.
    chosen = _by_action(groups, "failed") or _by_action(groups, "delayed") \
        or [g for g in groups if not g.get("action")]
    for g in chosen:
        addr = _recipient(g.get("final-recipient", "")) or _recipient(
            g.get("original-recipient", ""))
        if addr:
            seen.setdefault(addr, None)
    if not seen:  # qmail/Postfix text bounces: "<a@b>:" at the start of a line
        for m in re.finditer(r"^\s*<([^<>\s]+@[^<>\s]+)>:?\s*$|^<([^<>\s]+@[^<>\s]+)>:",
                             mail.text[:20000], re.MULTILINE):
            seen.setdefault((m.group(1) or m.group(2)).lower(), None)
    return tuple(seen)


def _original_ids(mail: ParsedMail, kind: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for mid in _MSGID.findall(mail.returned_headers.get("message-id", "")):
        seen.setdefault(mid, None)
    if kind == BOUNCE and not seen:  # a copy of the failed mail pasted into the text
        for m in re.finditer(r"^\s*>?\s*Message-ID:\s*(<[^<>\s]+@[^<>\s]+>)",
                             mail.text[:50000], re.MULTILINE | re.IGNORECASE):
            seen.setdefault(m.group(1), None)
    for mid in (*mail.in_reply_to, *reversed(mail.references)):
        seen.setdefault(mid, None)
    return tuple(seen)


def detect(mail: ParsedMail) -> Automatic | None:
    """The first check that speaks decides; ``None``: no sign of a machine."""
    for name, check in CHECKS:
        found = check(mail)
        if found is None:
            continue
        kind, evidence = found
        suppress = mail.header("x-auto-response-suppress")
        if suppress:
            evidence = f"{evidence} (also X-Auto-Response-Suppress: {suppress[:40]})"
        if kind == BOUNCE:
            return Automatic(kind, evidence, dsn_status=_status(mail),
                             failed_recipients=_failed_recipients(mail),
                             original_message_ids=_original_ids(mail, kind), check=name)
        return Automatic(kind, evidence, original_message_ids=_original_ids(mail, kind),
                         check=name)
    return None
