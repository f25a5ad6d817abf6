"""Fuzzing the parse → detect path: whatever the bytes, the only exception is UnparseableMail
(the worker quarantines it); anything else would stop the worker on one hostile mail."""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.mail.automatic import detect
from mailgate.mail.htmltext import html_to_text
from mailgate.mail.parse import ParsedMail, UnparseableMail, parse
from mailgate.mail.quotes import split_reply
from tests.corpus.corpus import CORPUS, mail_files

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def survives(raw: bytes) -> ParsedMail | None:
    try:
        mail = parse(raw)
    except UnparseableMail as exc:
        assert str(exc)
        return None
    detect(mail)
    split_reply(mail.text)
    return mail


@functools.cache
def _small_corpus_mails() -> tuple[bytes, ...]:
    """Corpus mails under 64 KB (the big torture files would make each example slow)."""
    out = []
    for rel in mail_files():
        path = CORPUS / rel
        if path.stat().st_size < 64_000:
            out.append(path.read_bytes())
    return tuple(out) or (b"From: a@b.example\r\nSubject: s\r\n\r\nbody\r\n",)


HEADER = b"From: Eva <eva@site.example>\r\nTo: desk@desk.example\r\nSubject: s\r\n"


@FUZZ
@given(st.binary(max_size=4000))
def test_random_bytes(raw: bytes) -> None:
    survives(raw)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_body_after_valid_headers(body: bytes) -> None:
    survives(HEADER + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + body)


@FUZZ
@given(st.data())
def test_truncated_and_damaged_corpus_mails(data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(_small_corpus_mails()))
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(len(raw) - 1, 0)),
                                         st.integers(0, 255)), max_size=8))
    damaged = bytearray(raw[:cut] if data.draw(st.booleans()) else raw)
    for pos, value in flips:
        if pos < len(damaged):
            damaged[pos] = value
    survives(bytes(damaged))


@settings(max_examples=60, deadline=None, derandomize=True)   # each up to 0.5 s
@given(st.sampled_from(["Subject", "From", "To", "Content-Type", "Message-ID", "References",
                        "X-Failed-Recipients", "Auto-Submitted", "Content-Disposition"]),
       st.integers(1, 200_000), st.sampled_from([b"x", b"=?utf-8?B?w6k=?= ", b"a@b.c, ",
                                                 b"<m@x> ", b"\xff\xfe", b";name*0*=''%E9"]))
def test_huge_headers(name: str, size: int, unit: bytes) -> None:
    value = (unit * (size // len(unit) + 1))[:size]
    survives(HEADER + name.encode() + b": " + value + b"\r\n\r\nbody\r\n")


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(1, 400), st.sampled_from(["multipart/mixed", "message/rfc822"]))
def test_deep_nesting(depth: int, kind: str) -> None:
    if kind == "multipart/mixed":
        raw = HEADER
        for i in range(depth):
            raw += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
        raw += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
        for i in reversed(range(depth)):
            raw += f"--b{i}--\r\n".encode()
    else:
        raw = HEADER + b"Content-Type: message/rfc822\r\n\r\n" * depth + HEADER + b"\r\ndeep\r\n"
    survives(raw)


@FUZZ
@given(st.text(max_size=3000))
def test_html_and_quotes_never_raise(text: str) -> None:
    html_to_text(text)
    html_to_text(f"<html><body><table><tr><td>{text}</td></tr></table></body></html>")
    new, quoted = split_reply(text)
    assert new or not text.strip() or quoted


@FUZZ
@given(st.lists(st.sampled_from(["> quoted", "", "new words", "On Mon, Jan <j@x.be> wrote:",
                                 "Op ma 3 apr. 2023 om 10:00 schreef Jan <j@x.be>:",
                                 "Van: Jan", "Verzonden: maandag", "-----Original Message-----",
                                 "-- ", "De : Jean", "Envoyé : lundi", ">> deeper"]),
                max_size=40))
def test_split_reply_on_reply_shaped_text(lines: list[str]) -> None:
    text = "\n".join(lines)
    new, quoted = split_reply(text)
    if quoted:
        assert new.strip() and quoted.strip() in text and new.strip() in text
    else:
        assert new == text
