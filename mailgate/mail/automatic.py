"""PLACEHOLDER (interface only) until the full detector lands: see the issue on classification."""

from __future__ import annotations

from dataclasses import dataclass

from mailgate.mail.parse import ParsedMail


@dataclass(frozen=True)
class Automatic:
    kind: str
    evidence: str
    dsn_status: str = ""
    failed_recipients: tuple[str, ...] = ()
    original_message_ids: tuple[str, ...] = ()


def detect(mail: ParsedMail) -> Automatic | None:
    auto = mail.header("auto-submitted").lower()
    if mail.content_type == "multipart/report" or mail.from_addr.startswith("mailer-daemon@"):
        return Automatic("bounce", "report")
    if auto and auto != "no":
        return Automatic("auto-reply", f"Auto-Submitted: {auto}")
    if mail.header("list-id") or mail.header("precedence").lower() in ("bulk", "list", "junk"):
        return Automatic("bulk", "list headers")
    return None
