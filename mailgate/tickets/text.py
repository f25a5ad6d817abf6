"""What agents read of a mail."""

from __future__ import annotations

from mailgate.mail.parse import ParsedMail


def display_text(mail: ParsedMail) -> str:
    """The new part of the mail, quoted history stripped (the raw mail keeps the rest)."""
    return mail.new_text or mail.text
