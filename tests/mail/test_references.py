from __future__ import annotations

import pytest

from mailgate.mail.references import MessageIds, TicketRef, find_tag, strip_prefixes


@pytest.mark.parametrize("subject", [
    "[SD-12] Menu", "Re: [SD-12] Menu", "RE: AW: Antw: [SD-12] Menu", "TR: [sd-12] Menu",
    "Fwd: WG: Doorst: [SD-12] Menu", "RE[2]: [SD-12] Menu", "Menu [SD-12]",
    "Re(3): SV: [ SD-12 ] Menu",
])
def test_tag_found_anywhere_after_any_prefixes(subject: str) -> None:
    assert find_tag("SD", subject) == TicketRef("SD", 12)


@pytest.mark.parametrize("subject", ["SD-12 Menu", "[SD12] Menu", "[XX-12] Menu", "[SD-] x"])
def test_no_tag(subject: str) -> None:
    assert find_tag("SD", subject) is None


def test_strip_prefixes() -> None:
    assert strip_prefixes("RE: AW: Antw: [SD-3] Re: Menu weg", "SD") == "Menu weg"
    assert strip_prefixes("RE[2]: TR: Fwd: Doorst: WG: Formulier", "SD") == "Formulier"
    assert strip_prefixes("Reactie op artikel") == "Reactie op artikel"


def test_signed_message_ids() -> None:
    ids = MessageIds("k" * 32, "desk.example", "SD")
    mid = ids.make(TicketRef("SD", 7))
    assert ids.verify(mid) == TicketRef("SD", 7)
    assert ids.find(("<other@x>", mid)) == TicketRef("SD", 7)
    # Another number with the same token, or another key: not trusted.
    assert ids.verify(mid.replace("SD-7.", "SD-8.")) is None
    assert MessageIds("z" * 32, "desk.example", "SD").verify(mid) is None
    assert ids.verify("<SD-7@desk.example>") is None
    assert ids.make(None) != ids.make(None)


def test_is_ours_only_for_our_exact_formats() -> None:
    ids = MessageIds("k" * 32, "desk.example", "SD")
    assert ids.is_ours(ids.make(TicketRef("SD", 3))) and ids.is_ours(ids.make(None))
    # An editor's own mail server may use the desk's domain too.
    assert not ids.is_ours("<CAF12345.abc@desk.example>")
