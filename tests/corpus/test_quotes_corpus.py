"""quotes.split_reply on the corpus' reply bodies (email_reply_parser, mail-parser-reply, talon).

The expected splits below are read from the fixture files themselves (the sources keep their
expectations in test code, which was not copied); each names the file it is about."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from mailgate.mail.htmltext import html_to_text
from mailgate.mail.quotes import split_reply
from tests.corpus.corpus import body_files, report, source_of

ERP = "email_reply_parser/test/emails"
MPR = "mail-parser-reply/test/emails"


def _read(corpus: Path, rel: str) -> str:
    return (corpus / rel).read_text(encoding="utf-8")


def test_every_reply_body_splits_cleanly(corpus: Path) -> None:
    stats: dict[str, Counter[str]] = {}
    for rel in body_files():
        text = _read(corpus, rel)
        started = time.perf_counter()
        new, quoted = split_reply(text)
        assert time.perf_counter() - started < 3, rel   # the 767 KB long-quote body included
        s = stats.setdefault(source_of(rel), Counter())
        s["bodies"] += 1
        if not quoted:
            assert new == text, rel
            continue
        s["split"] += 1
        assert new.strip(), rel
        norm = text.replace("\r\n", "\n")
        # Nothing invented, nothing lost: the two parts are the text, cut once.
        assert norm.strip().startswith(new.strip()) or norm.strip().endswith(new.strip()), rel
        assert quoted.strip() in norm, rel
    rows = ["| source | bodies | quote split off | left whole |", "|---|---|---|---|"]
    for src in sorted(stats):
        s = stats[src]
        rows.append(f"| {src} | {s['bodies']} | {s['split']} | {s['bodies'] - s['split']} |")
    report("split_reply over the reply-body fixtures", "\n".join(rows))


@pytest.mark.parametrize(("rel", "new"), [
    # Top-posting under the attribution "On 01/03/11 7:07 PM, Russell Brown wrote:"; the
    # mailing-list footer below the quote goes with the quote.
    (f"{ERP}/email_1_3.txt", "Oh thanks.\n\nHaving the function would be great.\n\n-Abhishek Kona"),
    (f"{ERP}/email_1_4.txt", "Awesome! I haven't had another problem with it."),
    (f"{ERP}/email_1_7.txt", ":+1:"),   # attribution wrapped: "…Wanstrath\n<notifications…>wrote:"
    (f"{ERP}/email_2_1.txt", "Outlook with a reply"),   # "*From:* … *Sent:*" block
    (f"{ERP}/email_2_2.txt", "Outlook with a reply directly above line"),  # "____" rule
    (f"{ERP}/pathological.txt", "I think you're onto something. I will try to fix the problem "
                                "as soon as I\nget back to a computer."),
    (f"{MPR}/email_nl_1_2.txt", "Outlook met een antwoord"),   # Dutch "*Van:*/*Verzonden:*"
    (f"{MPR}/multi_header.txt", "No problem. I’ll just start a new order."),
    (f"{MPR}/email_headers_no_delimiter.txt", "And another reply!"),
    (f"{MPR}/email_danish_3.txt", "Hej,\n\nSvar."),
])
def test_named_reply_bodies(corpus: Path, rel: str, new: str) -> None:
    got, quoted = split_reply(_read(corpus, rel))
    assert got == new
    assert quoted


@pytest.mark.parametrize(("rel", "new_ends", "quoted_starts"), [
    # "Sent from a magnificent torch of pixels" is the writer's signature: kept. The
    # attribution is wrapped over three lines.
    (f"{ERP}/email_1_6.txt", "Sent from a magnificent torch of pixels",
     "On Dec 16, 2011, at 12:47 PM, Corey Donohoe"),
    # "On your remote host you can run:" is not an attribution.
    (f"{ERP}/greedy_on.txt", "fails, the tunnel is not working.", "On 9 Jan 2014, at 2:47"),
    (f"{ERP}/email_one_is_not_on.txt", "Locally (on development), when I run...",
     "On Oct 1, 2012, at 11:55 PM"),
    (f"{ERP}/email_bullets.txt", "- and another", "On Fri, Feb 24, 2012 at 10:19 AM"),
])
def test_named_reply_bodies_edges(corpus: Path, rel: str, new_ends: str,
                                  quoted_starts: str) -> None:
    new, quoted = split_reply(_read(corpus, rel))
    assert new.rstrip().endswith(new_ends)
    assert quoted.startswith(quoted_starts)


@pytest.mark.parametrize("rel", [
    f"{ERP}/email_1_2.txt",   # a bottom-poster answering between quoted paragraphs
    f"{ERP}/email_1_8.txt",   # "I will reply under this one" … "and under this." inline
    f"{ERP}/email_1_1.txt",   # no quote at all
    f"{ERP}/email_BlackBerry.txt",
    f"{ERP}/correct_sig.txt",
    f"{MPR}/email_3_1.txt",   # replies written below the quote as well as above it
    f"{MPR}/forward.txt",
])
def test_bodies_left_whole(corpus: Path, rel: str) -> None:
    """Inline answers, no quote, or text on both sides of the quote: nothing is split off."""
    text = _read(corpus, rel)
    assert split_reply(text) == (text, "")


SIGNATURES = "talon/tests/fixtures/signature/emails/stripped"


@pytest.mark.parametrize("name", ["camel_case", "jeff", "johndoeexamplecom", "long",
                                  "short_url", "sparse"])
def test_talon_signatures_stay_with_the_new_text(corpus: Path, name: str) -> None:
    """talon's stripped/<name>_body holds the body with its signature (<name>_signature):
    a signature is not a quote, so nothing is split off and the signature stays."""
    body = _read(corpus, f"{SIGNATURES}/{name}_body")
    signature = _read(corpus, f"{SIGNATURES}/{name}_signature").strip()
    new, quoted = split_reply(body)
    assert quoted == ""
    assert signature in new.replace("\r\n", "\n")   # camel_case has none: "" is in any text


HTML_REPLIES = "talon/tests/fixtures/html_replies"


@pytest.mark.parametrize("name", ["gmail", "hotmail", "ms_outlook_2003", "ms_outlook_2007",
                                  "ms_outlook_2010", "thunderbird"])
def test_talon_html_replies(corpus: Path, name: str) -> None:
    """talon's HTML replies, through html_to_text then split_reply: the reply is "Hi. I am
    fine. Thanks, Alex" (talon compares without whitespace). mail_ru, windows_mail and
    yandex_ru quote with Russian headers, which we do not read: they stay whole."""
    text = html_to_text((corpus / HTML_REPLIES / f"{name}.html").read_text(encoding="utf-8"))
    new, quoted = split_reply(text)
    assert "".join(new.split()) == "Hi.Iamfine.Thanks,Alex"
    assert "How are you" in quoted


def test_talon_reply_separated_by_hr(corpus: Path) -> None:
    html = (corpus / "talon/tests/fixtures/reply-separated-by-hr.html").read_text()
    new, quoted = split_reply(html_to_text(html))
    assert new == "Hi\nthere\nBob" and quoted.startswith("From: bob@example.com")
