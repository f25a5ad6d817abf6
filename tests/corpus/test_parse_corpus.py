"""parse() on every mail of the corpus: no crash but UnparseableMail, sender and subject as
Python's own email package reads them, bodies and attachments where a source states them."""

from __future__ import annotations

import email
import hashlib
import re
from collections import Counter, defaultdict
from email import policy
from pathlib import Path

import pytest

from mailgate.mail.addresses import is_valid_address
from tests.corpus.corpus import CORPUS, mail_files, outcome, report, source_of

# Refusals we accept, per source, each looked at: files with no header field at all (RT's
# lorem-ipsum, sisimai's mbox size-0/1/2 fixtures, enmime's erroneous.raw, ruby-mail's
# example13, php-bounce-handler's unsubscribe.txt, spamscope's Outlook .msg). A mail with no
# usable sender is parsed (the desk ignores it with that reason), never refused.
MAX_UNPARSEABLE = {"enmime": 1, "php-bounce-handler": 1, "rt": 1, "ruby-mail": 1,
                   "sisimai-set-of-emails": 3, "spamscope-mail-parser": 1}


def test_every_mail_parses_or_is_refused_with_a_reason(corpus: Path) -> None:
    """outcome() lets any exception but UnparseableMail through: this test is the crash test."""
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    refused: list[str] = []
    for rel in mail_files():
        o = outcome(rel)
        s = stats[source_of(rel)]
        s["files"] += 1
        if o.mail is None:
            assert o.unparseable, rel
            s["unparseable"] += 1
            refused.append(f"{rel}: {o.unparseable}")
            continue
        s["parsed"] += 1
        m = o.mail
        assert m.new_text or not m.text, rel
        assert m.text.startswith(m.new_text) or m.text.endswith(m.new_text) \
            or m.new_text in m.text, rel
        for value in (m.subject, m.from_name, m.text, *m.headers.values()):
            assert "\x00" not in value and not re.search(r"[\ud800-\udfff]", value), rel
    rows = ["| source | mail files | parsed | refused (UnparseableMail) |", "|---|---|---|---|"]
    for src in sorted(stats):
        s = stats[src]
        rows.append(f"| {src} | {s['files']} | {s['parsed']} | {s['unparseable']} |")
    report("parse() over the corpus", "\n".join(rows))
    print("\n".join(["", "Refused:", *refused]))
    for src, s in stats.items():
        assert s["unparseable"] <= MAX_UNPARSEABLE.get(src, 0), (src, s)


def _python_reads(raw: bytes) -> tuple[str, str] | None:
    """(From address, Subject) as email.policy.default reads them; None if it cannot, or if it
    finds no From header at all."""
    try:
        msg = email.message_from_bytes(raw, policy=policy.default)
        if msg["From"] is None:
            return None
        addresses = msg["From"].addresses
        subject = str(msg["Subject"] or "")
    except Exception:
        return None
    addr = addresses[0].addr_spec.lower() if addresses else ""
    subject = re.sub(r"\s+", " ", re.sub(r"[\x00-\x1f\x7f]", "", subject)).strip()
    return (addr if is_valid_address(addr) else ""), subject


def test_sender_and_subject_agree_with_pythons_email_package(corpus: Path) -> None:
    """A robust agreement rate for ordinary mail. "Decoded where Python could not": Python shows
    U+FFFD or a raw encoded word where we decoded (charset fallback, split ISO-2022-JP words)."""
    stats: dict[str, Counter[str]] = defaultdict(Counter)
    differ: list[str] = []
    for rel in mail_files():
        o = outcome(rel)
        if o.mail is None or o.mail.sender_header not in ("from", ""):
            continue   # a sender from Sender/Reply-To/Return-Path: Python reads From only
        ref = _python_reads((CORPUS / rel).read_bytes())
        if ref is None:
            continue
        s = stats[source_of(rel)]
        s["n"] += 1
        ref_from, ref_subject = ref
        s["from"] += ref_from == o.mail.from_addr
        if ref_from != o.mail.from_addr:
            differ.append(f"{rel}: From {ref_from!r} vs ours {o.mail.from_addr!r}")
        if ref_subject == o.mail.subject:
            s["subject"] += 1
        elif ("\ufffd" in ref_subject or "=?" in ref_subject) and "\ufffd" not in o.mail.subject:
            s["subject_recovered"] += 1
        else:
            differ.append(f"{rel}: Subject {ref_subject!r} vs ours {o.mail.subject!r}")
    rows = ["| source | mails both read | same From address | same Subject | "
            "Subject decoded where Python could not |", "|---|---|---|---|---|"]
    for src in sorted(stats):
        s = stats[src]
        rows.append(f"| {src} | {s['n']} | {s['from']} | {s['subject']} | "
                    f"{s['subject_recovered']} |")
    report("Sender and subject vs Python's email package (policy.default)", "\n".join(rows))
    print("\n".join(["", "Differences:", *differ]))
    # The one difference left is ruby-mail's "Big Bug bb@bug.com": Python reads the whole
    # phrase as a quoted local part; we take the address in it.
    assert len(differ) <= 1, differ
    total = sum(s["n"] for s in stats.values())
    assert total >= 1350


# --- bodies and attachments the sources state -----------------------------------------

TALON = "talon/tests/fixtures/standard_replies"


@pytest.mark.parametrize("name", ["android", "aol", "apple_mail", "apple_mail_2", "comcast",
                                  "gmail", "hotmail", "iphone", "outlook", "sparrow",
                                  "thunderbird", "yahoo"])
def test_talon_standard_replies_new_text(corpus: Path, name: str) -> None:
    """talon's test_standard_replies: the reply is "Hello", or the ``*_reply_text`` file."""
    o = outcome(f"{TALON}/{name}.eml")
    assert o.mail is not None
    expected_file = corpus / TALON / f"{name}_reply_text"
    expected = expected_file.read_text() if expected_file.exists() else "Hello"
    squash = lambda t: "\n".join(line.rstrip() for line in t.strip().splitlines())  # noqa: E731
    assert squash(o.mail.new_text) == squash(expected)
    assert o.mail.quoted_text


FILES = "mail-mime-parser/tests/_data/emails/files"


def test_decoded_attachments_equal_the_original_files(corpus: Path) -> None:
    """mail-mime-parser's files/ hold the files its messages carry: each attachment named like
    one of them (base64, quoted-printable, uuencode, RFC 2231 names) decodes to its bytes.

    Two known exceptions: m0022's aaa.txt ends without the file's last CRLF (the message does
    not carry it: the line break before a boundary belongs to the boundary), and m2011's
    blueball.png is BinHex, which we keep as sent (application/mac-binhex40)."""
    originals = {p.name.lower(): p.read_bytes() for p in (corpus / FILES).iterdir()}
    digests = {hashlib.sha256(data).digest() for data in originals.values()}
    compared = 0
    for rel in mail_files():
        if not rel.startswith("mail-mime-parser/"):
            continue
        mail = outcome(rel).mail
        assert mail is not None, rel
        for att in mail.attachments:
            if hashlib.sha256(att.payload).digest() in digests:
                compared += 1   # the bytes of one of the original files
                continue
            want = originals.get(re.split(r"[\\/]", att.filename)[-1].lower())
            if want is None:
                continue        # not one of files/ (an image of the message itself, …)
            compared += 1
            if att.content_type == "application/mac-binhex40":
                continue
            assert rel.endswith("m0022.txt") and att.filename == "aaa.txt", (rel, att.filename)
            assert att.payload + b"\r\n" == want
    report("Attachments vs mail-mime-parser files/",
           f"{compared} attachments compared byte for byte with the original files")
    assert compared >= 85


def test_hand_checked_helpdesk_mails(corpus: Path) -> None:
    """What RT's own tests check on these files, read from the files themselves."""
    def mail(name: str):
        m = outcome(f"rt/t/data/emails/{name}").mail
        assert m is not None, name
        return m

    m = mail("rfc2231-attachment-filename-continuations")  # RFC 2231 ISO-2022-JP continuations
    assert [a.filename for a in m.attachments] == ["新しいテキスト ドキュメント.txt"]
    assert mail("subject-with-folding-ws").subject == "test"   # two encoded words, one word
    assert mail("new-ticket-from-gb18030").subject == "测试"
    assert "Grüßen" in mail("text-html-with-umlaut").text      # HTML-only, via inscriptis
    m = mail("notes-uuencoded")                                  # Lotus Notes pastes uuencode
    [att] = m.attachments
    assert att.filename == "Naz_Head.jpg" and att.payload.startswith(b"\xff\xd8")
    assert "begin 644" not in m.text and "[attachment: Naz_Head.jpg]" in m.text
    m = mail("nested-rfc-822")                                   # enclosed mail kept as .eml
    [att] = m.attachments
    assert att.content_type == "message/rfc822" and att.filename.endswith(".eml")
    inner = email.message_from_bytes(att.payload, policy=policy.default)
    assert "Niv" in str(inner["Subject"])
    assert mail("very-long-subject").subject.startswith("0123456789")
