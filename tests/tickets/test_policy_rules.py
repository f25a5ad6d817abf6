"""Each classification rule alone, on hand-made facts: plain values, no database."""

from __future__ import annotations

from dataclasses import replace

from mailgate.mail.authenticity import Verdict
from mailgate.mail.automatic import Automatic
from mailgate.mail.parse import ParsedMail
from mailgate.tickets import policy as c
from mailgate.tickets.access import AgentInfo, EditorInfo, Sender
from mailgate.tickets.commands import parse_command

MAIL = ParsedMail(message_id="<m@x>", subject="s", from_addr="eva@x.example", from_name="",
                  to=(), cc=(), reply_to="", in_reply_to=(), references=(), text="t")
EDITOR = EditorInfo("eva@x.example", "1234")
AGENT = AgentInfo("alex@desk.example")
TICKET = c.TicketInfo(1, "SD-1", "open")
CLOSED = c.TicketInfo(1, "SD-1", "closed")
BASE = c.Facts(mail=MAIL, sender=Sender("eva@x.example", EDITOR, None), from_us=False,
               ticket=None, found_by="", may_write=False, accept_unknown=False)


def kind(facts: c.Facts) -> tuple[str, str, str]:
    d, _trail = c.classify(facts)
    return d.kind, d.action, d.rule


def test_loop_wins_over_everything() -> None:
    f = replace(BASE, from_us=True, automatic=Automatic("bounce", "x"), ticket=TICKET,
                may_write=True)
    assert c.loop(f) is not None and kind(f)[0] == "loop"
    assert c.loop(BASE) is None


def test_bounce() -> None:
    f = replace(BASE, automatic=Automatic("bounce", "multipart/report", dsn_status="5.1.1"))
    d = c.bounce(f)
    assert d is not None and d.action == "bounce" and "5.1.1" in d.reason
    assert c.bounce(replace(BASE, automatic=Automatic("auto-reply", "x"))) is None


def test_auto_reply_recorded_only_on_a_proven_ticket() -> None:
    ooo = Automatic("auto-reply", "Auto-Submitted: auto-replied")
    by_ref = c.auto_reply(replace(BASE, automatic=ooo, ticket=TICKET, found_by="references"))
    assert by_ref is not None and by_ref.action == "record"
    by_tag_stranger = c.auto_reply(replace(BASE, automatic=ooo, ticket=TICKET,
                                           found_by="subject tag", may_write=False))
    assert by_tag_stranger is not None and by_tag_stranger.action == "ignore"
    assert c.auto_reply(replace(BASE, automatic=ooo)).action == "ignore"  # type: ignore[union-attr]


def test_bulk() -> None:
    assert kind(replace(BASE, automatic=Automatic("bulk", "List-Id"))) == (
        "bulk", "ignore", "bulk")


def test_unverified_sender_gets_nothing() -> None:
    f = replace(BASE, authenticity=Verdict(False, "no signature"))
    assert kind(f) == ("unverified", "ignore", "unverified-sender")
    assert c.unverified(replace(BASE, authenticity=Verdict(True, "dkim"))) is None
    assert c.unverified(BASE) is None  # not required


def test_agent_reply_and_command() -> None:
    agent = Sender("alex@desk.example", None, AGENT)
    f = replace(BASE, sender=agent, ticket=TICKET, found_by="references", may_write=True)
    assert kind(f)[0] == "agent-reply"
    note = parse_command("#note\nx")
    assert kind(replace(f, command=note))[0] == "agent-command"
    # Without a ticket an agent's mail is a new request (a forward) ...
    assert c.agent_mail(replace(f, ticket=None)) is None
    # ... but a note needs a ticket, and a wrong line is refused, with or without one.
    for facts in (replace(f, ticket=None, command=note), replace(f, ticket=None, to_comment=True),
                  replace(f, command=parse_command("#status done"))):
        d = c.agent_mail(facts)
        assert d is not None and d.action == "refuse-command" and d.errors, facts


def test_an_editors_hash_lines_are_text() -> None:
    f = replace(BASE, ticket=TICKET, found_by="references", may_write=True)
    assert kind(f) == ("follow-up", "append", "follow-up")  # facts carry no command


def test_follow_up_and_after_close() -> None:
    f = replace(BASE, ticket=TICKET, found_by="subject tag", may_write=True)
    assert kind(f) == ("follow-up", "append", "follow-up")
    assert kind(replace(f, ticket=CLOSED)) == ("after-close", "create", "follow-up-on-closed")


def test_ticket_without_right_to_write_is_a_new_request_for_an_editor() -> None:
    d, _ = c.classify(replace(BASE, ticket=TICKET, found_by="subject tag", may_write=False))
    assert d.kind == "new-request" and d.ticket is None and "may not write" in d.reason


def test_unknown_sender_refused_or_accepted() -> None:
    stranger = replace(BASE, sender=Sender("x@y.example", None, None))
    assert kind(stranger) == ("stranger", "refuse", "unknown-sender-refused")
    assert kind(replace(stranger, accept_unknown=True))[2] == "unknown-sender-accepted"


def test_trail_names_every_rule_consulted() -> None:
    _d, trail = c.classify(replace(BASE, sender=Sender("x@y.example", None, None)))
    assert [t["rule"] for t in trail] == [name for name, _ in c.RULES]
    assert trail[-1]["result"] == "stranger/refuse"
