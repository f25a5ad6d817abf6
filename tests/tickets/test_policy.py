"""The desk's rules end to end, through the real listener and sink, on both databases:
machines are never answered, strangers learn nothing, agents work by mail."""

from __future__ import annotations

import threading

from sqlalchemy import select

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.db.models import AutoAnswer, BouncingAddress, Inbound, Outbox, Ticket
from mailgate.tickets import registry
from tests.conftest import DESK, EDITOR, RunningDaemon
from tests.support.mails import make_mail, send
from tests.support.sink import SmtpSink
from tests.support.wait import until

AGENT = "alex@desk.example"
OTHER_EDITOR = "olivier@site5678.example.be"
STRANGER = "someone@elsewhere.example"


def _register_more(app: App) -> None:
    with transaction(app.sessions) as s:
        now = app.clock.now()
        registry.add_agent(s, AGENT, now, "Alex Agent")
        registry.add_site(s, "5678", "Other site", now)
        registry.add_editor(s, "5678", OTHER_EDITOR, now, name="Olivier")


def _settled(app: App, count: int) -> list[Inbound]:
    def check() -> list[Inbound] | None:
        with app.sessions() as s:
            rows = list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())
        return rows if len(rows) >= count and all(r.status != "pending" for r in rows) else None
    return until(check, what=f"{count} processed inbound mails")


def _ticket(app: App, ref: str) -> Ticket:
    with app.sessions() as s:
        t = s.execute(select(Ticket).where(Ticket.ref == ref)).scalar_one()
        _ = list(t.messages)
        return t


def _first_ticket(daemon: RunningDaemon, sink: SmtpSink, subject: str = "Menu weg") -> str:
    send(daemon.port, make_mail(EDITOR, subject))
    [ack] = sink.wait_for(1)
    return ack["Message-ID"]


def test_out_of_office_is_recorded_but_changes_nothing(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    ack_id = _first_ticket(daemon, sink)
    with transaction(daemon.app.sessions) as s:
        t = s.execute(select(Ticket).where(Ticket.ref == "SD-1")).scalar_one()
        t.state = "waiting"  # we asked the editor for information
    before = _ticket(daemon.app, "SD-1")
    ooo = make_mail(EDITOR, "Automatisch antwoord: [SD-1] Menu weg",
                    "Ik ben afwezig tot maandag.",
                    headers={"Auto-Submitted": "auto-replied", "In-Reply-To": ack_id,
                             "References": ack_id})
    send(daemon.port, ooo)
    rows = _settled(daemon.app, 2)
    after = _ticket(daemon.app, "SD-1")
    assert rows[1].kind == "auto-reply" and rows[1].ticket_id == after.id
    assert [m.kind for m in after.messages][-1] == "auto-reply"
    assert after.state == "waiting", "an out-of-office must not reopen a waiting ticket"
    assert after.updated_at == before.updated_at and after.close_at == before.close_at
    assert len(sink.messages) == 1, "never answered"


def test_bounce_of_our_ack_marks_outbox_failed_and_flags_address(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    ack_id = _first_ticket(daemon, sink)
    dsn = (
        "From: MAILER-DAEMON@mx.site1234.example.be\r\n"
        f"To: {DESK}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn1@mx.site1234.example.be>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nMailbox unknown.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.site1234.example.be\r\n\r\n"
        f"Final-Recipient: rfc822; {EDITOR}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Test Desk <{DESK}>\r\nTo: {EDITOR}\r\nSubject: [SD-1] Menu weg\r\n"
        f"Message-ID: {ack_id}\r\n\r\n--B--\r\n").encode()
    send(daemon.port, dsn, mail_from="")
    rows = _settled(daemon.app, 2)
    assert rows[1].kind == "bounce"
    with daemon.app.sessions() as s:
        ack = s.execute(select(Outbox).where(Outbox.message_id == ack_id)).scalar_one()
        assert ack.status == "failed" and ack.dsn_status == "5.1.1"
        flag = s.get(BouncingAddress, EDITOR)
        assert flag is not None and flag.last_status == "5.1.1"
    assert _ticket(daemon.app, "SD-1").state == "new"
    assert len(sink.messages) == 1 and len(_settled(daemon.app, 2)) == 2


def test_list_mail_makes_no_ticket(daemon: RunningDaemon, sink: SmtpSink) -> None:
    send(daemon.port, make_mail(EDITOR, "Nieuwsbrief november",
                                headers={"List-Id": "<news.example.be>",
                                         "Precedence": "bulk"}))
    [row] = _settled(daemon.app, 1)
    assert (row.status, row.kind) == ("ignored", "bulk")
    assert sink.messages == []


def test_stranger_gets_a_polite_rate_limited_refusal(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    limit = daemon.app.settings.access.auto_replies_per_hour
    for i in range(limit + 2):
        send(daemon.port, make_mail(STRANGER, f"Vraag {i}"))
    rows = _settled(daemon.app, limit + 2)
    assert {r.status for r in rows} == {"refused"}
    refusals = sink.wait_for(limit)
    assert all("niet als melding geregistreerd" in m.get_content() for m in refusals)
    assert refusals[0]["Auto-Submitted"] == "auto-replied"
    with daemon.app.sessions() as s:
        assert s.execute(select(Ticket)).first() is None
        suppressed = s.execute(select(AutoAnswer).where(AutoAnswer.suppressed)).scalars()
        assert len(list(suppressed)) == 2
    assert "suppressed" in rows[-1].reason


def test_stranger_with_a_valid_tag_cannot_write_or_read(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    _first_ticket(daemon, sink, "Vertrouwelijk probleem")
    send(daemon.port, make_mail(STRANGER, "Re: [SD-1] Vertrouwelijk probleem", "Hallo?"))
    rows = _settled(daemon.app, 2)
    assert rows[1].status == "refused" and rows[1].ticket_id is None
    assert len(_ticket(daemon.app, "SD-1").messages) == 2  # request + ack only
    refusal = sink.wait_for(2)[1]
    assert "SD-1" not in refusal.get_content() and "SD-1" not in refusal["Subject"]


def test_forward_by_editor_of_another_site_does_not_hijack(
        app: App, sink: SmtpSink) -> None:
    _register_more(app)
    d = RunningDaemon(app).start()
    try:
        _first_ticket(d, sink)
        send(d.port, make_mail(OTHER_EDITOR, "Fwd: [SD-1] Menu weg", "Bij ons ook!"))
        rows = _settled(app, 2)
        assert rows[1].reason.endswith("may not write to it)")
        assert _ticket(app, "SD-2").requester == OTHER_EDITOR
        assert len(_ticket(app, "SD-1").messages) == 2
    finally:
        d.stop()


def test_agent_reply_is_relayed_from_the_desk_address(app: App, sink: SmtpSink) -> None:
    _register_more(app)
    d = RunningDaemon(app).start()
    try:
        ack_id = _first_ticket(d, sink)
        send(d.port, make_mail(AGENT, "Re: [SD-1] Menu weg",
                               "Het menu staat terug online.\n\nAlex",
                               headers={"In-Reply-To": ack_id}))
        reply = sink.wait_for(2)[1]
        assert reply["From"].endswith(f"<{DESK}>") and AGENT not in str(reply)
        assert reply["To"] == EDITOR and reply["Subject"] == "[SD-1] Menu weg"
        assert "Het menu staat terug online." in reply.get_content()
        assert reply["Auto-Submitted"] is None  # a person wrote it
        t = _ticket(app, "SD-1")
        assert t.state == "open" and t.first_response_at is not None
        assert [m.kind for m in t.messages] == ["request", "ack", "agent-reply", "reply"]
        # An internal note and a status change: nothing reaches the editor.
        send(d.port, make_mail(AGENT, "Re: [SD-1] Menu weg",
                               "#note\n#status resolved\nCache geleegd, oorzaak: deploy."))
        _settled(app, 3)
        t = _ticket(app, "SD-1")
        assert t.state == "resolved" and t.messages[-1].kind == "note"
        assert t.messages[-1].body_text == "Cache geleegd, oorzaak: deploy."
        assert len(sink.messages) == 2
    finally:
        d.stop()


def test_two_auto_responders_do_not_loop(app: App, sink: SmtpSink) -> None:
    """A naive responder that answers every mail with a fresh mail (no headers, new
    subject): each answer would be a new request with a new acknowledgement, forever."""
    d = RunningDaemon(app).start()
    stop = threading.Event()

    def responder() -> None:
        answered = 0
        while not stop.is_set():
            try:
                sink.wait_for(answered + 1, timeout=0.5)
            except AssertionError:
                continue
            answered += 1
            send(d.port, make_mail(EDITOR, f"Vraag over uw antwoord {answered}",
                                   "Zie hieronder."))
    t = threading.Thread(target=responder, daemon=True)
    try:
        t.start()
        send(d.port, make_mail(EDITOR, "Begin"))
        limit = app.settings.access.auto_replies_per_hour
        _settled(app, limit + 1)
        stop.wait(2.0)  # room for a runaway loop to show itself
        rows = _settled(app, limit + 1)
        assert len(sink.messages) == limit
        assert len(rows) == limit + 1
        with app.sessions() as s:
            suppressed = list(s.execute(select(AutoAnswer).where(AutoAnswer.suppressed))
                              .scalars())
        assert len(suppressed) == 1 and suppressed[0].address == EDITOR
    finally:
        stop.set()
        t.join(5)
        d.stop()


def test_require_authentication_answers_only_verified_senders(
        make_settings, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    from mailgate.db.migrate import upgrade
    from tests.conftest import register_demo

    app = App(make_settings(access={"require_authentication": True,
                                    "authserv_id": "mx.desk.example"}))
    upgrade(app.engine)
    register_demo(app)
    d = RunningDaemon(app).start()
    try:
        passed = "dkim=pass header.d=site1234.example.be"
        forged = make_mail(EDITOR, "Vervalst", headers={
            "Authentication-Results": f"mx.attacker.example; {passed}"})
        send(d.port, forged)
        good = make_mail(EDITOR, "Echt", headers={
            "Authentication-Results": f"mx.desk.example; {passed}"})
        send(d.port, good)
        rows = _settled(app, 2)
        assert (rows[0].status, rows[0].kind) == ("ignored", "unverified")
        assert rows[0].authenticity.startswith("fail:")
        assert rows[1].status == "ticket", rows[1].reason
        assert rows[1].authenticity.startswith("pass:")
        [ack] = sink.wait_for(1)
        assert ack["Subject"] == "[SD-1] Echt"
    finally:
        d.stop()
        app.close()


def test_our_own_mail_coming_back_is_never_answered(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    ack_id = _first_ticket(daemon, sink)
    send(daemon.port, make_mail(DESK, "Echo van onszelf"))
    send(daemon.port, make_mail(EDITOR, "Doorgestuurd door een lijst",
                                headers={"X-Loop": DESK}))
    send(daemon.port, make_mail(EDITOR, "Onze eigen mail, teruggekaatst",
                                message_id=ack_id))
    rows = _settled(daemon.app, 4)
    assert [(r.status, r.kind) for r in rows[1:]] == [("ignored", "loop")] * 3
    assert len(sink.messages) == 1


def test_mail_after_close_opens_a_new_linked_ticket(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    ack_id = _first_ticket(daemon, sink)
    with transaction(daemon.app.sessions) as s:
        s.execute(select(Ticket).where(Ticket.ref == "SD-1")).scalar_one().state = "closed"
    send(daemon.port, make_mail(EDITOR, "Re: [SD-1] Menu weg", "Het is terug stuk.",
                                headers={"In-Reply-To": ack_id}))
    second = sink.wait_for(2)[1]
    assert second["Subject"] == "[SD-2] Menu weg"
    assert "SD-1" in second.get_content()  # the editor is told it is linked to the old one
    new = _ticket(daemon.app, "SD-2")
    with daemon.app.sessions() as s:
        assert s.get(Ticket, new.linked_to_id).ref == "SD-1"  # type: ignore[union-attr]
    assert _ticket(daemon.app, "SD-1").state == "closed"
