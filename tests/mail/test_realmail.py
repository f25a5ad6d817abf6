"""Real customer mail that other parsers got wrong (issue 11, item 11), each failure rebuilt
here as a mail: headers a gateway unfolded, senders in odd places, forwards, charsets."""

from __future__ import annotations

import pytest

from mailgate.mail.parse import parse, repair_unfolded_headers

# --- headers a gateway unfolded -------------------------------------------------------------

UNFOLDED = (
    b"Received: from mx.partner.example (mx.partner.example [192.0.2.7])\r\n"
    b"by mx.desk.example (Postfix) with ESMTPS id 4F1B2\r\n"          # lost its leading space
    b"for <desk@desk.example>; Tue, 3 Oct 2023 10:12:01 +0200 (CEST)\r\n"
    b"X-Partner-Tracker: campaign=autumn;list=customers;\r\n"
    b"segment=benelux;id=7781236123761253761253\r\n"                  # a long value, unfolded
    b"From: Marie Dubois <marie.dubois@partner.example>\r\n"
    b"To: desk@desk.example\r\n"
    b"Subject: Re: facture 2023-114\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Bonjour,\r\nla facture est en ordre.\r\nNote: payment on Friday\r\n")


def test_unfolded_continuation_lines_are_read_as_continuations() -> None:
    m = parse(UNFOLDED)
    assert m.from_addr == "marie.dubois@partner.example" and m.from_name == "Marie Dubois"
    assert m.subject == "Re: facture 2023-114" and m.to == ("desk@desk.example",)
    assert m.text == "Bonjour,\nla facture est en ordre.\nNote: payment on Friday"
    assert "segment=benelux" in m.header("x-partner-tracker")
    assert "by mx.desk.example" in m.header("received")


def test_a_body_line_that_looks_like_a_header_is_left_in_the_body() -> None:
    """Only lines before the blank line are repaired, and only when a known field follows."""
    raw = (b"From: a@b.example\r\nSubject: s\r\n\r\nHello\r\nNote: this stays\r\n"
           b"From: not a header\r\n")
    assert repair_unfolded_headers(raw) == raw
    headless_body = b"From: a@b.example\r\nSubject: s\r\nHello there\r\nNote: body\r\n"
    assert repair_unfolded_headers(headless_body) == headless_body   # "Note" is no field


# --- where the sender is ----------------------------------------------------------------------

def _mail(head: str, body: str = "Hallo") -> bytes:
    return (head.replace("\n", "\r\n") + "\r\nSubject: vraag\r\n\r\n" + body).encode()


@pytest.mark.parametrize(("head", "address", "source"), [
    ("Sender: Jan <jan@site.example>\nReply-To: info@site.example", "jan@site.example",
     "sender"),
    ("Reply-To: Info <info@site.example>", "info@site.example", "reply-to"),
    ("From: [??????]\nFrom: Li Wei <li.wei@site.example>", "li.wei@site.example", "from"),
    ("From: Yahoo User <user@yahoo.com.>", "user@yahoo.com", "from"),
    ("From: user@yahoo.com.", "user@yahoo.com", "from"),
    ("Return-Path: <bounce-1@lists.site.example>", "bounce-1@lists.site.example",
     "return-path"),
])
def test_sender_fallbacks(head: str, address: str, source: str) -> None:
    m = parse(_mail(head))
    assert (m.from_addr, m.sender_header) == (address, source)


def test_envelope_sender_is_the_last_resort_before_return_path() -> None:
    m = parse(_mail("From: Jan Peeters\nReturn-Path: <rp@site.example>"),
              envelope_from="mailfrom@site.example")
    assert (m.from_addr, m.sender_header, m.from_name) == (
        "mailfrom@site.example", "envelope", "Jan Peeters")


@pytest.mark.parametrize("head", [
    '"Power Quadrant" <power quadrant system@example.com>',
    "<power quadrant system@example.com>",
    '"Power Quadrant" power quadrant system@example.com',
])
def test_an_address_with_a_space_is_never_salvaged_into_a_strangers(head: str) -> None:
    m = parse(_mail(f"From: {head}"))
    assert m.from_addr == "" and m.sender_header == ""
    assert "system@example.com" not in (m.from_addr, m.reply_to)
    # The mail's own fallbacks are used instead.
    m = parse(_mail(f"From: {head}\nReply-To: pq@site.example"))
    assert (m.from_addr, m.sender_header) == ("pq@site.example", "reply-to")


@pytest.mark.parametrize("head", [
    "From: Mail Delivery System <>",
    'From: "\\"bounces\\"" <"\\"bounces\\""@mx.example>',
    'From: "Mail Delivery" <bad\\ local@mx.example>',
    "From: Postmaster of mx.example",
])
def test_from_without_usable_address_parses(head: str) -> None:
    assert parse(_mail(head)).from_addr == ""


# --- forwards ---------------------------------------------------------------------------------

FORWARDED = ("Hallo,\n\nbitte um Hilfe, siehe unten.\n\n"
             "{sep}\n"
             "Von: Kunde <kunde@x.example>\nGesendet: Montag, 2. Oktober 2023\n"
             "An: info@site.example\nBetreff: Drucker defekt\n\n"
             "Der Drucker im 2. Stock druckt nicht mehr.\n")


@pytest.mark.parametrize(("subject", "sep"), [
    ("W.: Drucker defekt", "----- Original Nachricht ----"),
    ("WG: Drucker defekt", "-----Ursprüngliche Nachricht-----"),
    ("Fwd: Drucker defekt", "---------- Forwarded message ---------"),
    ("TR: Drucker defekt", "-------- Message transféré --------"),
    ("Doorst: Drucker defekt", "-------- Doorgestuurd bericht --------"),
    ("FW: Drucker defekt", "-----Original Message-----"),
    ("Drucker defekt", "---------- Forwarded message ---------"),   # no prefix: the separator
])
def test_a_forward_is_the_request_not_quoted_history(subject: str, sep: str) -> None:
    body = FORWARDED.format(sep=sep)
    m = parse(_mail(f"From: a@site.example\nSubject: {subject}", body).replace(
        b"Subject: vraag\r\n", b""))
    assert m.subject == subject
    assert "Der Drucker im 2. Stock druckt nicht mehr." in m.new_text and m.quoted_text == ""


def test_the_same_separator_in_a_reply_splits_the_quote() -> None:
    body = FORWARDED.format(sep="----- Original Nachricht ----")
    m = parse(_mail("From: a@site.example\nSubject: AW: Drucker defekt", body).replace(
        b"Subject: vraag\r\n", b""))
    assert m.new_text == "Hallo,\n\nbitte um Hilfe, siehe unten."
    assert "Drucker im 2. Stock" in m.quoted_text


# --- charsets ---------------------------------------------------------------------------------

def test_body_declared_gb2312_holding_gbk_characters() -> None:
    text = "朱镕基的报告，喆"   # 镕 and 喆 are GBK, not GB2312
    raw = (b"From: li@site.example\r\nSubject: s\r\n"
           b"Content-Type: text/plain; charset=gb2312\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + text.encode("gbk"))
    assert parse(raw).text == text
    raw_b64 = raw.replace(b"8bit", b"base64").split(b"\r\n\r\n")[0] + b"\r\n\r\n" + \
        __import__("base64").b64encode(text.encode("gbk"))
    assert parse(raw_b64).text == text


def _raw_named(charset: str, encoding: str, subject: str, name: str, filename: str) -> bytes:
    head = (f"From: {name} <x@site.example>\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
            f"Content-Type: text/plain; charset={charset}\r\n\r\n{subject}\r\n--XX\r\n"
            f'Content-Type: application/pdf; name="{filename}"\r\n'
            f'Content-Disposition: attachment; filename="{filename}"\r\n\r\n%PDF-\r\n--XX--\r\n')
    return head.encode(encoding)


@pytest.mark.parametrize(("charset", "encoding", "subject", "name", "filename"), [
    ("gb2312", "gbk", "关于报价单的问题", "张伟", "报价单2024年第三季度.pdf"),
    ("shift_jis", "cp932", "見積書について", "山田太郎", "見積書_2024.pdf"),
    ("koi8-r", "koi8-r", "Заявка на ремонт", "Иван Петров", "Счёт.pdf"),
])
def test_raw_8bit_headers_and_file_names_in_the_messages_charset(
        charset: str, encoding: str, subject: str, name: str, filename: str) -> None:
    m = parse(_raw_named(charset, encoding, subject, name, filename))
    assert (m.subject, m.from_name) == (subject, name)
    assert [a.filename for a in m.attachments] == [filename]


@pytest.mark.parametrize(("encoding", "subject", "name", "filename"), [
    ("gbk", "关于报价单的问题，请尽快回复", "张伟", "报价单2024年第三季度.pdf"),
    ("cp932", "見積書について確認お願いします", "山田太郎", "見積書_2024年度.pdf"),
])
def test_raw_8bit_headers_with_no_charset_anywhere_are_detected(
        encoding: str, subject: str, name: str, filename: str) -> None:
    """Nothing declared: the detector over all the message's 8-bit header bytes, not
    windows-1252."""
    raw = _raw_named("x-none", encoding, subject, name, filename).replace(
        b"; charset=x-none", b"")
    m = parse(raw)
    assert (m.subject, m.from_name) == (subject, name)
    assert [a.filename for a in m.attachments] == [filename]


@pytest.mark.parametrize(("header", "subject"), [
    (b"=?UTF-8?Q? Personal=C3=A4nderung?=", "Personaländerung"),
    (b"=?UTF-8?Q?Antrag Personal=C3=A4nderung?=", "Antrag Personaländerung"),
    (b"=?UTF-8?B?UGVyc29uYWw=?= =?UTF-8?Q?=C3=A4nderung ab Mai?=", "Personaländerung ab Mai"),
    (b"=?utf-8?Q?a?= und =?utf-8?Q?b?=", "a und b"),
])
def test_encoded_words_holding_spaces_are_decoded(header: bytes, subject: str) -> None:
    assert parse(b"From: a@site.example\r\nSubject: " + header + b"\r\n\r\nx").subject == subject


def test_non_utf8_bytes_in_every_header_parse_without_loss() -> None:
    """Latin-1 bytes in every field (no charset declared): read, every letter kept."""
    fields = {"From": "Renée Dupré <renee@site.example>", "To": "Bureau d'accueil <desk@d.example>",
              "Cc": "Gérard <gerard@site.example>", "Subject": "Problème à l'accueil",
              "Reply-To": "Renée <renee@site.example>", "Organization": "Société Générale",
              "X-Mailer": "Messagerie Orange – version 5", "Message-ID": "<é1@site.example>"}
    raw = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("cp1252") + \
        b"\r\nCorps du message\r\n"
    m = parse(raw)
    assert (m.from_addr, m.from_name, m.subject) == (
        "renee@site.example", "Renée Dupré", "Problème à l'accueil")
    assert m.to == ("desk@d.example",) and m.cc == ("gerard@site.example",)
    assert m.header("organization") == "Société Générale"
    assert m.header("x-mailer") == "Messagerie Orange – version 5"
    assert m.message_id == ""   # 8-bit Message-IDs are dropped: they go back out in headers


# --- body text in several parts in a row -------------------------------------------------------

def _mixed(*parts: tuple[str, str]) -> bytes:
    """A multipart/mixed mail whose parts are (Content-Type, body), in that order."""
    out = ["From: Aline Roux <aline@shop.example>", "To: desk@desk.example",
           "Subject: commande 5521", "MIME-Version: 1.0",
           "Content-Type: multipart/mixed; boundary=B1", ""]
    for ctype, body in parts:
        out += ["--B1", f"Content-Type: {ctype}", "", body]
    out += ["--B1--", ""]
    return "\r\n".join(out).encode()


ALTERNATIVE = ('multipart/alternative; boundary=B2',
               "--B2\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nLe colis est arrivé abîmé."
               "\r\n--B2\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
               "<p>Le colis est arrivé <b>abîmé</b>.</p>\r\n--B2--")


@pytest.mark.parametrize(("parts", "text"), [
    # A text mail with an HTML signature: both are the message.
    ([("text/plain", "Merci de rembourser."),
      ("text/html", "<html><body><h1>Aline Roux, Lyon</h1></body></html>")],
     "Merci de rembourser.\nAline Roux, Lyon"),
    # An HTML message with a text footer: the message was lost, only the footer was read.
    ([("text/html", "<html><body><p>Le colis est <b>abîmé</b>.</p></body></html>"),
      ("text/plain", "-- envoyé depuis mon mobile")],
     "Le colis est abîmé.\n-- envoyé depuis mon mobile"),
    # HTML, text, HTML in a row: all three, in order.
    ([("text/html", "<p>Bonjour,</p>"), ("text/plain", "la facture jointe est fausse."),
      ("text/html", "<p><i>Aline</i></p>")],
     "Bonjour,\nla facture jointe est fausse.\nAline"),
    # An alternative stays one choice (its plain branch), a footer after it is kept.
    ([ALTERNATIVE, ("text/html; charset=utf-8", "<p>Pied de page légal</p>")],
     "Le colis est arrivé abîmé.\nPied de page légal"),
    # Plain and HTML copies of the same words side by side (meant as alternatives): once.
    ([("text/plain", "Envoyé de mon iPhone"), ("text/html", "<div>Envoyé de mon iPhone</div>")],
     "Envoyé de mon iPhone"),
])
def test_every_body_part_in_a_row_is_the_message(parts: list[tuple[str, str]],
                                                  text: str) -> None:
    raw = _mixed(*[(c if "charset" in c else f"{c}; charset=utf-8", b) for c, b in parts])
    m = parse(raw)
    assert m.text == text
    assert m.attachments == ()   # nothing of it became a nameless attachment


def test_an_alternative_alone_is_still_read_from_its_plain_branch() -> None:
    m = parse(_mixed(ALTERNATIVE))
    assert m.text == "Le colis est arrivé abîmé."


def test_a_text_part_after_an_attachment_is_the_message() -> None:
    """A fax gateway: a PDF first, then the text with no Content-Type of its own."""
    raw = (b"From: Fax fax@gw.example\r\nSubject: Fax von +491234\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=F\r\n\r\n--F\r\n"
           b"Content-Disposition: attachment; filename=fax_1234.pdf\r\n"
           b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"JVBERi0=\r\n--F\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
           b"Sie haben ein neues Fax von +491234 f=C3=BCr 01234 empfangen.\r\n--F--\r\n")
    m = parse(raw)
    assert m.text == "Sie haben ein neues Fax von +491234 für 01234 empfangen."
    assert [a.filename for a in m.attachments] == ["fax_1234.pdf"]
    assert (m.from_addr, m.sender_header) == ("fax@gw.example", "from")


# --- x-uuencode parts -----------------------------------------------------------------------

@pytest.mark.parametrize("encoded", [
    ",4F%P<&]R=\"!T97-T\n`",                            # the lines alone (an old Mac mailer)
    "begin 644 rapport.txt\n,4F%P<&]R=\"!T97-T\n`\nend",   # with the begin/end frame
])
def test_an_x_uuencode_part_is_decoded(encoded: str) -> None:
    raw = ("From: \"Lena Berg\" <lena@site.example>\r\nSubject: verslag\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=U\r\n\r\n--U\r\n"
           "Content-Type: text/plain\r\n\r\nIn de bijlage.\r\n--U\r\n"
           'Content-Type: application/msword; name="rapport.txt"\r\n'
           'Content-Disposition: attachment; filename="rapport.txt"\r\n'
           "Content-Transfer-Encoding: x-uuencode\r\n\r\n"
           + encoded.replace("\n", "\r\n") + "\r\n--U--\r\n").encode()
    m = parse(raw)
    assert [(a.filename, a.payload) for a in m.attachments] == [("rapport.txt", b"Rapport test")]
    assert m.text == "In de bijlage."
