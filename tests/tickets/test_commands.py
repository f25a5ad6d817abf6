from __future__ import annotations

import pytest

from mailgate.tickets.commands import CommandError, parse_command
from mailgate.tickets.states import State


def test_plain_text_is_no_command() -> None:
    assert parse_command("Het menu staat terug online.\n#1 oorzaak: cache") is None


def test_note_and_status() -> None:
    c = parse_command("#note\n#status resolved\nCache geleegd.")
    assert c is not None and c.note and c.state == State.RESOLVED
    assert c.text == "Cache geleegd."
    c = parse_command("  #close\nOpgelost, we sluiten af.")
    assert c is not None and not c.note and c.state == State.CLOSED
    assert c.text == "Opgelost, we sluiten af."


def test_bad_status_is_refused_with_the_choices() -> None:
    with pytest.raises(CommandError, match="use one of"):
        parse_command("#status done")
