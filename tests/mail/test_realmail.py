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
