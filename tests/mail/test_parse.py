from __future__ import annotations

import pytest

from mailgate.mail.parse import UnparseableMail, parse


def test_encoded_words_and_charsets() -> None:
    raw = (b"From: =?iso-8859-1?q?Ren=E9_Dupr=E9?= <Rene@Example.BE>\r\n"
           b"To: desk@x.example, Other <o@x.example>\r\n"
           b"Subject: =?utf-8?b?UHJvYmzDqG1lIGF2ZWMgbGUgZm9ybXVsYWlyZQ==?=\r\n"
           b"Message-ID: <a1@example.be>\r\nIn-Reply-To: <p@x>\r\nReferences: <r1@x>\r\n <p@x>\r\n"
           b"Content-Type: text/plain; charset=iso-8859-1\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=E9 ferm=E9\r\n")
    m = parse(raw)
    assert m.from_addr == "rene@example.be" and m.from_name == "René Dupré"
    assert m.subject == "Problème avec le formulaire"
    assert m.to == ("desk@x.example", "o@x.example")
    assert m.text == "Café fermé"
    assert m.thread_ids == ("<p@x>", "<r1@x>")


def test_html_only_mail_becomes_text_with_links() -> None:
    raw = (b"From: a@b.example\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n"
           b"<html><style>p{}</style><p>Zie <a href='https://s.example/p'>pagina</a></p>"
           b"<table><tr><td>A</td><td>B</td></tr></table></html>")
    text = parse(raw).text
    assert "pagina <https://s.example/p>" in text and "A" in text and "p{}" not in text


def test_attachment_payload_is_decoded() -> None:
    raw = (b"From: a@b.example\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
           b"Content-Type: text/plain\r\n\r\nzie bijlage\r\n--XX\r\n"
           b"Content-Type: image/png; name=\"../../etc/shot.png\"\r\n"
           b"Content-Disposition: attachment; filename=\"../../etc/shot.png\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--XX--\r\n")
    m = parse(raw)
    [att] = m.attachments
    assert att.payload == b"\x89PNG\r\n\x1a\n" and att.content_type == "image/png"


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe", b"Subject: no from\r\n\r\nx",
                                 b"From: <>\r\n\r\nx"])
def test_unusable_mail_is_refused_with_reason(raw: bytes) -> None:
    with pytest.raises(UnparseableMail):
        parse(raw)
