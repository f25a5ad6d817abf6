"""Builders for test mails and a real SMTP client to send them."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import make_msgid


def make_mail(sender: str, subject: str, body: str = "", *, to: str = "servicedesk@desk.example",
              message_id: str | None = None, headers: dict[str, str] | None = None,
              sender_name: str = "") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{sender_name} <{sender}>" if sender_name else sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="client.example")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body or "Het formulier op https://www.site1234.example.be/contact geeft "
                            "een fout 500 bij het verzenden.\nEva, 0470 12 34 56")
    return msg


def wire(msg: EmailMessage) -> bytes:
    """The bytes a real MTA would send: CRLF line ends."""
    return msg.as_bytes(policy=SMTP)


def send(port: int, msg: EmailMessage | bytes, *, mail_from: str | None = None,
         rcpt: list[str] | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        if isinstance(msg, bytes):
            smtp.sendmail(mail_from or "sender@client.example",
                          rcpt or ["servicedesk@desk.example"], msg)
        else:
            smtp.send_message(msg, from_addr=mail_from, to_addrs=rcpt)


def body(msg: EmailMessage) -> str:
    """The text/plain part of a built mail (plain, or inside multipart/alternative or mixed),
    as a format=flowed-aware reader shows it: soft-wrapped lines joined again."""
    from mailgate.outbound.compose import unflow

    part = msg.get_body(("plain",))
    assert part is not None, "no text/plain part"
    text = part.get_content()
    assert isinstance(text, str)
    if str(part.get_param("format", "")).lower() == "flowed":
        text = unflow(text)
    return text
