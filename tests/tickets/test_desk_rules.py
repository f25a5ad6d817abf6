"""The desk's own rules: urgent incidents, complaints, complete requests and the language of
every mail — store → one worker pass → rows and outbox, on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import pytest

from mailgate import views
from mailgate.app import App
from mailgate.clock import FixedClock
from mailgate.db.engine import transaction
from mailgate.db.migrate import upgrade
from mailgate.tickets import registry
from tests.support.desk import DESK, EDITOR, RunningDaemon, SettingsFactory, register_demo
from tests.support.harness import DeskHarness
from tests.support.mails import body, make_mail, send
from tests.support.sink import SmtpSink
from tests.support.wait import until
from tests.tickets.conftest import AGENT, OTHER_EDITOR, STRANGER, register_more

DUTY = "duty@desk.example"
MANAGER = "manager@desk.example"
COMPLAINTS = "complaints@desk.example"
FR_DESK = "servicedesk-fr@desk.example"
BXL = ZoneInfo("Europe/Brussels")
MONDAY_10 = datetime(2026, 11, 30, 10, 0, tzinfo=BXL).astimezone(UTC)


@pytest.fixture
def rules(make_settings: SettingsFactory) -> Iterator[DeskHarness]:
    """A desk with an on-duty address, a Service Manager and a French desk address."""
    app = App(make_settings(desk={"urgent_notify": DUTY, "service_manager": MANAGER,
                                  "addresses_by_language": {FR_DESK: "fr"}}))
    upgrade(app.engine)
    register_demo(app)
    register_more(app)
    app.clock = FixedClock(MONDAY_10)
    yield DeskHarness(app)
    app.close()


def _to(desk: DeskHarness, address: str) -> list[EmailMessage]:
    return desk.to(address)


# --- urgent incidents ---------------------------------------------------------------------


def test_dringend_ligt_plat_is_urgent_with_the_phone_sentence_first(rules: DeskHarness) -> None:
    row = rules.receive(make_mail(EDITOR, "DRINGEND: site 1234 ligt plat",
                                  "De hele website geeft een fout 503 sinds 9u."))
    assert row.status == "ticket", row.reason
    t = rules.ticket("SD-1")
    assert t.priority == "urgent" and t.language == "nl"
    # 30 business minutes, not 4 hours.
    assert t.first_response_due == MONDAY_10 + timedelta(minutes=30)
    [ack] = rules.outbox()
    text = body(ack)
    first = text.strip().splitlines()[0]
    assert "Bel de servicedesk nu" in first and "+32 2 123 45 67" in first
    assert "SD-1" in text.strip().splitlines()[1] or "SD-1" in first
    # The on-duty address is alerted at once, with the editor's phone.
    [alert] = _to(rules, DUTY)
    assert "[SD-1]" in alert["Subject"] and "+32 470 12 34 56" in body(alert)
    assert len(_to(rules, AGENT)) == 1  # the agents hear of it as of any ticket


@pytest.mark.parametrize("headers", [{"Importance": "high"}, {"X-Priority": "1 (Highest)"},
                                     {"Priority": "urgent"}])
def test_urgent_by_header(rules: DeskHarness, headers: dict[str, str]) -> None:
    rules.receive(make_mail(EDITOR, "Contactformulier stuk", headers=headers))
    assert rules.ticket("SD-1").priority == "urgent"


def test_a_later_mail_makes_the_ticket_urgent_and_alerts_once(rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Menu verschoven"))
    assert rules.ticket("SD-1").priority == "normal" and _to(rules, DUTY) == []
    ack = rules.outbox()[0]
    for text in ("Update: nu ligt de hele site plat, DRINGEND.", "Nog steeds DRINGEND!"):
        rules.receive(make_mail(EDITOR, f"Re: {ack['Subject']}", text,
                                headers={"In-Reply-To": ack["Message-ID"]}))
    t = rules.ticket("SD-1")
    assert t.priority == "urgent"
    assert t.first_response_due == MONDAY_10 + timedelta(minutes=30)
    assert len(_to(rules, DUTY)) == 1, "the on-duty address is alerted once"
    [raised] = rules.events("SD-1", "ticket.priority")
    assert (raised["from"], raised["to"], raised["by"]) == ("normal", "urgent", EDITOR)


def test_urgent_tickets_are_listed_apart(rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Menu verschoven"))
    rules.receive(make_mail(EDITOR, "URGENT: site down"))
    with rules.app.sessions() as s:
        rows = views.tickets(s, MONDAY_10, priority="urgent")
    assert [r["ref"] for r in rows] == ["SD-2"]


# --- complaints ---------------------------------------------------------------------------


def test_a_complaint_goes_to_the_service_manager_not_the_queue(rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Menu weg"))
    row = rules.receive(make_mail(EDITOR, "Klacht over de behandeling",
                                  "Mijn melding SD-1 bleef drie dagen zonder antwoord.",
                                  to=COMPLAINTS))
    assert (row.status, row.kind) == ("ticket", "complaint"), row.reason
    t = rules.ticket("SD-2")
    assert t.kind == "complaint"
    with rules.app.sessions() as s:
        from mailgate.db.models import Ticket
        assert s.get(Ticket, t.linked_to_id).ref == "SD-1"  # type: ignore[union-attr]
    ack = [m for m in _to(rules, EDITOR) if "[SD-2]" in m["Subject"]]
    assert len(ack) == 1 and COMPLAINTS in str(ack[0]["From"])
    assert "Service Manager" in body(ack[0]) and "service owner" in body(ack[0])
    notice = _to(rules, MANAGER)
    assert len(notice) == 1 and "[SD-2]" in notice[0]["Subject"]
    assert not any("[SD-2]" in m["Subject"] for m in _to(rules, AGENT)), "not the queue"
    # The complainant's reply stays on the complaint and reaches the Service Manager.
    rules.receive(make_mail(EDITOR, f"Re: {ack[0]['Subject']}", "Nog een detail.",
                            to=COMPLAINTS, headers={"In-Reply-To": ack[0]["Message-ID"]}))
    assert [m.kind for m in rules.ticket("SD-2").messages].count("follow-up") == 1
    assert len(_to(rules, MANAGER)) == 2 and len(rules.tickets()) == 2


def test_a_strangers_complaint_is_accepted_and_rate_limited(rules: DeskHarness) -> None:
    row = rules.receive(make_mail(STRANGER, "Klacht", "Uw website is onleesbaar.",
                                  to=COMPLAINTS))
    assert (row.status, row.kind) == ("ticket", "complaint")
    assert len(_to(rules, STRANGER)) == 1 and len(_to(rules, MANAGER)) == 1
    limit = rules.app.settings.access.auto_replies_per_hour
    for i in range(limit + 2):
        rules.receive(make_mail(STRANGER, f"Klacht {chr(65 + i)}", f"Tekst {chr(97 + i)}.",
                                to=COMPLAINTS))
    assert len(_to(rules, STRANGER)) == limit


def test_strangers_complaints_can_be_refused(make_settings: SettingsFactory) -> None:
    app = App(make_settings(access={"complaints_from_strangers": False}))
    upgrade(app.engine)
    register_demo(app)
    try:
        row = DeskHarness(app).receive(make_mail(STRANGER, "Klacht", to=COMPLAINTS))
        assert row.status == "refused"
    finally:
        app.close()


# --- complete requests --------------------------------------------------------------------


SIGNED = """Beste,

De pagina https://www.site1234.example.be/nl/contact geeft sinds vanochtend
"500 Internal Server Error".

Met vriendelijke groeten,
Eva Peeters
Tel. 0470 98 76 54
"""


def test_what_the_request_holds_is_kept_on_the_ticket(rules: DeskHarness) -> None:
    # An editor registered without name or phone: the mail itself supplies them.
    with transaction(rules.app.sessions) as s:
        registry.add_editor(s, "1234", "jan@site1234.example.be", rules.app.clock.now())
    rules.receive(make_mail("jan@site1234.example.be", "Contactformulier: fout 500", SIGNED))
    [ref] = rules.tickets()
    t = rules.ticket(ref)
    assert t.site_id == "1234"
    assert t.urls == ["https://www.site1234.example.be/nl/contact"]
    assert t.phone == "+32470987654" and t.contact_name == "Eva Peeters"
    assert t.has_error_message and t.missing == []


def test_another_sites_id_is_pointed_out_and_a_follow_up_fills_what_was_missing(
        rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Probleem met het menu op site 5678",
                            "Het menu van site 5678 is verschoven."))
    t = rules.ticket("SD-1")
    assert t.site_id == "1234"  # the editor's own site; 5678 is pointed out, not taken
    assert "url" in t.missing and "error" in t.missing
    [ack] = rules.outbox()
    assert "5678" in body(ack)
    rules.receive(make_mail(EDITOR, f"Re: {ack['Subject']}",
                            "Het gaat om https://www.site1234.example.be/menu",
                            headers={"In-Reply-To": ack["Message-ID"]}))
    t = rules.ticket("SD-1")
    assert t.urls == ["https://www.site1234.example.be/menu"] and "url" not in t.missing
    [filled] = rules.events("SD-1", "ticket.completed")
    assert filled["items"] == ["url"]


def test_several_requests_in_one_mail_get_the_one_subject_reminder(rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Enkele problemen", (
        "Beste, ik heb een paar problemen:\n"
        "1. Het menu bovenaan de homepage is helemaal verschoven\n"
        "2. De zoekfunctie geeft geen resultaten meer terug\n"
        "3. Het contactformulier verstuurt geen mails meer naar ons\n")))
    assert "één mail per" in body(rules.outbox()[0])


# --- the language of every mail -----------------------------------------------------------


def _ack_language(desk: DeskHarness) -> str:
    return str(desk.outbox()[-1]["Content-Language"])


def test_language_the_editors_registered_one_first(rules: DeskHarness) -> None:
    with transaction(rules.app.sessions) as s:
        registry.add_editor(s, "5678", "fr@site5678.example.be", rules.app.clock.now(),
                            language="fr")
    rules.receive(make_mail("fr@site5678.example.be", "Menu weg", "Het menu is weg."))
    assert _ack_language(rules) == "fr" and rules.ticket("SD-1").language == "fr"


def test_language_of_the_desk_address_written_to(rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Menu weg", "Het menu is weg sinds gisteren.",
                            to=FR_DESK))
    assert _ack_language(rules) == "fr"


def test_language_of_the_mails_own_text(rules: DeskHarness) -> None:
    rules.receive(make_mail(OTHER_EDITOR, "Problème de menu", (
        "Bonjour, le menu de notre site ne s'affiche plus depuis ce matin. Pourriez-vous "
        "regarder ? Merci d'avance.")))
    ack = rules.outbox()[-1]
    assert ack["Content-Language"] == "fr" and "Madame, Monsieur" in body(ack)
    # The ticket keeps it: the clock's mails follow in French too.
    assert rules.ticket("SD-1").language == "fr"


def test_german_is_answered_in_the_default_language_with_a_german_line(
        rules: DeskHarness) -> None:
    rules.receive(make_mail(OTHER_EDITOR, "Menü fehlt", (
        "Guten Tag, das Menü unserer Website wird seit heute Morgen nicht mehr angezeigt. "
        "Können Sie bitte nachsehen? Vielen Dank.")))
    ack = rules.outbox()[-1]
    assert ack["Content-Language"] == "nl" and "Wir haben Ihre Nachricht erhalten" in body(ack)


def test_language_falls_back_to_the_desk_default(rules: DeskHarness) -> None:
    rules.receive(make_mail(OTHER_EDITOR, "OK", "OK"))
    assert _ack_language(rules) == rules.app.settings.desk.default_language


def test_desk_addresses_are_accepted_by_the_listener(rules: DeskHarness) -> None:
    own = rules.app.settings.desk.own_addresses
    assert {DESK, COMPLAINTS, FR_DESK} <= own


# --- end to end, over the real listener -------------------------------------------------------


def test_urgent_and_complaint_over_smtp(make_settings: SettingsFactory, sink: SmtpSink) -> None:
    """The issue's own story: "DRINGEND: site 1234 ligt plat" → a Dutch acknowledgement that
    first says to phone, the on-duty address alerted; a complaint reaches the Service
    Manager, not the queue."""
    app = App(make_settings(desk={"urgent_notify": DUTY, "service_manager": MANAGER}))
    upgrade(app.engine)
    register_demo(app)
    register_more(app)
    d = RunningDaemon(app).start()

    def to(address: str, count: int) -> list[EmailMessage]:
        def check() -> list[EmailMessage]:
            got = [m for m in sink.messages if address in str(m["To"])]
            return got if len(got) >= count else []
        return until(check, what=f"{count} mails to {address}")
    try:
        send(d.port, make_mail(EDITOR, "DRINGEND: site 1234 ligt plat",
                               "Sinds 9u geeft elke pagina een fout 503."))
        [ack] = to(EDITOR, 1)
        assert ack["Subject"] == "[SD-1] DRINGEND: site 1234 ligt plat"
        assert ack["Content-Language"] == "nl"
        first = body(ack).strip().splitlines()[0]
        assert "Bel de servicedesk nu" in first
        [alert] = to(DUTY, 1)
        assert "[SD-1]" in alert["Subject"] and "+32 470 12 34 56" in body(alert)
        send(d.port, make_mail(EDITOR, "Klacht", "Niemand nam op toen ik belde over SD-1.",
                               to=COMPLAINTS), rcpt=[COMPLAINTS])
        [notice] = to(MANAGER, 1)
        assert "[SD-2]" in notice["Subject"]
        assert not any("[SD-2]" in str(m["Subject"]) for m in to(AGENT, 1))
        complaint_ack = [m for m in to(EDITOR, 2) if "[SD-2]" in m["Subject"]]
        assert len(complaint_ack) == 1 and COMPLAINTS in str(complaint_ack[0]["From"])
    finally:
        d.stop()
        app.close()


# --- the relay's loop brake never costs a person ------------------------------------------


def test_screenshots_sent_one_by_one_all_reach_the_agents(rules: DeskHarness) -> None:
    """The same words from the same editor again and again is how an auto-responder loops
    through the relay (tests/test_loops.py); five mails 'see attachment', each with another
    screenshot, are a person's, and every one is told to the agents."""
    rules.receive(make_mail(EDITOR, "Formulier geeft fout 500"))
    before = len(rules.outbox(agents=True))
    for n in range(5):
        msg = make_mail(EDITOR, "Re: [SD-1] Formulier geeft fout 500", "zie bijlage")
        msg.add_attachment(b"\x89PNG\r\n\x1a\n" + bytes([n]) * 2000, maintype="image",
                           subtype="png", filename=f"scherm{n}.png")
        row = rules.receive(msg)
        assert row.status == "ticket" and "not told" not in (row.reason or ""), row.reason
    assert len(rules.outbox(agents=True)) - before == 5
    assert rules.events("SD-1", "answer.suppressed") == []


def test_the_same_words_again_and_again_stop_reaching_the_agents(rules: DeskHarness) -> None:
    rules.receive(make_mail(EDITOR, "Formulier geeft fout 500"))
    before = len(rules.outbox(agents=True))
    for _ in range(5):
        row = rules.receive(make_mail(EDITOR, "Re: [SD-1] Formulier geeft fout 500",
                                      "Ik ben afwezig tot maandag."))
        assert row.status == "ticket"
    # Three told; the fourth and fifth kept on the ticket, recorded, not passed on.
    assert len(rules.outbox(agents=True)) - before == 3
    assert len(rules.events("SD-1", "answer.suppressed")) == 2
