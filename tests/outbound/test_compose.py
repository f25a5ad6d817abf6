from __future__ import annotations

import email
from email import policy

import pytest

from mailgate.outbound.compose import Outgoing, build


def _out(**kw: object) -> Outgoing:
    base: dict[str, object] = dict(from_name="Desk", from_addr="desk@x.example",
                                   to=("eva@y.example",), subject="s", body="b",
                                   message_id="<m1@x.example>")
    base.update(kw)
    return Outgoing(**base)  # type: ignore[arg-type]


def test_subject_and_name_cannot_inject_headers() -> None:
    raw = build(_out(subject="Hallo\r\nBcc: victim@z.example", from_name="Desk\nX-Evil: 1"))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert "Bcc: victim" in msg["Subject"]


def test_unchecked_addresses_are_refused() -> None:
    with pytest.raises(ValueError):
        build(_out(to=("eva@y.example>\r\nBcc: v@z.example",)))


def test_references_keep_only_well_formed_ids() -> None:
    raw = build(_out(references=("<a@x>", "bad id", "<b@x>")))
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert msg["References"] == "<a@x> <b@x>"
