from __future__ import annotations

import binascii
import time

import pytest

from mailgate.mail.parse import MAX_DEPTH, ParsedMail, UnparseableMail, cut_deep_nesting, parse


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


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe", b"\r\n\r\n"])
def test_mail_without_header_fields_is_refused_with_reason(raw: bytes) -> None:
    with pytest.raises(UnparseableMail, match="no header fields"):
        parse(raw)


@pytest.mark.parametrize("raw", [b"Subject: no from\r\n\r\nx", b"From: <>\r\n\r\nx",
                                 b"From: Jan Peeters\r\nSubject: s\r\n\r\nx"])
def test_mail_without_usable_sender_is_parsed_without_one(raw: bytes) -> None:
    """Not refused: the desk ignores it with that reason (tickets/policy.py no_sender)."""
    m = parse(raw)
    assert (m.from_addr, m.sender_header) == ("", "")


# --- new text and quotes ------------------------------------------------------------------

def _mail(*headers: str, body: str | bytes, ctype: str = "text/plain; charset=utf-8") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    data = body.encode() if isinstance(body, str) else body
    return (f"From: Eva <eva@site.example>\r\nTo: desk@desk.example\r\n{head}"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data


def test_new_text_splits_off_the_quote_and_text_is_kept_whole() -> None:
    body = ("Dank u, het werkt.\r\n\r\nOp ma 3 apr. 2023 om 10:00 schreef Desk "
            "<desk@desk.example>:\r\n> Is het opgelost?\r\n")
    m = parse(_mail("Subject: Re: [SD-12] pagina", body=body))
    assert m.new_text == "Dank u, het werkt."
    assert m.quoted_text.startswith("Op ma 3 apr. 2023") and m.quoted_text.endswith("opgelost?")
    assert m.text == body.replace("\r\n", "\n").strip()


def test_forward_is_not_split() -> None:
    body = ("Zie hieronder.\r\n\r\nVan: Klant <k@x.example>\r\nVerzonden: maandag\r\n\r\n"
            "De site is stuk.")
    m = parse(_mail("Subject: FW: site stuk", body=body))
    assert m.new_text == m.text and m.quoted_text == ""


def test_hand_built_parsed_mail_reads_its_text_as_new_text() -> None:
    m = ParsedMail(message_id="", subject="s", from_addr="a@b.example", from_name="", to=(),
                   cc=(), reply_to="", in_reply_to=(), references=(), text="hello")
    assert m.new_text == "hello" and m.quoted_text == "" and m.delivery_status == ()


# --- charsets and encoded words -----------------------------------------------------------

@pytest.mark.parametrize(("header", "subject"), [
    (b"=?x-unknown?Q?caf=C3=A9?=", "café"),                    # unknown charset: UTF-8 first
    (b"=?uft-8?B?Y2Fmw6k=?=", "café"),                         # misspelt charset
    (b"=?iso-8859-1?Q?caf=E9_=80?=", "café €"),                # latin-1 read as windows-1252
    (b"=?utf-8?Q?caf=E9?=", "café"),                           # wrong charset: cp1252 fallback
    ("café ☕".encode(), "café ☕"),                             # raw UTF-8 (RFC 6532)
    ("café".encode("latin-1"), "café"),                        # raw latin-1
    (b"=?utf-8?B?w6k?= =?utf-8?B?w6k=?=", "éé"),              # padding missing, space dropped
    (b"=?utf-8?B?4oK=?= =?utf-8?B?rA==?=", "€"),               # a character split over two words
    (b"=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=", "テスト"),
    (b"=?utf-8?Q?bad=ZZ?= =?utf-8?B?!!!?=", "bad=ZZ =?utf-8?B?!!!?="),  # kept, never raises
])
def test_header_charsets(header: bytes, subject: str) -> None:
    raw = b"From: eva@site.example\r\nSubject: " + header + b"\r\n\r\nx"
    assert parse(raw).subject == subject


@pytest.mark.parametrize(("charset", "body", "text"), [
    ("x-mystery", "café".encode(), "café"),
    ("us-ascii", "café".encode("latin-1"), "café"),
    ("utf-8", b"caf\xe9 \x00ok", "café ok"),
    ("gb2312", "测试".encode("gb18030"), "测试"),
])
def test_body_charsets_never_crash(charset: str, body: bytes, text: str) -> None:
    m = parse(_mail("Subject: s", body=body, ctype=f"text/plain; charset={charset}"))
    assert m.text == text or m.text.replace("\ufffd", "é") == text


def test_from_with_raw_8bit_name_and_no_brackets() -> None:
    raw = "From: Renée Dupré <Renee@Site.example>\r\nSubject: s\r\n\r\nx".encode()
    m = parse(raw)
    assert (m.from_addr, m.from_name) == ("renee@site.example", "Renée Dupré")
    assert parse(b"From: Big Bug bb@bug.com\r\n\r\nx").from_addr == "bb@bug.com"


def test_blank_lines_before_the_headers_are_skipped() -> None:
    assert parse(b"\r\n   \r\nFrom: a@b.example\r\nSubject: s\r\n\r\nx").subject == "s"


# --- attachments --------------------------------------------------------------------------

def _multipart(*parts: bytes, subtype: str = "mixed", extra: str = "") -> bytes:
    body = b"".join(b"--XX\r\n" + p + b"\r\n" for p in parts) + b"--XX--\r\n"
    return _mail("Subject: s", "MIME-Version: 1.0", body=body,
                 ctype=f"multipart/{subtype}; boundary=XX{extra}")


PNG = b"\x89PNG\r\n\x1a\n"


def test_inline_image_keeps_its_content_id() -> None:
    raw = _multipart(b"Content-Type: text/html\r\n\r\n<p>logo <img src='cid:logo@x'></p>",
                     b"Content-Type: image/png\r\nContent-ID: <logo@x>\r\n"
                     b"Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=",
                     subtype="related")
    m = parse(raw)
    [att] = m.attachments
    assert (att.content_type, att.content_id, att.payload) == ("image/png", "<logo@x>", PNG)
    assert m.text == "logo"


@pytest.mark.parametrize("headers", [
    b"Content-Type: application/ms-tnef\r\n",
    b"Content-Type: application/vnd.ms-tnef\r\n",
    b"Content-Type: application/octet-stream; name=\"winmail.dat\"\r\n"
    b"Content-Disposition: attachment; filename=\"winmail.dat\"\r\n",
])
def test_tnef_is_kept_as_winmail_dat(headers: bytes) -> None:
    raw = _multipart(b"Content-Type: text/plain\r\n\r\nzie bijlage",
                     headers + b"Content-Transfer-Encoding: base64\r\n\r\neJ8+IgAB")
    m = parse(raw)
    [att] = m.attachments
    assert (att.filename, att.content_type) == ("winmail.dat", "application/ms-tnef")
    assert att.payload == b"x\x9f>\"\x00\x01"


def test_enclosed_message_is_kept_as_eml() -> None:
    inner = (b"From: Klant <klant@x.example>\r\nSubject: De site is stuk\r\n"
             b"Message-ID: <inner@x.example>\r\n\r\nHelp!\r\n")
    m = parse(_multipart(b"Content-Type: text/plain\r\n\r\nZie bijlage.",
                         b"Content-Type: message/rfc822\r\n\r\n" + inner))
    [att] = m.attachments
    assert (att.filename, att.content_type) == ("De site is stuk.eml", "message/rfc822")
    assert parse(att.payload).subject == "De site is stuk"
    assert m.returned_headers["message-id"] == "<inner@x.example>"


def test_nameless_binary_part_is_not_lost() -> None:
    m = parse(_multipart(b"Content-Type: text/plain\r\n\r\nscan",
                         b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64"
                         b"\r\n\r\nJVBERi0="))
    [att] = m.attachments
    assert (att.filename, att.content_type, att.payload) == ("", "application/pdf", b"%PDF-")


def test_rfc2231_filename() -> None:
    m = parse(_multipart(b"Content-Type: text/plain\r\n\r\nx",
                         b"Content-Type: application/octet-stream\r\nContent-Disposition: "
                         b"attachment; filename*=utf-8''offerte%20%E2%82%AC.pdf\r\n\r\ndata"))
    assert m.attachments[0].filename == "offerte €.pdf"


def test_uuencoded_file_in_the_text_becomes_an_attachment() -> None:
    line = binascii.b2a_uu(PNG).decode()
    body = f"zie bijlage\r\n\r\nbegin 644 logo.png\r\n{line}`\r\nend\r\n"
    m = parse(_mail("Subject: s", body=body))
    [att] = m.attachments
    assert (att.filename, att.content_type, att.payload) == ("logo.png", "image/png", PNG)
    assert m.text == "zie bijlage\n\n[attachment: logo.png]"


def test_missing_closing_boundary() -> None:
    raw = _mail("Subject: s", body=b"--XX\r\nContent-Type: text/plain\r\n\r\nhallo\r\n",
                ctype="multipart/mixed; boundary=XX")
    assert parse(raw).text == "hallo"
    raw = _mail("Subject: s", body=b"no boundary at all\r\n", ctype="multipart/mixed; boundary=ZZ")
    assert "no boundary at all" in parse(raw).text


# --- delivery reports ---------------------------------------------------------------------

def test_delivery_report_fields() -> None:
    raw = (b"From: MAILER-DAEMON\r\nTo: desk@desk.example\r\nSubject: Returned mail\r\n"
           b"Content-Type: multipart/report; report-type=Delivery-Status; boundary=B\r\n\r\n"
           b"--B\r\nContent-Type: text/plain\r\n\r\nsorry\r\n"
           b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
           b"Reporting-MTA: dns; mx.example\r\n\r\n"
           b"Final-Recipient: rfc822; jan@site.example\r\nAction: failed\r\n"
           b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  user unknown\r\n\r\n"
           b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
           b"From: desk@desk.example\r\nMessage-ID: <out1@desk.example>\r\n"
           b"Subject: =?utf-8?Q?[SD-1]_caf=C3=A9?=\r\n\r\nbody\r\n--B--\r\n")
    m = parse(raw)
    assert m.from_addr == "" and m.header("from") == "MAILER-DAEMON"
    assert m.report_type == "delivery-status"
    assert m.delivery_status == ({"final-recipient": "rfc822; jan@site.example",
                                  "action": "failed", "status": "5.1.1",
                                  "diagnostic-code": "smtp; 550 5.1.1 user unknown"},)
    assert m.returned_headers["message-id"] == "<out1@desk.example>"
    assert m.returned_headers["subject"] == "[SD-1] café"
    assert [a.content_type for a in m.attachments] == ["message/rfc822"]


@pytest.mark.parametrize("raw", [
    b"From: MAILER-DAEMON\r\nSubject: failure notice\r\n\r\nx",
    b"From: Mail Delivery Subsystem <MAILER-DAEMON>\r\n\r\nx",
    b"Return-Path: <>\r\nFrom: Kijitora\r\n\r\nx",
])
def test_machine_without_sender_address_is_parsed(raw: bytes) -> None:
    assert parse(raw).from_addr == ""


@pytest.mark.parametrize("levels", [120, 1000])
def test_deep_nesting_is_cut_at_the_limit_and_the_mail_kept(levels: int) -> None:
    raw = b"From: a@b.example\r\nSubject: deep\r\n"
    for i in range(levels):
        raw += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
    raw += b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    started = time.perf_counter()
    m = parse(raw)
    assert time.perf_counter() - started < 5   # no quadratic walk down 1,000 levels
    assert (m.from_addr, m.subject) == ("a@b.example", "deep")
    assert f"nested deeper than {MAX_DEPTH} levels were not read" in m.text
    assert m.attachments == ()


def test_deep_enclosed_messages_are_cut_too() -> None:
    raw = b"From: a@b.example\r\nSubject: deep\r\nContent-Type: text/plain\r\n\r\ntop\r\n"
    for _ in range(1000):
        raw = (b"From: a@b.example\r\nSubject: wrap\r\nContent-Type: message/rfc822\r\n\r\n"
               + raw)
    m = parse(raw)
    assert m.subject == "wrap" and m.from_addr == "a@b.example"


def test_shallow_mail_is_not_changed_by_the_cut() -> None:
    raw = _multipart(b"Content-Type: text/plain\r\n\r\nhallo",
                     b"Content-Type: message/rfc822\r\n\r\nFrom: x@y.example\r\n\r\nin")
    assert cut_deep_nesting(raw) == raw
