from __future__ import annotations

from mailgate.mail.attachments import display_name


def test_names_are_sanitised() -> None:
    assert display_name("../../etc/passwd", "text/plain") == "passwd"
    assert display_name("C:\\Users\\x\\shot.png", "image/png") == "shot.png"
    assert display_name("a\x00b<c>.txt", "text/plain") == "a_b_c_.txt"
    assert display_name("", "image/png") == "attachment.png"
    assert display_name("...", "application/pdf") == "attachment.pdf"
    long = display_name("x" * 300 + ".pdf", "application/pdf")
    assert len(long) <= 120 and long.endswith(".pdf")
