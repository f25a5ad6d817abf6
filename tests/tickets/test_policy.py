"""The desk's rules, each as store → one real worker pass → rows and outbox, on both
databases (tests/support/harness.py); the few that need the whole path (relay to an editor,
two auto-responders answering each other) run through the real listener and sink."""

from __future__ import annotations

import threading
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.db.models import AutoAnswer, BouncingAddress, Inbound, Outbox, Ticket
from mailgate.tickets.autoanswer import SAME_TEXT_PER_HOUR
from tests.conftest import DESK, EDITOR, RunningDaemon, SettingsFactory
from tests.support.harness import DeskHarness
from tests.support.mails import body, make_mail, send
from tests.support.sink import SmtpSink
from tests.support.wait import until
from tests.tickets.conftest import AGENT, OTHER_EDITOR, STRANGER, register_more


def _settled(app: App, count: int) -> list[Inbound]:
    def check() -> list[Inbound] | None:
        with app.sessions() as s:
            rows = list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())
        return rows if len(rows) >= count and all(r.status != "pending" for r in rows) else None
    return until(check, what=f"{count} processed inbound mails")


def _first_ticket(desk: DeskHarness, subject: str = "Menu weg") -> EmailMessage:
    row = desk.receive(make_mail(EDITOR, subject))
    assert row.status == "ticket", row.reason
    return desk.outbox()[-1]


def test_out_of_office_is_recorded_but_changes_nothing(desk: DeskHarness) -> None:
    ack_id = _first_ticket(desk)["Message-ID"]
    desk.set_state("SD-1", "waiting")  # we asked the editor for information
    before = desk.ticket("SD-1")
    ooo = make_mail(EDITOR, "Automatisch antwoord: [SD-1] Menu weg",
                    "Ik ben afwezig tot maandag.",
                    headers={"Auto-Submitted": "auto-replied", "In-Reply-To": ack_id,
                             "References": ack_id})
    row = desk.receive(ooo)
    after = desk.ticket("SD-1")
    assert row.kind == "auto-reply" and row.ticket_id == after.id
    assert [m.kind for m in after.messages][-1] == "auto-reply"
    assert after.state == "waiting", "an out-of-office must not reopen a waiting ticket"
    assert after.updated_at == before.updated_at and after.close_at == before.close_at
    assert len(desk.outbox()) == 1, "never answered"


def test_bounce_of_our_ack_marks_outbox_failed_and_flags_address(desk: DeskHarness) -> None:
    ack_id = _first_ticket(desk)["Message-ID"]
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
    row = desk.receive(dsn, envelope_from="")
    assert row.kind == "bounce"
    with desk.app.sessions() as s:
        ack = s.execute(select(Outbox).where(Outbox.message_id == ack_id)).scalar_one()
        assert ack.status == "failed" and ack.dsn_status == "5.1.1"
        flag = s.get(BouncingAddress, EDITOR)
        assert flag is not None and flag.last_status == "5.1.1"
    assert desk.ticket("SD-1").state == "new"
    assert len(desk.outbox()) == 1


def test_list_mail_makes_no_ticket(desk: DeskHarness) -> None:
    row = desk.receive(make_mail(EDITOR, "Nieuwsbrief november",
                                 headers={"List-Id": "<news.example.be>",
                                          "Precedence": "bulk"}))
    assert (row.status, row.kind) == ("ignored", "bulk")
    assert desk.outbox() == []


def test_stranger_gets_a_polite_rate_limited_refusal(desk: DeskHarness) -> None:
    limit = desk.app.settings.access.auto_replies_per_hour
    rows = [desk.receive(make_mail(STRANGER, f"Vraag {i}")) for i in range(limit + 2)]
    assert {r.status for r in rows} == {"refused"}
    refusals = desk.outbox()
    assert len(refusals) == limit
    assert all("niet als melding geregistreerd" in body(m) for m in refusals)
    assert refusals[0]["Auto-Submitted"] == "auto-replied"
    with desk.app.sessions() as s:
        assert s.execute(select(Ticket)).first() is None
        suppressed = s.execute(select(AutoAnswer).where(AutoAnswer.suppressed)).scalars()
        assert len(list(suppressed)) == 2
    assert "suppressed" in rows[-1].reason


def test_stranger_with_a_valid_tag_cannot_write_or_read(desk: DeskHarness) -> None:
    _first_ticket(desk, "Vertrouwelijk probleem")
    row = desk.receive(make_mail(STRANGER, "Re: [SD-1] Vertrouwelijk probleem", "Hallo?"))
    assert row.status == "refused" and row.ticket_id is None
    assert len(desk.ticket("SD-1").messages) == 2  # request + ack only
    refusal = desk.outbox()[1]
    assert "SD-1" not in body(refusal) and "SD-1" not in refusal["Subject"]


def test_forward_by_editor_of_another_site_does_not_hijack(desk: DeskHarness) -> None:
    _first_ticket(desk)
    row = desk.receive(make_mail(OTHER_EDITOR, "Fwd: [SD-1] Menu weg", "Bij ons ook!"))
    assert row.reason.endswith("may not write to it)")
    assert desk.ticket("SD-2").requester == OTHER_EDITOR
    assert len(desk.ticket("SD-1").messages) == 2


def test_agent_reply_is_relayed_from_the_desk_address(app: App, sink: SmtpSink) -> None:
    register_more(app)
    d = RunningDaemon(app).start()

    def to(address: str, count: int) -> list[EmailMessage]:
        return until(lambda: [m for m in sink.messages if address in str(m["To"])]
                     if len([m for m in sink.messages if address in str(m["To"])]) >= count
                     else None, what=f"{count} mails to {address}")
    try:
        send(d.port, make_mail(EDITOR, "Menu weg"))
        [ack] = to(EDITOR, 1)
        [notice] = to(AGENT, 1)  # the agent is told of the new ticket
        assert notice["Reply-To"] == DESK and notice["Subject"] == "[SD-1] Menu weg"
        send(d.port, make_mail(AGENT, "Re: [SD-1] Menu weg",
                               "Het menu staat terug online.\n\nAlex",
                               headers={"In-Reply-To": notice["Message-ID"]}))
        reply = to(EDITOR, 2)[1]
        assert reply["From"].endswith(f"<{DESK}>") and AGENT not in str(reply)
        assert reply["To"] == EDITOR and reply["Subject"] == "[SD-1] Menu weg"
        assert reply["In-Reply-To"] and ack["Message-ID"] in reply["References"]
        assert "Het menu staat terug online." in body(reply)
        assert reply["Auto-Submitted"] is None  # a person wrote it
        _settled(app, 2)
        t = DeskHarness(app).ticket("SD-1")
        assert t.state == "open" and t.first_response_at is not None
        assert [m.kind for m in t.messages] == ["request", "ack", "agent-reply", "reply"]
        # An internal note and a status change: nothing reaches the editor.
        send(d.port, make_mail(AGENT, "Re: [SD-1] Menu weg",
                               "#note\n#status resolved\nCache geleegd, oorzaak: deploy."))
        _settled(app, 3)
        t = DeskHarness(app).ticket("SD-1")
        assert t.state == "resolved" and [m.kind for m in t.messages][-2:] == ["note", "handled"]
        assert t.messages[-2].body_text == "Cache geleegd, oorzaak: deploy."
        # Resolving tells the editor (the "handled" mail), but never the internal note.
        handled = to(EDITOR, 3)[2]
        assert "Cache geleegd" not in body(handled) and AGENT not in str(handled)
    finally:
        d.stop()


@pytest.mark.parametrize("counter", [False, True])
def test_two_auto_responders_do_not_loop(make_settings: SettingsFactory, sink: SmtpSink,
                                         counter: bool) -> None:
    """A naive responder behind a registered editor's address that answers every mail with a
    fresh mail and no automatic-mail headers: each answer would be a new request with a new
    acknowledgement, forever. The same mail answered three times an hour stops it; one that
    numbers its mails runs into the editors' ceiling (here 8 an hour) and stops there."""
    from mailgate.db.migrate import upgrade
    from tests.conftest import register_demo

    app = App(make_settings(access={"acks_per_hour": 8}))
    upgrade(app.engine)
    register_demo(app)
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
            subject = f"Vraag over uw antwoord {answered}" if counter else "Vraag over uw antwoord"
            send(d.port, make_mail(EDITOR, subject, "Zie hieronder."))
    t = threading.Thread(target=responder, daemon=True)
    try:
        t.start()
        send(d.port, make_mail(EDITOR, "Begin"))
        # "Begin", then answers until the brake holds one back.
        rounds = 8 if counter else SAME_TEXT_PER_HOUR + 1
        _settled(app, rounds + 1)
        stop.wait(2.0)  # room for a runaway loop to show itself
        rows = _settled(app, rounds + 1)
        assert len(sink.messages) == rounds
        assert len(rows) == rounds + 1
        with app.sessions() as s:
            suppressed = list(s.execute(select(AutoAnswer).where(AutoAnswer.suppressed))
                              .scalars())
        assert len(suppressed) == 1 and suppressed[0].address == EDITOR
    finally:
        stop.set()
        t.join(5)
        d.stop()
        app.close()


def test_every_request_of_a_registered_editor_gets_its_number(desk: DeskHarness) -> None:
    """Twenty separate requests in a minute (a weekend's IMAP inbox) get twenty
    acknowledgements: the brake is for loops, not for people."""
    for i in range(20):
        row = desk.receive(make_mail(EDITOR, f"Probleem met pagina {chr(65 + i)}",
                                     f"De pagina /{chr(97 + i)}{i} geeft fout {400 + i}."))
        assert row.status == "ticket"
    acks = desk.outbox()
    assert len(acks) == 20
    assert [a["Subject"].split()[0] for a in acks] == [f"[SD-{n}]" for n in range(1, 21)]
    with desk.app.sessions() as s:
        assert s.execute(select(AutoAnswer).where(AutoAnswer.suppressed)).first() is None


def test_numbered_requests_with_the_same_text_each_get_their_number(desk: DeskHarness) -> None:
    """Thirty "Melding n" waiting in the IMAP inbox after a weekend, one body for all: the
    same-text brake must not take them for a loop (the subjects differ)."""
    for i in range(30):
        assert desk.receive(make_mail(EDITOR, f"Melding {i}")).status == "ticket"
    assert len(desk.outbox()) == 30


def test_acks_to_a_bouncing_address_keep_the_tight_limit(desk: DeskHarness) -> None:
    from mailgate.db.engine import transaction
    from mailgate.db.models import BouncingAddress

    with transaction(desk.app.sessions) as s:
        now = desk.app.clock.now()
        s.add(BouncingAddress(address=EDITOR, first_at=now, last_at=now, count=1,
                              last_status="5.2.2"))
    limit = desk.app.settings.access.auto_replies_per_hour
    for i in range(limit + 2):
        desk.receive(make_mail(EDITOR, f"Vraag {chr(65 + i)}", f"Tekst {chr(97 + i)}."))
    assert len(desk.outbox()) == limit
    assert len(desk.tickets()) == limit + 2  # every request is still a ticket


def test_require_authentication_answers_only_verified_senders(
        make_settings: SettingsFactory) -> None:
    from mailgate.db.migrate import upgrade
    from tests.conftest import register_demo

    app = App(make_settings(access={"require_authentication": True,
                                    "authserv_id": "mx.desk.example"}))
    upgrade(app.engine)
    register_demo(app)
    desk = DeskHarness(app)
    try:
        passed = "dkim=pass header.d=site1234.example.be"
        forged = desk.receive(make_mail(EDITOR, "Vervalst", headers={
            "Authentication-Results": f"mx.attacker.example; {passed}"}))
        good = desk.receive(make_mail(EDITOR, "Echt", headers={
            "Authentication-Results": f"mx.desk.example; {passed}"}))
        assert (forged.status, forged.kind) == ("ignored", "unverified")
        assert forged.authenticity.startswith("fail:")
        assert good.status == "ticket", good.reason
        assert good.authenticity.startswith("pass:")
        [ack] = desk.outbox()
        assert ack["Subject"] == "[SD-1] Echt"
    finally:
        app.close()


def test_our_own_mail_coming_back_is_never_answered(desk: DeskHarness) -> None:
    ack_id = _first_ticket(desk)["Message-ID"]
    rows = [desk.receive(make_mail(DESK, "Echo van onszelf")),
            desk.receive(make_mail(EDITOR, "Doorgestuurd door een lijst",
                                   headers={"X-Loop": DESK})),
            desk.receive(make_mail(EDITOR, "Onze eigen mail, teruggekaatst",
                                   message_id=ack_id))]
    assert [(r.status, r.kind) for r in rows] == [("ignored", "loop")] * 3
    assert len(desk.outbox()) == 1


def test_mail_after_close_opens_a_new_linked_ticket(desk: DeskHarness) -> None:
    ack_id = _first_ticket(desk)["Message-ID"]
    desk.set_state("SD-1", "closed")
    desk.receive(make_mail(EDITOR, "Re: [SD-1] Menu weg", "Het is terug stuk.",
                           headers={"In-Reply-To": ack_id}))
    second = desk.outbox()[1]
    assert second["Subject"] == "[SD-2] Menu weg"
    assert "SD-1" in body(second)  # the editor is told it is linked to the old one
    new = desk.ticket("SD-2")
    with desk.app.sessions() as s:
        assert s.get(Ticket, new.linked_to_id).ref == "SD-1"  # type: ignore[union-attr]
    assert desk.ticket("SD-1").state == "closed"


# --- real bounces and real customer mail (issue 11, items 10 and 11) ----------------------

def _raw(head: str, body: str) -> bytes:
    return (head.strip("\n").replace("\n", "\r\n") + "\r\nTo: " + DESK
            + "\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + body.replace("\n", "\r\n")).encode()


FAILED_TEXT = ("This is the mail system at host mx.site1234.example.be.\n\n"
               f"Your message could not be delivered to {EDITOR}.\n\n"
               f"<{EDITOR}>: host mx said: 550 5.1.1 user unknown\n")


@pytest.mark.parametrize("from_field", [
    "From: Mail Delivery System <>",                        # empty <> after a display name
    'From: "Mail Delivery" <mailer\\-daemon@mx.example>',    # backslash-escaped local part
    'From: "Delivery" <"mail daemon"@mx.example>',           # quoted local part with a space
    "From: System Administrator",                            # a display name, no address
])
def test_bounce_whose_from_has_no_usable_address_is_a_bounce(desk: DeskHarness,
                                                             from_field: str) -> None:
    _first_ticket(desk)
    row = desk.receive(_raw(f"{from_field}\nSubject: Undeliverable: Menu weg", FAILED_TEXT))
    assert (row.status, row.kind) == ("ignored", "bounce"), row.reason
    assert len(desk.outbox()) == 1, "only the first ack: a bounce is never answered"


def test_bilingual_bounce_from_an_ordinary_mailbox_is_never_answered(
        desk: DeskHarness) -> None:
    """A gateway answering as the recipient, from a mailbox that looks like a person's:
    answering it (or refusing it, as a stranger) would be backscatter."""
    _first_ticket(desk)
    body = ("Votre message n'a pas pu être remis à eva@site1234.example.be.\n"
            "Your message could not be delivered to eva@site1234.example.be.\n\n"
            "Objet : [SD-1] Menu weg\n")
    row = desk.receive(_raw("From: Accueil <accueil@partner.example>\n"
                            "Subject: RE: [SD-1] Menu weg : non remis (delivery failed)", body))
    assert row.kind == "bounce", row.reason
    assert len(desk.outbox()) == 1 and desk.to("accueil@partner.example") == []
    assert len(desk.tickets()) == 1


def test_mail_without_usable_sender_is_kept_and_ignored_not_quarantined(
        desk: DeskHarness) -> None:
    row = desk.receive(_raw("From: Jan Peeters\nSubject: De site is stuk", "Help!"))
    assert (row.status, row.kind) == ("ignored", "no-sender")
    assert "no usable sender address" in row.reason and "no answer is possible" in row.reason
    assert desk.outbox() == [] and desk.tickets() == []


def test_an_address_with_a_space_is_never_answered_at_a_guessed_address(
        desk: DeskHarness) -> None:
    head = 'From: "Power Quadrant" <power quadrant system@example.com>\nSubject: offerte'
    row = desk.receive(_raw(head, "Graag een offerte."))
    assert (row.status, row.kind) == ("ignored", "no-sender")
    assert desk.to("system@example.com") == [] and desk.outbox() == []
    # With a fallback the mail names itself, the answer goes there (a real address).
    row = desk.receive(_raw(f"{head}\nReply-To: {EDITOR}", "Graag een offerte."))
    assert row.status == "ticket", row.reason
    assert [m["To"] for m in desk.outbox()] == [EDITOR]


@pytest.mark.parametrize(("head", "envelope"), [
    (f"Sender: {EDITOR}", ""),
    (f"Reply-To: Eva <{EDITOR}>", ""),
    ("From: Eva", EDITOR),                                   # the envelope sender
    (f"From: [??????]\nFrom: Eva <{EDITOR}>", ""),           # a junk From, then a good one
    (f"From: Eva <{EDITOR}.>", ""),                          # a trailing dot in the domain
])
def test_sender_fallbacks_reach_the_registered_editor(desk: DeskHarness, head: str,
                                                      envelope: str) -> None:
    row = desk.receive(_raw(f"{head}\nSubject: Menu weg", "Het menu is weg."),
                       envelope_from=envelope)
    assert row.status == "ticket", row.reason
    assert [m["To"] for m in desk.outbox()] == [EDITOR]
    assert desk.ticket("SD-1").requester == EDITOR


def test_forward_with_a_german_separator_keeps_the_forwarded_request(desk: DeskHarness) -> None:
    body = ("Bitte ansehen.\n\n----- Original Nachricht ----\n"
            "Von: Kunde <kunde@x.example>\nAn: info@site1234.example.be\nBetreff: Drucker\n\n"
            "Der Drucker im 2. Stock druckt nicht mehr.\n")
    row = desk.receive(_raw(f"From: Eva <{EDITOR}>\nSubject: W.: Drucker", body))
    assert row.status == "ticket", row.reason
    [request] = [m for m in desk.ticket("SD-1").messages if m.direction == "in"]
    assert "Der Drucker im 2. Stock druckt nicht mehr." in request.body_text
