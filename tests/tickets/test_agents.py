"""Agents by mail (README "Agents by mail"): notifications in the agents' own thread,
answers relayed to the editor from the desk's address, notes, commands checked before they
apply, forwards with #requester. Each as store → one real worker pass → rows and outbox on
both databases (tests/support/harness.py); one end to end over SMTP with the sink.

The agents' mails are in the desk's default language ("nl" here): the tests check
structure, headers and values, not the wording of the templates."""

from __future__ import annotations

import hashlib
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, cast

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import BouncingAddress, Event, Inbound, Outbox
from mailgate.tickets import registry
from mailgate.tickets.notify import AGENT_KINDS, MARKER
from tests.support.desk import DESK, EDITOR, RunningDaemon, SettingsFactory, register_demo
from tests.support.harness import DeskHarness
from tests.support.mails import body, make_mail, send
from tests.support.sink import SmtpSink
from tests.support.wait import until
from tests.tickets.conftest import AGENT, OTHER_EDITOR, register_more

BEA = "bea@desk.example"
COMMENT = "comment@desk.example"
PHONE = "+32 470 12 34 56"  # the demo editor's phone (tests/support/desk.py)
# A real PNG signature, then bytes that would not survive a careless text round trip.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8


# --- helpers ------------------------------------------------------------------------------


def _add_agent(app: App, email: str = BEA, name: str = "Bea Agent") -> None:
    with transaction(app.sessions) as s:
        registry.add_agent(s, email, app.clock.now(), name)


def _with_png(msg: EmailMessage, data: bytes = PNG,
              filename: str = "screenshot.png") -> EmailMessage:
    msg.add_attachment(data, maintype="image", subtype="png", filename=filename)
    return msg


def _new_ticket(desk: DeskHarness, msg: EmailMessage | None = None
                ) -> tuple[EmailMessage, EmailMessage]:
    """A new ticket from the editor: (the editor's acknowledgement, the agents' notice)."""
    row = desk.receive(msg or make_mail(EDITOR, "Menu weg", sender_name="Eva Editor"))
    assert row.status == "ticket", row.reason
    return desk.outbox()[-1], desk.outbox(agents=True)[-1]


def _answer(notice: EmailMessage, body: str, *, sender: str = AGENT,
            name: str = "Alex Agent", **kw: Any) -> EmailMessage:
    """An agent's reply to one of our mails in the agents' thread."""
    headers = {"In-Reply-To": notice["Message-ID"], "References": notice["Message-ID"],
               **kw.pop("headers", {})}
    return make_mail(sender, f"Re: {notice['Subject']}", body, sender_name=name,
                     headers=headers, **kw)


def _rows(desk: DeskHarness, kind: str) -> list[Outbox]:
    return [r for r in desk.outbox_rows() if r.kind == kind]


def _editor_rows(desk: DeskHarness) -> list[Outbox]:
    """Every row of the editors' side (acknowledgement, relayed answers, "handled" mail,
    whatever the lifecycle adds): the raw bytes an editor would get."""
    return [r for r in desk.outbox_rows() if r.kind not in AGENT_KINDS]


def _leaks(raw: bytes, addresses: tuple[str, ...] = (AGENT, BEA)) -> list[str]:
    """The agent addresses found in a mail: in its raw bytes (headers, any encoding of the
    body aside) and in every decoded part."""
    msg = message_from_bytes(raw, policy=policy.default)
    texts = [raw.decode("utf-8", "replace"), str(msg)]
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            texts.append(part.get_content())
    # Whole addresses only: a Message-ID's hex MAC that ends in "bea" before "@desk.example"
    # is no leak of bea@desk.example (it made this test fail 1 time in ~4,000).
    return sorted({a for a in addresses for t in texts
                   if re.search(rf"(?<![\w.+-]){re.escape(a)}", t.lower())})


def _png_parts(msg: EmailMessage) -> list[bytes]:
    return [cast(bytes, p.get_content()) for p in msg.iter_attachments()
            if p.get_content_type() == "image/png"]


def _body(msg: EmailMessage) -> str:
    return body(msg)


# --- 1. notifications -----------------------------------------------------------------------


def test_new_ticket_notifies_the_agent_with_the_facts(desk: DeskHarness) -> None:
    ack, notice = _new_ticket(desk)
    assert ack["To"] == EDITOR
    assert len(desk.outbox(agents=True)) == 1
    assert notice["To"] == AGENT
    assert notice["Reply-To"] == DESK and notice["From"].addresses[0].addr_spec == DESK
    assert "[SD-1]" in notice["Subject"] and notice["Subject"] == "[SD-1] Menu weg"
    body = _body(notice)
    assert body.splitlines()[0] == MARKER
    for value in ("SD-1", "1234", "Demo site", EDITOR, PHONE, "fout 500"):
        assert value in body, value
    assert [r.kind for r in desk.outbox_rows()] == ["ack", "notify"]


def test_notification_carries_the_attachment_byte_for_byte(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk, _with_png(make_mail(EDITOR, "Menu weg")))
    assert _png_parts(notice) == [PNG]
    [part] = list(notice.iter_attachments())
    assert part.get_filename() == "screenshot.png"
    assert "screenshot.png" in _body(notice)  # listed in the text too


def test_follow_up_notification_is_in_the_same_thread(desk: DeskHarness) -> None:
    ack, first = _new_ticket(desk)
    row = desk.receive(make_mail(EDITOR, "Re: [SD-1] Menu weg", "Nog altijd weg.",
                                 headers={"In-Reply-To": ack["Message-ID"]}))
    assert row.kind == "follow-up", row.reason
    [_, second] = desk.outbox(agents=True)
    assert second["To"] == AGENT and second["Reply-To"] == DESK
    assert second["In-Reply-To"] == first["Message-ID"]
    assert first["Message-ID"] in second["References"].split()
    assert second["Message-ID"] != first["Message-ID"]
    assert "Nog altijd weg." in _body(second)
    assert len(desk.outbox()) == 1, "the editor hears nothing of the agents' thread"


# --- 2. answers relayed to the editor ---------------------------------------------------------


def _quoted(notice: EmailMessage) -> str:
    """Our notification quoted below an answer, as mail clients do."""
    lines = _body(notice).splitlines()
    return ("Op 27/11/2026 om 10:00 schreef Test Desk <servicedesk@desk.example>:\n"
            + "\n".join(f"> {line}" if line else ">" for line in lines))


ANSWERS = {
    "plain": "Het menu staat terug online.\n\nAlex",
    "quoting-our-notice-with-signature":
        "Het menu staat terug online.\n\n"
        "Alex Agent | alex@desk.example | +32 2 123 45 67\n\n{quote}",
    "signature-in-other-case":
        "Het menu staat terug online.\n\n--\nAlex Agent\nMail: Alex@Desk.Example",
    "quoted-header-lines":
        "Het menu staat terug online.\n\n"
        "> From: Alex <alex@desk.example>\n"
        "> Sent: maandag 23 november 2026 10:00\n"
        "> To: hosting@provider.example\n"
        "> Subject: cache\n>\n> Kunnen jullie de cache legen?",
    "outlook-header-lines":
        "Het menu staat terug online.\n\n"
        "-----Original Message-----\n"
        "From: Alex <alex@desk.example>\n"
        "Sent: maandag 23 november 2026 10:00\n"
        "To: hosting@provider.example\n"
        "Subject: cache\n\nKunnen jullie de cache legen?",
    "quoted-header-in-the-middle":
        "Het menu staat terug online. Dit vroeg ik aan de hosting:\n"
        "From: Alex <alex@desk.example>\n"
        "Kunnen jullie de cache legen?\n\nGroeten, Alex",
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_agent_answer_reaches_the_editor_from_the_desk_only(desk: DeskHarness,
                                                             case: str) -> None:
    ack, notice = _new_ticket(desk)
    text = ANSWERS[case].format(quote=_quoted(notice))
    row = desk.receive(_answer(notice, text))
    assert (row.status, row.kind) == ("ticket", "agent-reply"), row.reason
    [_ack, reply] = desk.outbox()
    assert [_leaks(r.raw) for r in _editor_rows(desk)] == [[], []], \
        f"agent address leaked to the editor: {case}"
    sender = reply["From"].addresses[0]
    assert sender.addr_spec == DESK and "Alex Agent" in sender.display_name
    assert reply["To"] == EDITOR and reply["Cc"] is None and reply["Reply-To"] is None
    assert "[SD-1]" in reply["Subject"]
    assert reply["In-Reply-To"]  # the editor's thread, not the agents'
    assert ack["Message-ID"] in reply["References"].split()
    assert notice["Message-ID"] not in str(reply["References"])
    body = _body(reply)
    assert "Het menu staat terug online." in body
    assert MARKER not in body and "Nieuw ticket" not in body, "our notification is cut off"
    t = desk.ticket("SD-1")
    assert t.first_response_at is not None and t.state == "open"


def test_signature_address_becomes_the_desk_address(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, ANSWERS["quoting-our-notice-with-signature"].format(
        quote=_quoted(notice))))
    body = _body(desk.outbox()[-1])
    assert f"Alex Agent | {DESK} | +32 2 123 45 67" in body


def test_relayed_answer_keeps_the_agents_attachment(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_with_png(_answer(notice, "Zie de schermafdruk."), filename="fixed.png"))
    reply = desk.outbox()[-1]
    assert _png_parts(reply) == [PNG]
    assert all(_leaks(r.raw) == [] for r in _editor_rows(desk))


def test_html_answer_with_a_mailto_signature(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    html = _answer(notice, "")
    html.set_content("<p>Het menu staat terug online.</p><p>Alex Agent<br>"
                     f'<a href="mailto:{AGENT}">{AGENT}</a></p>'
                     f"<blockquote><p>{MARKER}</p><p>SD-1</p></blockquote>", subtype="html")
    row = desk.receive(html)
    assert row.kind == "agent-reply", row.reason
    assert "Het menu staat terug online." in _body(desk.outbox()[-1])
    assert all(_leaks(r.raw) == [] for r in _editor_rows(desk))


def test_answer_below_the_quote_is_relayed(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, f"{_quoted(notice)}\n\nHet menu staat terug online."))
    body = _body(desk.outbox()[-1])
    assert "Het menu staat terug online." in body and MARKER not in body
    assert all(_leaks(r.raw) == [] for r in _editor_rows(desk))


def test_agents_out_of_office_is_not_relayed(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    _ack, notice = _new_ticket(desk)
    rows = len(desk.outbox_rows())
    for headers in ({"Auto-Submitted": "auto-replied"}, {}):
        row = desk.receive(make_mail(AGENT, f"Afwezig: {notice['Subject']}",
                                     f"Ik ben met verlof. Dringend? Mail {AGENT}.",
                                     headers={"In-Reply-To": notice["Message-ID"], **headers}))
        assert (row.status, row.kind) == ("ticket", "auto-reply"), row.reason
    assert len(desk.outbox_rows()) == rows, "nobody hears of an agent's out-of-office"
    assert desk.ticket("SD-1").first_response_at is None


# --- 3. reply-all --------------------------------------------------------------------------


def test_reply_all_with_the_editor_in_cc_sends_no_second_copy(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    row = desk.receive(_answer(notice, "Het menu staat terug online.",
                               headers={"Cc": f"Eva Editor <{EDITOR}>"}))
    assert (row.status, row.kind) == ("ticket", "agent-reply"), row.reason
    assert len(desk.outbox()) == 1, "the editor already has the agent's own mail"
    assert [r.kind for r in _editor_rows(desk)] == ["ack"]
    t = desk.ticket("SD-1")
    assert t.first_response_at is not None, "a direct answer is still an answer"
    assert t.state == "open"
    assert t.messages[-1].kind == "agent-reply"
    assert "Het menu staat terug online." in t.messages[-1].body_text


def test_other_agent_in_cc_gets_no_second_copy(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, "Het menu staat terug online.", headers={"Cc": BEA}))
    assert _rows(desk, "answer-copy") == [], "Bea already has the agent's own mail"
    assert len(desk.outbox()) == 2  # the editor does get it, from the desk


# --- 4. copies for the other agents --------------------------------------------------------


def test_other_agent_gets_a_copy_of_the_answer(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    _ack, notice = _new_ticket(desk)
    assert set(notice["To"].split(", ")) == {AGENT, BEA}  # both told of the new ticket
    desk.receive(_answer(notice, "Het menu staat terug online."))
    [copy_row] = _rows(desk, "answer-copy")
    assert copy_row.recipients == BEA, "the answering agent gets no copy of their own mail"
    copy = desk.outbox(agents=True)[-1]
    assert copy["To"] == BEA and copy["Reply-To"] == DESK
    assert copy["In-Reply-To"] == notice["Message-ID"]  # the agents' thread
    body = _body(copy)
    assert body.splitlines()[0] == MARKER
    assert "Alex Agent" in body and "Het menu staat terug online." in body
    assert [m["To"] for m in desk.outbox()] == [EDITOR, EDITOR]
    assert _rows(desk, "note-copy") == []


# --- 5. notes -------------------------------------------------------------------------------


def _assert_note(desk: DeskHarness, text: str) -> None:
    t = desk.ticket("SD-1")
    assert t.messages[-1].kind == "note" and t.messages[-1].body_text == text
    assert len(desk.outbox()) == 1, "a note never reaches the editor"
    assert t.first_response_at is None, "a note is no answer to the editor"
    [copy_row] = _rows(desk, "note-copy")
    assert copy_row.recipients == BEA
    assert text in _body(desk.outbox(agents=True)[-1])
    assert _rows(desk, "answer-copy") == []


def test_note_command_stays_with_the_agents(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    _ack, notice = _new_ticket(desk)
    row = desk.receive(_answer(notice, "#note\nCache geleegd, oorzaak: deploy."))
    assert row.status == "ticket", row.reason
    _assert_note(desk, "Cache geleegd, oorzaak: deploy.")


def test_mail_to_the_comment_address_is_a_note(make_settings: SettingsFactory) -> None:
    app = App(make_settings(desk={"comment_address": COMMENT}))
    try:
        upgrade(app.engine)
        register_demo(app)
        register_more(app)
        _add_agent(app)
        desk = DeskHarness(app)
        _ack, notice = _new_ticket(desk)
        row = desk.receive(_answer(notice, "Klant belde: het is dringend.", to=COMMENT),
                           rcpt=(COMMENT,))
        assert row.status == "ticket", row.reason
        _assert_note(desk, "Klant belde: het is dringend.")
        # By the subject tag alone (a fresh mail to the comment address) as well.
        row = desk.receive(make_mail(AGENT, "[SD-1] Menu weg", "Tweede notitie.", to=COMMENT))
        assert row.status == "ticket", row.reason
        t = desk.ticket("SD-1")
        assert [m.kind for m in t.messages][-2:] == ["note", "note"]
        assert len(desk.outbox()) == 1
    finally:
        app.close()


# --- 6. commands ----------------------------------------------------------------------------


STATE_COMMANDS = [
    ("#status waiting", "new", "waiting"),
    ("#wait", "new", "waiting"),
    ("#resolve", "new", "resolved"),
    ("#close", "new", "closed"),
    ("#status closed", "open", "closed"),
    ("#reopen", "closed", "open"),
    ("#status open", "resolved", "open"),
]


@pytest.mark.parametrize(("line", "before", "after"), STATE_COMMANDS)
def test_state_commands(desk: DeskHarness, line: str, before: str, after: str) -> None:
    _ack, notice = _new_ticket(desk)
    if before != "new":
        desk.set_state("SD-1", before)
    row = desk.receive(_answer(notice, line))
    assert (row.status, row.kind) == ("ticket", "agent-command"), row.reason
    assert desk.ticket("SD-1").state == after
    [event] = desk.events("SD-1", "ticket.state")
    assert (event["from"], event["to"], event["by"]) == (before, after, AGENT)
    assert _rows(desk, "reply") == [], "a command alone relays no answer"
    # (#resolve may tell the editor the ticket is handled: never with an agent's address.)
    assert all(_leaks(r.raw) == [] for r in _editor_rows(desk))
    assert _rows(desk, "command-refused") == []


def test_command_by_subject_tag_alone(desk: DeskHarness) -> None:
    _new_ticket(desk)
    row = desk.receive(make_mail(AGENT, "[SD-1] Menu weg", "#priority urgent\n#assign me"))
    assert (row.status, row.kind) == ("ticket", "agent-command"), row.reason
    t = desk.ticket("SD-1")
    assert (t.priority, t.assignee) == ("urgent", AGENT)


def test_command_with_an_answer_applies_and_relays(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, "#resolve\n#priority urgent\nHet menu staat terug online."))
    t = desk.ticket("SD-1")
    assert (t.state, t.priority) == ("resolved", "urgent")
    assert t.first_response_at is not None
    reply = desk.outbox()[-1]
    body = _body(reply)
    assert "Het menu staat terug online." in body and "#resolve" not in body
    assert "#priority" not in body
    assert [e["to"] for e in desk.events("SD-1", "ticket.state")] == ["open", "resolved"]


def test_priority(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, "#priority urgent"))
    assert desk.ticket("SD-1").priority == "urgent"
    [event] = desk.events("SD-1", "ticket.priority")
    assert (event["from"], event["to"], event["by"]) == ("normal", "urgent", AGENT)


def test_assign_to_another_agent_tells_the_assignee(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    _ack, notice = _new_ticket(desk)
    before = len(desk.outbox(agents=True))
    desk.receive(_answer(notice, f"#assign {BEA}"))
    assert desk.ticket("SD-1").assignee == BEA
    [event] = desk.events("SD-1", "ticket.assigned")
    assert (event["from"], event["to"], event["by"]) == (None, BEA, AGENT)
    [told] = desk.outbox(agents=True)[before:]
    assert told["To"] == BEA and told["Reply-To"] == DESK
    assert told["In-Reply-To"] == notice["Message-ID"]
    body = _body(told)
    assert body.splitlines()[0] == MARKER and "SD-1" in body and "Alex Agent" in body
    assert BEA in body  # the header block names the assignee
    assert [r.recipients for r in _rows(desk, "notify")][-1] == BEA
    assert len(desk.outbox()) == 1


def test_assign_me(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    before = len(desk.outbox_rows())
    desk.receive(_answer(notice, "#assign me"))
    assert desk.ticket("SD-1").assignee == AGENT
    [event] = desk.events("SD-1", "ticket.assigned")
    assert (event["to"], event["by"]) == (AGENT, AGENT)
    assert len(desk.outbox_rows()) == before, "nobody is told what they did themselves"


def test_site(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, "#site 5678"))
    assert desk.ticket("SD-1").site_id == "5678"
    [event] = desk.events("SD-1", "ticket.site")
    assert (event["from"], event["to"], event["by"]) == ("1234", "5678", AGENT)


def test_link(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(make_mail(EDITOR, "Ook het logo is weg"))
    assert desk.tickets() == ["SD-1", "SD-2"]
    desk.receive(_answer(notice, "#link SD-2"))
    assert desk.ticket("SD-1").linked_to_id == desk.ticket("SD-2").id
    [event] = desk.events("SD-1", "ticket.linked")
    assert (event["to"], event["by"]) == ("SD-2", AGENT)


def test_requester_on_a_ticket(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, f"#requester {OTHER_EDITOR}"))
    t = desk.ticket("SD-1")
    assert t.requester == OTHER_EDITOR and t.requester_name == "Olivier"
    [event] = desk.events("SD-1", "ticket.requester")
    assert (event["from"], event["to"], event["by"]) == (EDITOR, OTHER_EDITOR, AGENT)


FORWARD = (
    f"#requester {EDITOR}\n\n"
    "---------- Forwarded message ---------\n"
    "From: Eva Editor <eva@site1234.example.be>\n"
    "Date: Fri, 27 Nov 2026 at 09:12\n"
    "Subject: Contactformulier stuk\n"
    "To: Alex Agent <alex@desk.example>\n\n"
    "Het contactformulier geeft een fout 500 sinds vanochtend.\n"
    "Eva\n")


def test_forward_with_requester_makes_the_editors_ticket(desk: DeskHarness) -> None:
    fwd = _with_png(make_mail(AGENT, "Fwd: Contactformulier stuk", FORWARD,
                              sender_name="Alex Agent"))
    row = desk.receive(fwd)
    assert (row.status, row.kind) == ("ticket", "new-request"), row.reason
    t = desk.ticket("SD-1")
    assert (t.requester, t.site_id, t.requester_name) == (EDITOR, "1234", "Eva Editor")
    assert t.subject == "Contactformulier stuk"
    [ack] = desk.outbox()
    assert ack["To"] == EDITOR and ack["Subject"] == "[SD-1] Contactformulier stuk"
    assert all(_leaks(r.raw) == [] for r in _editor_rows(desk))
    request = t.messages[0]
    assert request.kind == "request"
    assert "fout 500 sinds vanochtend" in request.body_text
    assert "Forwarded message" in request.body_text
    assert "#requester" not in request.body_text
    [att] = request.attachments
    assert (att.filename, att.content_type, att.size) == ("screenshot.png", "image/png",
                                                          len(PNG))
    assert att.sha256 == hashlib.sha256(PNG).hexdigest()
    assert desk.to(AGENT) == [], "the forwarding agent is not notified of their own mail"
    [created] = desk.events("SD-1", "ticket.created")
    assert created["requester"] == EDITOR


def test_forward_with_requester_leaves_a_requester_event(desk: DeskHarness) -> None:
    """#requester on an agent's forward is a change like any other: one ticket.requester
    event {to: EDITOR, by: AGENT}, as #requester on an existing ticket leaves."""
    desk.receive(make_mail(AGENT, "Fwd: Contactformulier stuk", FORWARD))
    assert desk.ticket("SD-1").requester == EDITOR
    events = desk.events("SD-1", "ticket.requester")
    assert [(e["to"], e["by"]) for e in events] == [(EDITOR, AGENT)]


def test_forward_with_an_unknown_requester_is_refused(desk: DeskHarness) -> None:
    row = desk.receive(make_mail(AGENT, "Fwd: Contactformulier stuk",
                                 FORWARD.replace(EDITOR, "nobody@site1234.example.be", 1)))
    assert row.status == "refused", row.reason
    assert desk.tickets() == [] and desk.outbox() == []
    [refusal] = desk.outbox(agents=True)
    assert refusal["To"] == AGENT
    assert "> #requester nobody@site1234.example.be" in _body(refusal)


def test_forward_with_requester_and_other_commands(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    fwd = make_mail(AGENT, "Fwd: Contactformulier stuk",
                    FORWARD.replace(f"#requester {EDITOR}\n",
                                    f"#requester {EDITOR}\n#priority urgent\n#assign me\n"))
    row = desk.receive(fwd)
    assert row.status == "ticket", row.reason
    t = desk.ticket("SD-1")
    assert (t.requester, t.priority, t.assignee) == (EDITOR, "urgent", AGENT)
    [note] = desk.outbox(agents=True)
    assert note["To"] == BEA, "the other agent is told of the new ticket"
    assert "fout 500 sinds vanochtend" in _body(note)


def test_agents_own_request_without_tag_is_a_ticket(desk: DeskHarness) -> None:
    row = desk.receive(make_mail(AGENT, "Certificaat verloopt", "Vernieuwen voor vrijdag."))
    assert row.status == "ticket", row.reason
    assert desk.ticket("SD-1").requester == AGENT


# --- 7. wrong commands ------------------------------------------------------------------------


BAD = [
    ("#status done", "#status done"),
    ("#assign unknown@desk.example", "#assign unknown@desk.example"),
    ("#site 9999", "#site 9999"),
    ("#priority urgent\n#site 9999", "#site 9999"),
    ("#assign me\n#frobnicate", "#frobnicate"),
    (f"#status waiting\n#requester {EDITOR}\n#link SD-99", "#link SD-99"),
]


@pytest.mark.parametrize(("lines", "wrong"), BAD)
def test_wrong_command_changes_nothing_and_is_answered(desk: DeskHarness, lines: str,
                                                       wrong: str) -> None:
    _add_agent(desk.app)
    _ack, notice = _new_ticket(desk)
    before = desk.ticket("SD-1")
    agents_before = len(desk.outbox(agents=True))
    row = desk.receive(_answer(notice, f"{lines}\nHet menu staat terug online."))
    # Refused, never quarantined; the reason names the wrong line. (The kind stays what the
    # policy saw: "command-refused" for bad syntax, "agent-command" when the database check
    # in the handler refused it.)
    assert row.status == "refused" and wrong in row.reason, row.reason
    after = desk.ticket("SD-1")
    for field in ("state", "priority", "assignee", "site_id", "requester", "linked_to_id",
                  "first_response_at", "updated_at"):
        assert getattr(after, field) == getattr(before, field), field
    assert len(after.messages) == len(before.messages)
    assert len(desk.outbox()) == 1, "nothing relayed to the editor"
    with desk.app.sessions() as s:
        kinds = set(s.execute(select(Event.kind).where(Event.ticket_id == after.id))
                    .scalars())
    assert not kinds & {"ticket.state", "ticket.priority", "ticket.assigned", "ticket.site",
                        "ticket.linked", "ticket.requester", "ticket.note"}
    [refusal_row] = _rows(desk, "command-refused")
    assert refusal_row.recipients == AGENT
    [refusal] = desk.outbox(agents=True)[agents_before:]
    assert refusal["To"] == AGENT
    assert refusal["In-Reply-To"] == notice["Message-ID"]  # the agents' thread
    assert "[SD-1]" in refusal["Subject"]
    body = _body(refusal)
    assert f"> {wrong}" in body
    assert "#status open|waiting|resolved|closed" in body  # what is accepted
    assert "Het menu staat terug online." not in body


def test_impossible_state_change_is_refused(desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    desk.set_state("SD-1", "closed")
    row = desk.receive(_answer(notice, "#wait\nWe wachten op u."))
    assert row.status == "refused", row.reason
    assert desk.ticket("SD-1").state == "closed"
    assert "> #wait" in _body(desk.outbox(agents=True)[-1])
    assert len(desk.outbox()) == 1


def test_note_without_a_ticket_is_refused(desk: DeskHarness) -> None:
    row = desk.receive(make_mail(AGENT, "Losse gedachte", "#note\nIets om te onthouden."))
    assert row.status == "refused", row.reason
    assert desk.tickets() == []
    [refusal] = desk.outbox(agents=True)
    assert refusal["To"] == AGENT and "> #note" in _body(refusal)


# --- 8. an editor's '#' is text -------------------------------------------------------------


def test_command_from_an_editor_is_a_plain_follow_up(desk: DeskHarness) -> None:
    ack, _notice = _new_ticket(desk)
    row = desk.receive(make_mail(EDITOR, "Re: [SD-1] Menu weg", "#status closed\nDank u",
                                 headers={"In-Reply-To": ack["Message-ID"]}))
    assert (row.status, row.kind) == ("ticket", "follow-up"), row.reason
    t = desk.ticket("SD-1")
    assert t.state == "new"
    assert t.messages[-1].kind == "follow-up"
    assert "#status closed" in t.messages[-1].body_text and "Dank u" in t.messages[-1].body_text
    assert desk.events("SD-1", "ticket.state") == []
    assert _rows(desk, "command-refused") == []
    assert "#status closed" in _body(desk.outbox(agents=True)[-1])


# --- 9. two agents on one ticket --------------------------------------------------------------


def test_two_agents_answering_are_both_relayed_in_order(desk: DeskHarness) -> None:
    _add_agent(desk.app)
    ack, notice = _new_ticket(desk)
    desk.receive(_answer(notice, "Eerste antwoord: we kijken ernaar."))
    first_at = desk.ticket("SD-1").first_response_at
    desk.receive(_answer(notice, "Tweede antwoord: het is opgelost.", sender=BEA,
                         name="Bea Agent"))
    [_ack, one, two] = desk.outbox()
    assert "Eerste antwoord" in _body(one) and "Tweede antwoord" in _body(two)
    assert "Alex Agent" in one["From"].addresses[0].display_name
    assert "Bea Agent" in two["From"].addresses[0].display_name
    assert {m["From"].addresses[0].addr_spec for m in (one, two)} == {DESK}
    assert all(_leaks(r.raw) == [] for r in _editor_rows(desk))
    assert ack["Message-ID"] in two["References"].split()
    assert desk.ticket("SD-1").first_response_at == first_at, "the first answer counts"
    copies = _rows(desk, "answer-copy")
    assert [c.recipients for c in copies] == [BEA, AGENT]


# --- 10. a bouncing agent -------------------------------------------------------------------


def _dsn(failed: str, original_id: str, subject: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mx.desk.example\r\n"
        f"To: {DESK}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-agent@mx.desk.example>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nMailbox unknown.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.desk.example\r\n\r\n"
        f"Final-Recipient: rfc822; {failed}\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: Test Desk <{DESK}>\r\nTo: {failed}\r\nSubject: {subject}\r\n"
        f"Message-ID: {original_id}\r\n\r\n--B--\r\n").encode()


def test_bounce_of_a_notification_is_recorded_and_answered_by_nobody(
        desk: DeskHarness) -> None:
    _ack, notice = _new_ticket(desk)
    rows_before = len(desk.outbox_rows())
    row = desk.receive(_dsn(AGENT, notice["Message-ID"], notice["Subject"]))
    assert row.kind == "bounce", row.reason
    with desk.app.sessions() as s:
        sent = s.execute(select(Outbox).where(
            Outbox.message_id == notice["Message-ID"])).scalar_one()
        assert (sent.kind, sent.status, sent.dsn_status) == ("notify", "failed", "5.1.1")
        flag = s.get(BouncingAddress, AGENT)
        assert flag is not None and flag.last_status == "5.1.1"
    assert len(desk.outbox_rows()) == rows_before, "no mail about a bounce of an agents' mail"
    assert desk.ticket("SD-1").messages[-1].kind == "bounce"
    assert desk.ticket("SD-1").state == "new"


# --- 11. out-of-office ----------------------------------------------------------------------


def test_out_of_office_is_listed_in_the_next_notification(desk: DeskHarness) -> None:
    ack, _notice = _new_ticket(desk)
    ooo = make_mail(EDITOR, "Automatisch antwoord: [SD-1] Menu weg",
                    "Ik ben afwezig tot maandag.\nMet vriendelijke groeten",
                    headers={"Auto-Submitted": "auto-replied",
                             "In-Reply-To": ack["Message-ID"],
                             "References": ack["Message-ID"]})
    row = desk.receive(ooo)
    assert (row.status, row.kind) == ("ticket", "auto-reply"), row.reason
    assert len(desk.outbox(agents=True)) == 1, "an out-of-office notifies nobody"
    assert len(desk.outbox()) == 1

    def follow_up(text: str) -> str:
        desk.receive(make_mail(EDITOR, "Re: [SD-1] Menu weg", text,
                               headers={"In-Reply-To": ack["Message-ID"]}))
        return _body(desk.outbox(agents=True)[-1])

    body = follow_up("Ik ben terug, het menu is nog altijd weg.")
    listed = [ln for ln in body.splitlines() if "Ik ben afwezig tot maandag." in ln]
    assert len(listed) == 1 and EDITOR in listed[0], body
    again = follow_up("En nu ook het logo.")
    assert "Ik ben afwezig tot maandag." not in again, "listed once, not in every notice"


# --- end to end over SMTP -------------------------------------------------------------------


def test_screenshot_to_agent_and_answer_to_editor_over_smtp(app: App, sink: SmtpSink) -> None:
    register_more(app)
    d = RunningDaemon(app).start()

    def to(address: str, count: int) -> list[tuple[EmailMessage, bytes]]:
        def check() -> list[tuple[EmailMessage, bytes]]:
            with sink.handler.cond:
                got = [(r.message, r.raw) for r in sink.handler.received
                       if address in str(r.message["To"])]
            return got if len(got) >= count else []
        return until(check, what=f"{count} mails to {address}")
    try:
        send(d.port, _with_png(make_mail(EDITOR, "Menu weg", sender_name="Eva Editor")))
        [(ack, _)] = to(EDITOR, 1)
        [(notice, _)] = to(AGENT, 1)
        assert notice["Reply-To"] == DESK and notice["Subject"] == "[SD-1] Menu weg"
        assert _body(notice).splitlines()[0] == MARKER
        assert _png_parts(notice) == [PNG]
        quoted = _quoted(notice)
        send(d.port, _answer(notice, "Het menu staat terug online.\n\n"
                                     f"Alex Agent | {AGENT}\n\n{quoted}"))
        reply, raw = to(EDITOR, 2)[1]
        assert _leaks(raw) == []
        assert reply["From"].addresses[0].addr_spec == DESK
        assert "Alex Agent" in reply["From"].addresses[0].display_name
        assert reply["Subject"] == "[SD-1] Menu weg"
        assert ack["Message-ID"] in reply["References"].split()
        assert "Het menu staat terug online." in _body(reply)

        def settled() -> bool:
            with app.sessions() as s:
                rows = list(s.execute(select(Inbound.status)).scalars())
            return len(rows) == 2 and "pending" not in rows
        until(settled, what="both mails processed")
        t = DeskHarness(app).ticket("SD-1")
        assert t.state == "open" and t.first_response_at is not None
    finally:
        d.stop()

