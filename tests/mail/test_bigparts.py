"""Long base64 runs kept out of Python's parser (mailgate/mail/bigparts.py): the ParsedMail is
the one the parser alone gives, whatever the runs are in (attachments, base64 text bodies,
enclosed messages, broken base64), and the big attachment is decoded from the raw bytes."""

from __future__ import annotations

import base64
import os
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from mailgate.mail import bigparts
from mailgate.mail.parse import ParsedMail, parse

EDITOR = "eva@site1234.example.be"


def _mail(*parts: tuple[bytes, str, str, str]) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Eva <{EDITOR}>"
    msg["To"] = "servicedesk@desk.example"
    msg["Subject"] = "Bijlagen"
    msg["Message-ID"] = "<big@site1234.example.be>"
    msg.set_content("Zie bijlagen.\n")
    for data, maintype, subtype, name in parts:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP)


def _plain_parse(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> ParsedMail:
    """What the parser alone makes of it: no run is long enough to be kept out."""
    with monkeypatch.context() as m:
        m.setattr(bigparts, "MIN_RUN", 1 << 60)
        return parse(raw)


def test_a_big_attachment_is_decoded_from_the_raw_bytes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # padding at the end, pieces of 1 MiB
    raw = _mail((data, "application", "pdf", "plannen.pdf"))
    skeleton, stash = bigparts.stash(raw)
    assert stash is not None and len(skeleton) < 2000, "the run is out of the skeleton"
    mail = parse(raw)
    assert [a.payload for a in mail.attachments] == [data]
    assert mail == _plain_parse(raw, monkeypatch)


def test_runs_in_text_and_in_enclosed_messages_are_put_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    inner = _mail((os.urandom(200_000), "image", "png", "scherm.png"))
    text = base64.b64encode(os.urandom(60_000)).decode()  # a text part that holds base64
    raw = _mail((inner, "message", "rfc822", "doorgestuurd.eml"),
                (text.encode(), "text", "plain", "sleutel.txt"),
                (os.urandom(100_000), "application", "zip", "archief.zip"))
    assert len(bigparts.runs(raw)) >= 3
    mail = parse(raw)
    assert mail == _plain_parse(raw, monkeypatch)
    eml = next(a for a in mail.attachments if a.content_type == "message/rfc822")
    assert bigparts.stash(eml.payload)[1] is not None  # the enclosed attachment, whole
    assert b"MAILGATEBASE64RUN" not in eml.payload


@pytest.mark.parametrize("damage", [
    lambda b64: b64[:50_000] + b"=" + b64[50_001:],           # padding inside the data
    lambda b64: b64[:-4],                                      # cut short
    lambda b64: b64 + b"\r\nQQ",                               # a stray piece at the end
], ids=["padding-inside", "cut-short", "stray-piece"])
def test_broken_base64_is_read_as_the_parser_reads_it(
        damage: object, monkeypatch: pytest.MonkeyPatch) -> None:
    good = _mail((os.urandom(120_000), "application", "octet-stream", "x.bin"))
    head, _, rest = good.partition(b'filename="x.bin"\r\n\r\n')
    b64, sep, tail = rest.partition(b"\r\n\r\n--")
    raw = head + b'filename="x.bin"\r\n\r\n' + damage(b64) + sep + tail  # type: ignore[operator]
    assert parse(raw) == _plain_parse(raw, monkeypatch)


def test_a_run_never_takes_a_header_or_a_boundary() -> None:
    raw = _mail((os.urandom(100_000), "application", "pdf", "a.pdf"))
    for start, end in bigparts.runs(raw):
        lines = raw[start:end].splitlines()
        assert all(line and not line.startswith(b"-") and b":" not in line for line in lines)
        assert raw[end:end + 2] == b"\r\n" and raw[start - 2:start] == b"\r\n"
