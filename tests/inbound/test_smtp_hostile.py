"""Hostile and broken SMTP clients against the real listener (issue 11, item 9): header
injection, a thousand recipients, DATA cut short, slow clients, too many connections, bytes
that are not UTF-8 in every header, lines longer than 1,000 bytes, STARTTLS. A real smtplib
client or a raw socket on one side, the real daemon on the other, the acknowledgement at a
real SMTP sink; where something is stored, on SQLite and on PostgreSQL."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from select import select as wait_readable
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.app import App
from mailgate.db.migrate import upgrade
from mailgate.db.models import Inbound, Ticket
from tests.support.desk import DESK, EDITOR, RunningDaemon, SettingsFactory, register_demo
from tests.support.mails import make_mail, send, wire
from tests.support.sink import SmtpSink
from tests.support.tls import client_context, self_signed
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

# Tests that store nothing need one database only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

StartDaemon = Callable[..., RunningDaemon]


@pytest.fixture
def start_daemon(make_settings: SettingsFactory) -> Iterator[StartDaemon]:
    """Starts the real daemon with [smtp] overrides; stopped at the end of the test."""
    started: list[RunningDaemon] = []

    def start(**smtp: Any) -> RunningDaemon:
        app = App(make_settings(smtp=smtp))
        upgrade(app.engine)
        register_demo(app)
        started.append(RunningDaemon(app).start())
        return started[-1]

    yield start
    for d in started:
        d.stop()
        d.app.close()


def _inbound(app: App) -> list[Inbound]:
    with app.sessions() as s:
        return list(s.execute(select(Inbound).order_by(Inbound.id)).scalars())


def _processed(app: App, count: int) -> list[Inbound]:
    return until(lambda: (rows := _inbound(app)) and len(rows) == count
                 and all(r.status != "pending" for r in rows) and rows,
                 timeout=30, what=f"{count} processed mail(s)")


class Raw:
    """A raw SMTP client socket: says exactly what a test wants, reads the replies."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """One reply (all its lines); b"" when the server closed the connection."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                return b"".join(lines)
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def closed_by_server(self) -> bool:
        try:
            return self.file.read() == b""  # everything up to EOF
        except OSError:
            return True

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _begin_data(port: int) -> Raw:
    raw = Raw(port)
    assert raw.reply().startswith(b"220")
    assert raw.command(b"EHLO client.example").startswith(b"250")
    assert raw.command(f"MAIL FROM:<{EDITOR}>".encode()).startswith(b"250")
    assert raw.command(f"RCPT TO:<{DESK}>".encode()).startswith(b"250")
    assert raw.command(b"DATA").startswith(b"354")
    return raw


# --- header injection --------------------------------------------------------------------

INJECTING = (
    # Encoded words that decode to CR LF and a header of the attacker's choosing, in the
    # subject and in the display name (which the acknowledgement may greet by).
    b"From: =?utf-8?q?Eva=0D=0ABcc:_victim1@evil.example=0D=0AX-Injected:_name?=\r\n"
    b" <" + EDITOR.encode() + b">\r\n"
    b"To: servicedesk@desk.example\r\n"
    b"Subject: =?utf-8?q?Fout_500=0D=0ABcc:_victim2@evil.example=0D=0AX-Injected:_subject?=\r\n"
    b"Message-ID: <inject-1@client.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Het formulier op https://www.site1234.example.be/contact geeft een fout 500.\r\n"
)


def test_header_injection_never_reaches_the_acknowledgement(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    send(daemon.port, INJECTING, mail_from=EDITOR)
    [ack] = sink.wait_for(1)
    [received] = sink.handler.received
    assert received.rcpt_tos == [EDITOR], "no recipient added by the mail's headers"
    head = received.raw.split(b"\r\n\r\n", 1)[0]
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")
             if line and line[:1] not in (b" ", b"\t")]
    assert b"bcc" not in names and b"x-injected" not in names, head
    assert names.count(b"subject") == 1 and names.count(b"to") == 1
    assert b"\r" not in head.replace(b"\r\n", b""), "no bare CR in the header block"
    assert b"\n" not in head.replace(b"\r\n", b""), "no bare LF in the header block"
    subject = str(ack["Subject"])
    assert subject.startswith("[SD-1] ") and "\r" not in subject and "\n" not in subject
    assert ack["To"] == EDITOR
    assert "victim" not in str(ack["To"]) and ack["Cc"] is None and ack["Bcc"] is None


# --- recipients ----------------------------------------------------------------------------

def test_a_thousand_recipients_are_answered_one_by_one(start_daemon: StartDaemon) -> None:
    d = start_daemon(max_recipients=5)
    codes: dict[str, list[int]] = {"desk": [], "other": []}
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as smtp:
        smtp.ehlo()
        assert smtp.mail(EDITOR)[0] == 250
        for i in range(1000):
            if i % 2:
                codes["other"].append(smtp.rcpt(f"victim{i}@elsewhere.example")[0])
            else:
                address = DESK if i % 4 == 0 else "ServiceDesk@DESK.example"
                codes["desk"].append(smtp.rcpt(address)[0])
        code, reply = smtp.data(wire(make_mail(EDITOR, "Aan velen")))
        assert code == 250, reply
    # The first five desk addresses, then 452 "too many" (RFC 5321 §4.5.3.1.10: the client
    # sends the rest later); never another domain's: no open relay.
    assert codes["desk"] == [250] * 5 + [452] * 495
    assert set(codes["other"]) == {550}
    [row] = _inbound(d.app)
    assert row.envelope_to.count("@") == 5 and "elsewhere" not in row.envelope_to


# --- DATA cut short ----------------------------------------------------------------------

@pytest.mark.parametrize("cut", ["mid-line", "after a line", "after the dot line's CR"])
def test_a_connection_lost_mid_data_stores_nothing(
        daemon: RunningDaemon, sink: SmtpSink, cut: str) -> None:
    mail = wire(make_mail(EDITOR, "Half verstuurd"))
    raw = _begin_data(daemon.port)
    part = {"mid-line": mail[: len(mail) // 2],
            "after a line": mail,
            "after the dot line's CR": mail + b".\r"}[cut]
    raw.sock.sendall(part)
    raw.close()
    send(daemon.port, make_mail(EDITOR, "Daarna, heel"))
    [ack] = sink.wait_for(1)
    assert ack["Subject"] == "[SD-1] Daarna, heel"
    [row] = _processed(daemon.app, 1)
    assert b"Daarna, heel" in row.raw
    with daemon.app.sessions() as s:
        assert [t.subject for t in s.execute(select(Ticket)).scalars()] == ["Daarna, heel"]


# --- slow clients ----------------------------------------------------------------------------

@sqlite_only
def test_an_idle_client_hears_421_after_the_timeout(start_daemon: StartDaemon) -> None:
    d = start_daemon(timeout_seconds=1)
    raw = Raw(d.port)
    assert raw.reply().startswith(b"220")
    started = time.monotonic()
    # Half a command, then nothing: a slowloris never finishes its line.
    raw.sock.sendall(b"EHLO slow")
    assert raw.reply().startswith(b"421 4.4.2")
    assert raw.closed_by_server()
    assert 0.8 < time.monotonic() - started < 5


def test_a_slow_data_is_cut_and_nothing_is_stored(
        start_daemon: StartDaemon, sink: SmtpSink) -> None:
    d = start_daemon(timeout_seconds=1.5)
    raw = _begin_data(d.port)
    started = time.monotonic()
    reply = b""
    # A line every 0.3 s: each arrives in time, but the whole DATA takes longer than allowed.
    for i in range(20):
        raw.sock.sendall(b"Subject: traag\r\n" if i == 0 else b"nog een regel\r\n")
        readable, _, _ = wait_readable([raw.sock], [], [], 0.3)
        if readable:
            reply = raw.reply()
            break
    assert reply.startswith(b"421 4.4.2"), reply
    assert time.monotonic() - started < 5
    raw.close()
    send(d.port, make_mail(EDITOR, "Snel genoeg"))
    sink.wait_for(1)
    [row] = _processed(d.app, 1)
    assert b"Snel genoeg" in row.raw


# --- too many connections ------------------------------------------------------------------

@sqlite_only
def test_one_connection_more_than_max_connections_hears_421(start_daemon: StartDaemon) -> None:
    d = start_daemon(max_connections=3)
    open_ = [Raw(d.port) for _ in range(3)]
    for c in open_:
        assert c.reply().startswith(b"220")
    extra = Raw(d.port)
    assert extra.reply().startswith(b"421 4.7.0")
    assert extra.closed_by_server()
    extra.close()
    # The three still work; once one leaves, a newcomer is served.
    assert open_[0].command(b"NOOP").startswith(b"250")
    assert open_[2].command(b"QUIT").startswith(b"221")
    open_[2].close()
    until(lambda: len(d.daemon.listener.sessions) == 2 if d.daemon.listener else False,
          what="the session to end")
    again = Raw(d.port)
    assert again.reply().startswith(b"220")
    for c in (*open_[:2], again):
        c.close()


# --- bytes that are not UTF-8 --------------------------------------------------------------

LATIN1 = "Café Müller – Größe".encode("latin-1", "replace")  # é ü ö ß as single bytes
GBK = "网站错误".encode("gbk")
EIGHT_BIT = (
    b"Received: from relay.client.example (h\xe9te.example) by mx.client.example\r\n"
    b"From: " + LATIN1 + b" <" + EDITOR.encode() + b">\r\n"
    b"To: Servi\xe7e D\xe9sk <servicedesk@desk.example>\r\n"
    b"Cc: " + GBK + b" <someone@client.example>\r\n"
    b"Subject: Fout 500 op de pagina " + LATIN1 + b" " + GBK + b"\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0100 (Mitteleurop\xe4ische Zeit)\r\n"
    b"Message-ID: <8bit-\xe9@client.example>\r\n"
    b"X-Mailer: Outl\xf6\xf6k \xff\xfe\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n"
    b"Het formulier geeft fout 500 op https://www.site1234.example.be/contact \xe9\xe8.\r\n"
)


def test_non_utf8_bytes_in_every_header_are_stored_and_processed(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    send(daemon.port, EIGHT_BIT, mail_from=EDITOR)
    # From's address is ASCII: the mail becomes a ticket, answered.
    [ack] = sink.wait_for(1)
    [row] = _processed(daemon.app, 1)
    assert row.raw == EIGHT_BIT, "stored byte for byte as it came"
    assert row.status == "ticket", row.reason
    subject = str(ack["Subject"])
    assert subject.startswith("[SD-1] Fout 500 op de pagina")


def test_a_sender_address_that_is_not_utf8_is_kept_with_a_reason(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    mail = (b"From: J\xe9r\xf4me <j\xe9r\xf4me@client.example>\r\n"
            b"To: servicedesk@desk.example\r\n"
            b"Subject: \xe9\xe9n vraag\r\n"
            b"Message-ID: <8bit-from@client.example>\r\n"
            b"\r\n"
            b"tekst\r\n")
    # The envelope too: aiosmtpd hands it on with surrogate escapes, which no database
    # driver encodes; answered 451 it would be retried until the sender gave up.
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.command_encoding = "latin-1"  # the raw bytes \xe9 and \xf4, as an old client
        code, _ = smtp.docmd("MAIL", "FROM:<j\xe9r\xf4me@client.example>")
        assert code == 250
        assert smtp.rcpt(DESK)[0] == 250
        code, reply = smtp.data(mail)
        assert code == 250, reply
    [row] = _processed(daemon.app, 1)
    assert row.raw == mail
    # No usable sender (an address is never guessed): kept with the reason, nothing sent.
    assert row.status in ("ignored", "quarantined"), (row.status, row.reason)
    assert "sender" in row.reason
    assert "\ufffd" in row.envelope_from, "the envelope as it came, made storable"
    # The listener and the worker go on; the only mail sent is the next one's ack (the
    # outbox sends oldest first: an answer to the first would have come before it).
    send(daemon.port, make_mail(EDITOR, "Daarna"))
    [ack] = sink.wait_for(1)
    assert ack["Subject"] == "[SD-1] Daarna"
    time.sleep(0.5)
    assert len(sink.handler.received) == 1


# --- long lines ------------------------------------------------------------------------------

def _long_line_mail(length: int) -> bytes:
    line = b"x" * (length - 6) + b" einde"
    return (b"From: Eva Editor <" + EDITOR.encode() + b">\r\n"
            b"To: servicedesk@desk.example\r\n"
            b"Subject: Script zonder regeleinden\r\n"
            b"Message-ID: <long-" + str(length).encode() + b"@client.example>\r\n"
            b"\r\n"
            b"Fout 500 op https://www.site1234.example.be/contact, log hieronder:\r\n"
            + line + b"\r\n"
            b".punt aan het begin\r\n"
            b".\r\n"  # a lone dot inside the mail: sent as "..", stored as it was
            b"..twee\r\n")


def test_lines_longer_than_1000_bytes_are_stored_as_they_came(
        daemon: RunningDaemon, sink: SmtpSink) -> None:
    mail = _long_line_mail(60_000)
    started = time.monotonic()
    send(daemon.port, mail, mail_from=EDITOR)  # smtplib stuffs the dot; the store unstuffs
    [ack] = sink.wait_for(1, timeout=30)
    print(f"acknowledged after {time.monotonic() - started:.2f} s")
    [row] = _processed(daemon.app, 1)
    assert row.raw == mail
    assert row.status == "ticket"
    assert ack["Subject"] == "[SD-1] Script zonder regeleinden"


@sqlite_only
def test_a_line_longer_than_max_line_length_is_refused_and_the_session_goes_on(
        start_daemon: StartDaemon) -> None:
    d = start_daemon(max_line_length=2000)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail(EDITOR)
        smtp.rcpt(DESK)
        code, reply = smtp.data(_long_line_mail(2500))
        assert (code, reply[:5]) == (500, b"5.5.2"), reply
        # Still in step: the next mail of the same session is taken.
        smtp.mail(EDITOR)
        smtp.rcpt(DESK)
        assert smtp.data(_long_line_mail(1990))[0] == 250
    [row] = _inbound(d.app)
    assert row.raw == _long_line_mail(1990)


# --- STARTTLS --------------------------------------------------------------------------------

def test_starttls_with_a_configured_certificate(
        start_daemon: StartDaemon, sink: SmtpSink, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    d = start_daemon(tls_cert=str(cert), tls_key=str(key))
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        code, _ = smtp.starttls(context=client_context(cert))
        assert code == 220
        assert isinstance(smtp.sock, __import__("ssl").SSLSocket)
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")
        smtp.ehlo()
        assert not smtp.has_extn("starttls"), "offered once"
        smtp.send_message(make_mail(EDITOR, "Over TLS"))
    [ack] = sink.wait_for(1)
    assert ack["Subject"] == "[SD-1] Over TLS"


@sqlite_only
def test_require_tls_refuses_mail_before_starttls(
        start_daemon: StartDaemon, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "tls")
    d = start_daemon(tls_cert=str(cert), tls_key=str(key), require_tls=True)
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as smtp:
        smtp.ehlo()
        code, reply = smtp.mail(EDITOR)
        assert (code, reply[:5]) == (530, b"5.7.0")
        assert smtp.rcpt(DESK)[0] == 503, "no transaction was started"
        smtp.rset()
        smtp.starttls(context=client_context(cert))
        smtp.ehlo()
        assert smtp.mail(EDITOR)[0] == 250
        assert smtp.rcpt(DESK)[0] == 250
        assert smtp.data(wire(make_mail(EDITOR, "Nu wel")))[0] == 250
    assert len(_inbound(d.app)) == 1


@sqlite_only
def test_without_tls_configured_starttls_is_not_offered(daemon: RunningDaemon) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        code, _ = smtp.docmd("STARTTLS")
        assert code in (454, 502)

