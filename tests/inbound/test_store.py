"""Store first and the idempotency rule (mailgate/inbound/store.py, DESIGN §1.2): the digest
ignores the trace headers a route adds and the line endings; a mail is the same mail when its
Message-ID and its digest are the same; a duplicate is not stored again and answers with the
id of the first. Digest rules on their own, storage on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import event, select

from mailgate.app import App
from mailgate.db.models import Inbound
from mailgate.inbound.store import (
    Arrival,
    Stored,
    content_digest,
    extract_message_id,
    store_many,
    store_raw,
)
from tests.support.desk import SettingsFactory

CRLF_MAIL = (b"From: Eva Editor <eva@site1234.example.be>\r\n"
             b"To: servicedesk@desk.example\r\n"
             b"Subject: Contactformulier\r\n"
             b"  geeft fout 500\r\n"
             b"Message-ID: <abc.123@client.example>\r\n"
             b"\r\n"
             b"Het formulier geeft een fout.\r\n"
             b"\r\n"
             b"Eva\r\n")
LF_MAIL = CRLF_MAIL.replace(b"\r\n", b"\n")


def _with_header(raw: bytes, field: bytes, at: int = 0) -> bytes:
    """The mail with one header field inserted before header line number `at`."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join([*lines[:at], field, *lines[at:]])


def _without_message_id(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n")
                        if not line.lower().startswith(b"message-id:"))


# -- the digest -------------------------------------------------------------------------------

@pytest.mark.parametrize("field", [
    b"Received: from relay2.example (relay2.example [192.0.2.7]) by mx.desk.example",
    b"Received: from relay2.example\r\n\tby mx.desk.example with ESMTPS id 4Xyz\r\n"
    b"\tfor <servicedesk@desk.example>; Mon, 3 Jun 2024 10:00:00 +0200",
    b"RECEIVED: from upper.example",
    b"Return-Path: <bounces@client.example>",
    b"Delivered-To: servicedesk@desk.example",
    b"X-Original-To: helpdesk@desk.example",
    b"X-Received: by 2002:a05:6000:1 with SMTP id x",
], ids=["received", "received-folded", "received-upper-case", "return-path", "delivered-to",
        "x-original-to", "x-received"])
@pytest.mark.parametrize("at", [0, 2], ids=["on-top", "between-headers"])
def test_trace_headers_do_not_change_the_digest(field: bytes, at: int) -> None:
    assert content_digest(_with_header(CRLF_MAIL, field, at)) == content_digest(CRLF_MAIL)


def test_a_whole_route_of_trace_headers_does_not_change_the_digest() -> None:
    routed = CRLF_MAIL
    for field in [b"Received: from a.example by b.example", b"Received: from b.example\r\n"
                  b" by c.example", b"Return-Path: <x@client.example>",
                  b"Delivered-To: servicedesk@desk.example"]:
        routed = _with_header(routed, field)
    assert content_digest(routed) == content_digest(CRLF_MAIL)


@pytest.mark.parametrize("field", [
    b"X-Spam-Score: 1.2",
    b"Reply-To: other@client.example",
    b"Receivedx: not a trace header",
])
def test_other_headers_are_part_of_the_digest(field: bytes) -> None:
    assert content_digest(_with_header(CRLF_MAIL, field, 2)) != content_digest(CRLF_MAIL)


def test_a_folded_trace_header_hides_only_its_own_lines() -> None:
    """The continuation lines of Received go with it; the header after it still counts."""
    routed = _with_header(CRLF_MAIL, b"Received: from a.example\r\n\tby b.example", 1)
    changed = routed.replace(b"To: servicedesk@desk.example", b"To: other@desk.example")
    assert content_digest(changed) != content_digest(CRLF_MAIL)


def test_crlf_and_lf_digest_the_same() -> None:
    assert content_digest(LF_MAIL) == content_digest(CRLF_MAIL)
    # Also with a folded trace header in either form, and mixed line ends in one mail.
    routed = _with_header(CRLF_MAIL, b"Received: from a.example\r\n\tby b.example")
    assert content_digest(routed.replace(b"\r\n", b"\n")) == content_digest(CRLF_MAIL)
    mixed = CRLF_MAIL.replace(b"Eva\r\n", b"Eva\n")
    assert content_digest(mixed) == content_digest(CRLF_MAIL)


def test_trailing_blank_lines_of_the_body_do_not_count() -> None:
    assert content_digest(CRLF_MAIL + b"\r\n\r\n") == content_digest(CRLF_MAIL)


@pytest.mark.parametrize("change", [
    (b"Subject: Contactformulier", b"Subject: Contactformulier!"),
    (b"geeft een fout.", b"geeft een fout!"),
    (b"<abc.123@client.example>", b"<abc.124@client.example>"),
    (b"Eva\r\n", b"Eva \r\n"),
], ids=["subject", "body", "message-id", "space-in-body"])
def test_any_change_to_the_content_changes_the_digest(change: tuple[bytes, bytes]) -> None:
    old, new = change
    assert content_digest(CRLF_MAIL.replace(old, new)) != content_digest(CRLF_MAIL)


def test_a_mail_without_body_or_blank_line_has_a_digest() -> None:
    head_only = b"Subject: x\r\nMessage-ID: <x@y>\r\n"
    assert content_digest(head_only) == content_digest(head_only.replace(b"\r\n", b"\n"))
    assert content_digest(head_only) != content_digest(head_only + b"\r\nbody\r\n")


@pytest.mark.parametrize(("raw", "expected"), [
    (CRLF_MAIL, "<abc.123@client.example>"),
    (b"message-id:   <lower@case.example>  \r\n\r\n", "<lower@case.example>"),
    (b"Message-ID:\r\n <folded@client.example>\r\n\r\n", "<folded@client.example>"),
    (b"Message-ID: <a@b> (comment)\r\n\r\n", "<a@b>"),
    (b"Message-ID: no-brackets@client.example\r\n\r\n", "no-brackets@client.example"),
    (b"Subject: none\r\n\r\nMessage-ID: <in-body@x>\r\n", ""),
], ids=["plain", "lower-case-name", "folded", "comment", "no-brackets", "only-in-body"])
def test_message_id_is_read_from_the_header_only(raw: bytes, expected: str) -> None:
    assert extract_message_id(raw) == expected


# -- storing and deduplication, on SQLite and PostgreSQL ------------------------------------

def _rows(app: App) -> list[Inbound]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())


def test_the_raw_bytes_are_kept_exactly(app: App) -> None:
    stored = store_raw(app.sessions, app.clock, CRLF_MAIL, "smtp",
                       "eva@site1234.example.be", ["servicedesk@desk.example"])
    [row] = _rows(app)
    assert row.id == stored.inbound_id and not stored.duplicate
    assert row.raw == CRLF_MAIL and row.size == len(CRLF_MAIL)
    assert row.message_id == "<abc.123@client.example>"
    assert row.digest == content_digest(CRLF_MAIL)
    assert (row.channel, row.envelope_from, row.envelope_to, row.status) == (
        "smtp", "eva@site1234.example.be", "servicedesk@desk.example", "pending")


def test_the_same_mail_by_another_route_is_a_duplicate_with_the_same_id(app: App) -> None:
    first = store_raw(app.sessions, app.clock, CRLF_MAIL, "smtp")
    # Fetched by IMAP: LF line ends and the trace headers of the mailbox's route.
    relayed = _with_header(_with_header(CRLF_MAIL, b"Delivered-To: servicedesk@desk.example"),
                           b"Received: from mx.example\r\n\tby imap.desk.example")
    second = store_raw(app.sessions, app.clock, relayed.replace(b"\r\n", b"\n"), "imap")
    assert first == Stored(first.inbound_id, duplicate=False)
    assert second == Stored(first.inbound_id, duplicate=True)
    [row] = _rows(app)
    assert row.channel == "smtp" and row.raw == CRLF_MAIL, "the first arrival is kept"


def test_same_message_id_with_other_content_is_another_mail(app: App) -> None:
    first = store_raw(app.sessions, app.clock, CRLF_MAIL, "smtp")
    edited = CRLF_MAIL.replace(b"Eva\r\n", b"Eva (nog eens, met meer uitleg)\r\n")
    second = store_raw(app.sessions, app.clock, edited, "smtp")
    assert not second.duplicate and second.inbound_id != first.inbound_id
    assert [r.message_id for r in _rows(app)] == ["<abc.123@client.example>"] * 2


def test_same_content_with_another_message_id_is_another_mail(app: App) -> None:
    first = store_raw(app.sessions, app.clock, CRLF_MAIL, "smtp")
    resent = CRLF_MAIL.replace(b"<abc.123@client.example>", b"<abc.999@client.example>")
    second = store_raw(app.sessions, app.clock, resent, "smtp")
    assert not second.duplicate and second.inbound_id != first.inbound_id


def test_without_message_id_the_digest_alone_decides(app: App) -> None:
    bare = _without_message_id(CRLF_MAIL)
    assert extract_message_id(bare) == ""
    first = store_raw(app.sessions, app.clock, bare, "smtp")
    routed = _with_header(bare, b"Received: from relay.example by mx.desk.example")
    again = store_raw(app.sessions, app.clock, routed.replace(b"\r\n", b"\n"), "imap")
    other = store_raw(app.sessions, app.clock, bare.replace(b"Eva\r\n", b"Jan\r\n"), "smtp")
    assert again == Stored(first.inbound_id, duplicate=True)
    assert not other.duplicate and other.inbound_id != first.inbound_id
    # A mail with the Message-ID is not a duplicate of the same mail without one.
    with_id = store_raw(app.sessions, app.clock, CRLF_MAIL, "smtp")
    assert not with_id.duplicate
    assert len(_rows(app)) == 3


def test_duplicates_inside_one_batch_and_against_stored_mail(app: App) -> None:
    earlier = store_raw(app.sessions, app.clock, LF_MAIL, "imap")
    new = _without_message_id(CRLF_MAIL).replace(b"Eva\r\n", b"Jan\r\n")
    results = store_many(app.sessions, app.clock, [
        Arrival(new, "smtp"),
        Arrival(CRLF_MAIL, "smtp"),             # stored before, by another route
        Arrival(new.replace(b"\r\n", b"\n"), "smtp"),  # the first of this batch again
    ])
    assert results[0].duplicate is False
    assert results[1] == Stored(earlier.inbound_id, duplicate=True)
    assert results[2] == Stored(results[0].inbound_id, duplicate=True)
    assert [r.id for r in _rows(app)] == [earlier.inbound_id, results[0].inbound_id]


def test_a_batch_returns_one_result_per_mail_in_order(app: App) -> None:
    raws = [CRLF_MAIL.replace(b"abc.123", f"abc.{i}".encode()) for i in range(20)]
    results = store_many(app.sessions, app.clock, [Arrival(r, "smtp") for r in raws])
    rows = _rows(app)
    assert [r.id for r in rows] == [s.inbound_id for s in results]
    assert [r.raw for r in rows] == raws


def test_two_instances_storing_the_same_mail_at_once_agree_on_one_row(
        app: App, make_settings: SettingsFactory) -> None:
    """Four daemons on one database take the same mail in the same instant (the mailbox of
    one and the MX of another, say). Their inserts collide on the unique key: the losers must
    answer with the winner's id."""
    instances = [App(make_settings()) for _ in range(4)]
    collisions: list[str] = []
    for other in instances:
        event.listen(other.engine, "handle_error", lambda ctx: collisions.append(
            type(ctx.original_exception).__name__))
    try:
        for round_ in range(10):
            raw = CRLF_MAIL.replace(b"abc.123", f"race.{round_}".encode())
            start = threading.Barrier(len(instances))
            results: list[Stored | None] = [None] * len(instances)

            def store(i: int, raw: bytes = raw, start: threading.Barrier = start,
                      results: list[Stored | None] = results) -> None:
                start.wait()
                results[i] = store_raw(instances[i].sessions, instances[i].clock, raw, f"mx{i}")
            threads = [threading.Thread(target=store, args=(i,)) for i in range(len(instances))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert all(results), "an instance failed to store"
            assert len({r.inbound_id for r in results if r}) == 1
            assert sum(1 for r in results if r and not r.duplicate) == 1
    finally:
        for other in instances:
            other.close()
    assert len(_rows(app)) == 10
    # The collisions are settled inside the database (INSERT … ON CONFLICT DO NOTHING waits
    # for the other's insert, then finds its row): none surfaces as an error and a rollback.
    assert collisions == []
