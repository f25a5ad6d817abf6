"""Command lines at the top of an agent's mail: syntax only (the database checks are in
tests/tickets/test_agents.py)."""

from __future__ import annotations

import pytest

from mailgate.tickets.commands import ACCEPTED, parse_command
from mailgate.tickets.states import State


def test_plain_text_is_no_command() -> None:
    assert parse_command("Het menu staat terug online.\n#1 oorzaak: cache") is None
    assert parse_command("#1 oorzaak: cache") is None  # a number, not a word


def test_note_and_status() -> None:
    c = parse_command("#note\n#status resolved\nCache geleegd.")
    assert c is not None and c.note and c.state == State.RESOLVED and not c.errors
    assert c.text == "Cache geleegd."
    c = parse_command("  #close\nOpgelost, we sluiten af.")
    assert c is not None and not c.note and c.state == State.CLOSED
    assert c.text == "Opgelost, we sluiten af."


@pytest.mark.parametrize(("line", "word", "arg"), [
    ("#resolve", "status", "resolved"), ("#reopen", "status", "open"),
    ("#wait", "status", "waiting"), ("#Status Waiting", "status", "waiting"),
    ("#priority URGENT", "priority", "urgent"), ("#assign me", "assign", "me"),
    ("#assign Alex@Desk.Example", "assign", "alex@desk.example"),
    ("#site 1234", "site", "1234"), ("#link [sd-12]", "link", "[SD-12]"),
    ("#requester Eva@Site.Example", "requester", "eva@site.example"),
])
def test_each_command(line: str, word: str, arg: str) -> None:
    c = parse_command(f"{line}\nrest")
    assert c is not None and not c.errors, c
    assert [(x.word, x.arg) for x in c.commands] == [(word, arg)]
    assert c.text == "rest"


@pytest.mark.parametrize(("line", "reason"), [
    ("#status done", "use one of open, waiting, resolved, closed"),
    ("#priority high", "use normal or urgent"),
    ("#assign alex", "agent's e-mail"),
    ("#site 12345", "4-digit"),
    ("#link twelve", "ticket number"),
    ("#requester nobody", "e-mail address"),
    ("#frobnicate", "unknown command #frobnicate"),
    ("#close now", "takes no argument"),
])
def test_wrong_lines_are_collected_with_a_reason(line: str, reason: str) -> None:
    c = parse_command(f"#note\n{line}\nText.")
    assert c is not None and [e.line for e in c.errors] == [line]
    assert reason in c.errors[0].reason
    assert [x.word for x in c.commands] == ["note"]


def test_every_command_is_listed_as_accepted() -> None:
    listed = " ".join(ACCEPTED)
    for word in ("note", "status", "resolve", "close", "reopen", "wait", "priority",
                 "assign", "site", "link", "requester"):
        assert f"#{word}" in listed
