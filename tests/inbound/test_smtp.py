"""The SMTP way in, end to end: a real smtplib client talks to the real listener, the
acknowledgement reaches a real SMTP sink, on SQLite and on PostgreSQL."""

from __future__ import annotations

import email.policy
import smtplib
import sqlite3

import pytest
from sqlalchemy import func, select

from mailgate.app import App
from mailgate.db.models import Inbound, Message, Outbox, Ticket
from tests.support.desk import DESK, EDITOR, RunningDaemon
from tests.support.mails import body, make_mail, send, wire
from tests.support.proxy import TcpProxy
from tests.support.sink import SmtpSink
from tests.support.wait import until


def _tickets(app: App) -> list[Ticket]:
    with app.sessions() as s:
        return list(s.execute(select(Ticket).order_by(Ticket.number)).scalars())


def _inbound(app: App) -> list[Inbound]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())


def _messages(app: App, ref: str) -> list[Message]:
    with app.sessions() as s:
        t = s.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one()
        return list(t.messages)


def test_new_mail_makes_ticket_and_ack_with_threading_headers(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    req = make_mail(EDITOR, "Contactformulier geeft fout 500", sender_name="Eva Editor")
    send(daemon.port, req)
    [ack] = sink.wait_for(1)
    [ticket] = _tickets(daemon.app)
    assert ticket.ref == "SD-1" and ticket.state == "new" and ticket.site_id == "1234"
    assert ack["Subject"] == "[SD-1] Contactformulier geeft fout 500"
    assert ack["In-Reply-To"] == req["Message-ID"]
    assert req["Message-ID"] in ack["References"]
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack["From"] == f"Test Desk <{DESK}>"
    assert ack["To"] == EDITOR
    assert ack["Message-ID"].startswith("<SD-1.") and ack["Message-ID"].endswith("@desk.example>")
    assert "SD-1" in body(ack)
    assert sink.handler.received[0].rcpt_tos == [EDITOR]

    def sent() -> bool:
        with daemon.app.sessions() as s:
            row = s.execute(select(Outbox)).scalar_one()
            return row.status == "sent" and row.sent_at is not None
    until(sent, what="outbox row marked sent")


def test_follow_up_by_subject_tag_and_by_references(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    send(daemon.port, make_mail(EDITOR, "Menu verdwenen"))
    [ack] = sink.wait_for(1)
    # A reply whose client dropped the threading headers: the tag in the subject suffices.
    send(daemon.port, make_mail(EDITOR, "RE: AW: [SD-1] Menu verdwenen", "Nog steeds stuk."))
    # A reply with a rewritten subject: the signed Message-ID in References suffices.
    send(daemon.port, make_mail(EDITOR, "nog een vraag", "Zie hierboven.",
                                headers={"In-Reply-To": ack["Message-ID"],
                                         "References": ack["Message-ID"]}))
    until(lambda: all(r.status != "pending" for r in _inbound(daemon.app))
          and len(_inbound(daemon.app)) == 3, what="three processed mails")
    assert [t.ref for t in _tickets(daemon.app)] == ["SD-1"]
    kinds = [(m.direction, m.kind) for m in _messages(daemon.app, "SD-1")]
    assert kinds == [("in", "request"), ("out", "ack"), ("in", "follow-up"), ("in", "follow-up")]
    reasons = [r.reason for r in _inbound(daemon.app)]
    assert "subject tag" in reasons[1] and "references" in reasons[2]
    assert len(sink.messages) == 1, "follow-ups are not acknowledged again"


def test_forged_reference_is_not_trusted(daemon: RunningDaemon, sink: SmtpSink) -> None:
    send(daemon.port, make_mail(EDITOR, "Eerste vraag"))
    sink.wait_for(1)
    forged = "<SD-1.0123456789.0123456789abcdef@desk.example>"
    send(daemon.port, make_mail(EDITOR, "Tweede, los daarvan", headers={"References": forged}))
    sink.wait_for(2)
    assert [t.ref for t in _tickets(daemon.app)] == ["SD-1", "SD-2"]


def test_same_message_twice_is_stored_once(daemon: RunningDaemon, sink: SmtpSink) -> None:
    msg = make_mail(EDITOR, "Dubbel verstuurd")
    raw = wire(msg)
    send(daemon.port, raw, mail_from=EDITOR)
    # The same mail by another route: only the trace headers differ.
    send(daemon.port, b"Received: from relay2.example by mx.desk.example\r\n" + raw,
         mail_from=EDITOR)
    sink.wait_for(1)
    until(lambda: _inbound(daemon.app)[0].status == "ticket", what="processing")
    assert len(_inbound(daemon.app)) == 1
    assert len(_tickets(daemon.app)) == 1
    # Same Message-ID but different content is a different mail, and is kept.
    other = make_mail(EDITOR, "Dubbel verstuurd", "Andere inhoud, zelfde id.",
                      message_id=msg["Message-ID"])
    send(daemon.port, other)
    until(lambda: len(_inbound(daemon.app)) == 2, what="second stored mail")


def test_listener_is_no_open_relay(daemon: RunningDaemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port) as smtp:
        smtp.ehlo()
        smtp.mail(EDITOR)
        code, text = smtp.rcpt("victim@elsewhere.example")
        assert code == 550 and b"5.7.1" in text
        code, _ = smtp.rcpt("servicedesk@desk.example.attacker.test")
        assert code == 550
        code, _ = smtp.rcpt(DESK.upper())  # addresses compare case-insensitively
        assert code == 250
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send(daemon.port, make_mail(EDITOR, "x"), rcpt=["victim@elsewhere.example"])
    assert _inbound(daemon.app) == []


def test_size_is_advertised_and_enforced(daemon: RunningDaemon) -> None:
    limit = daemon.app.settings.smtp.max_message_size
    with smtplib.SMTP("127.0.0.1", daemon.port) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("size") and int(smtp.esmtp_features["size"]) == limit
        # Declared too large in MAIL FROM: refused before any data is sent.
        code, _ = smtp.mail(EDITOR, [f"SIZE={limit + 1}"])
        assert code == 552
    # A client that declares no size: the limit holds at the end of DATA.
    body = ("x" * 70 + "\n") * (limit // 70 + 10)
    big = make_mail(EDITOR, "Grote bijlage", body).as_bytes(policy=email.policy.SMTP)
    with smtplib.SMTP("127.0.0.1", daemon.port) as smtp:
        smtp.ehlo()
        assert smtp.mail(EDITOR)[0] == 250
        assert smtp.rcpt(DESK)[0] == 250
        code, _ = smtp.data(big)
        assert code == 552
    assert _inbound(daemon.app) == []


def test_malformed_mail_is_quarantined_and_worker_goes_on(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    send(daemon.port, b"\x00\x01garbage without any header\r\n\r\n\xff\xfe",
         mail_from=EDITOR)
    # No usable From: the envelope sender (a registered editor) stands in (issue 11).
    send(daemon.port, b"From: not an address\r\nSubject: broken\r\n\r\nbody\r\n",
         mail_from=EDITOR)
    send(daemon.port, make_mail(EDITOR, "Gewone melding"))
    sink.wait_for(2)
    rows = until(lambda: (r := _inbound(daemon.app)) and all(x.status != "pending" for x in r)
                 and r, what="processing")
    assert [r.status for r in rows] == ["quarantined", "ticket", "ticket"]
    assert rows[0].reason, "a quarantined mail says why"
    assert rows[0].raw.startswith(b"\x00\x01garbage"), "the raw bytes are kept as received"


def test_restart_keeps_everything(app: App, sink: SmtpSink) -> None:
    first = RunningDaemon(app).start()
    send(first.port, make_mail(EDITOR, "Voor de herstart"))
    sink.wait_for(1)
    first.stop()
    second = RunningDaemon(App(app.settings)).start()
    try:
        send(second.port, make_mail(EDITOR, "Re: [SD-1] Voor de herstart", "Nog iets."))
        send(second.port, make_mail(EDITOR, "Na de herstart"))
        sink.wait_for(2)
        until(lambda: all(r.status == "ticket" for r in _inbound(second.app))
              and len(_inbound(second.app)) == 3, what="processing")
        assert [t.ref for t in _tickets(second.app)] == ["SD-1", "SD-2"]
        assert len(_messages(second.app, "SD-1")) == 3
    finally:
        second.stop()


def test_storage_down_answers_451_then_recovers(app: App, sink: SmtpSink,
                                                make_settings) -> None:  # type: ignore[no-untyped-def]
    url = app.settings.database.url
    if url.startswith("sqlite"):
        # Another process holding the write lock past the busy timeout: storage unavailable.
        settings = make_settings(database={"busy_timeout_ms": 200})
        d = RunningDaemon(App(settings)).start()
        blocker = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        outage_over = blocker.close
        proxy = None
    else:
        host, port = "127.0.0.1", 5432
        proxy = TcpProxy(host, port)
        settings = make_settings(database={"url": url.replace(f"{host}:{port}",
                                                              f"127.0.0.1:{proxy.port}")})
        d = RunningDaemon(App(settings)).start()
        proxy.cut()
        outage_over = proxy.restore
    try:
        with pytest.raises(smtplib.SMTPDataError) as info:
            send(d.port, make_mail(EDITOR, "Tijdens de storing"))
        assert info.value.smtp_code == 451 and b"4.3.0" in info.value.smtp_error
        outage_over()
        # The client's retry after the outage is accepted and processed.
        send(d.port, make_mail(EDITOR, "Na de storing"))
        [ack] = sink.wait_for(1)
        assert ack["Subject"] == "[SD-1] Na de storing"
    finally:
        d.stop()
        if proxy:
            proxy.close()
    with app.sessions() as s:
        assert s.execute(select(func.count()).select_from(Inbound)).scalar_one() == 1
