"""Loops (issue 11, item 12): auto-responders answering each other through the desk.

tests/tickets/test_policy.py has one naive responder behind an editor's address. Here the
desk sits between several machines that answer every mail they get, for a bounded time:

- a **polite** one (RFC 3834: ``Auto-Submitted: auto-replied``, ``In-Reply-To``/``References``,
  ``X-Autoreply``, "Automatic reply:" subject) — but one that answers everything, even mail
  marked automatic, as many real out-of-office rules do;
- a **rude** one that strips every header and answers the From address with
  "Re: <subject>" and the same short text: nothing marks it automatic, and its subject keeps
  the ticket tag, so to the desk it looks like a person's follow-up.

They sit behind a registered editor and an agent each way round, and one rude responder
behind a stranger's address, so the desk relays between them: an editor's follow-up is told
to the agents, an agent's reply is relayed to the editor. Every outgoing mail reaches the
responders through the relay (an SMTP sink that routes by recipient). After the run the
traffic must have stopped by itself, and the number of mails stays under a bound derived
from the configured brakes (printed).
"""

from __future__ import annotations

import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from sqlalchemy import func, select

from mailgate.app import App
from mailgate.db.engine import transaction
from mailgate.db.migrate import upgrade
from mailgate.db.models import Inbound, Outbox
from mailgate.tickets import registry
from mailgate.tickets.autoanswer import SAME_TEXT_PER_HOUR
from tests.support.desk import DESK, EDITOR, RunningDaemon, SettingsFactory, register_demo
from tests.support.sink import SmtpSink
from tests.support.wait import until

POLITE_EDITOR = EDITOR
RUDE_EDITOR = "rik@site5678.example.be"
POLITE_AGENT = "paula@agents.example"
RUDE_AGENTS = ("robbie@agents.example", "rita@agents.example")
RUDE_STRANGER = "info@elsewhere.example"
POLITE = {POLITE_EDITOR, POLITE_AGENT}
RUDE = {RUDE_EDITOR, *RUDE_AGENTS, RUDE_STRANGER}

RUN_SECONDS = 20.0
QUIET_SECONDS = 3.0  # no mail either way for this long: the loop has stopped
ACKS_PER_HOUR = 10
AUTO_REPLIES_PER_HOUR = 3


def polite_answer(got: EmailMessage, me: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = me
    msg["To"] = str(got["Reply-To"] or got["From"])
    msg["Subject"] = f"Automatic reply: {got['Subject']}"
    msg["Message-ID"] = make_msgid(domain=me.split("@")[1])
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Autoreply"] = "yes"
    if got["Message-ID"]:
        msg["In-Reply-To"] = str(got["Message-ID"])
        msg["References"] = str(got["Message-ID"])
    msg.set_content("I am out of the office until further notice.\n")
    return msg


def rude_answer(got: EmailMessage, me: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = me
    msg["To"] = parseaddr(str(got["From"]))[1]
    msg["Subject"] = f"Re: {got['Subject']}"
    # What its MTA adds to a mail without them (Postfix's cleanup does): without these the
    # desk's dedup would take each repeat for the same mail again and end the loop itself.
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="mta.example")
    msg.set_content("Thank you for your message. We will get back to you.\n")
    return msg


@dataclass
class Machines:
    """Reads every mail the relay got and lets the responder behind each recipient answer
    it, through the desk's own listener, until stopped."""

    sink: SmtpSink
    port: int
    answered: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    last_mail_at: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen = 0
        while not self.stop.is_set():
            with self.sink.handler.cond:
                received = list(self.sink.handler.received[seen:])
            seen += len(received)
            if not received:
                time.sleep(0.05)
                continue
            self.last_mail_at = time.monotonic()
            for r in received:
                for rcpt in r.rcpt_tos:
                    rcpt = rcpt.lower()
                    if rcpt in POLITE:
                        self._send(polite_answer(r.message, rcpt))
                    elif rcpt in RUDE:
                        self._send(rude_answer(r.message, rcpt))

    def _send(self, msg: EmailMessage) -> None:
        self.answered[str(msg["From"])] += 1
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException):
            pass  # refused by the listener: not the desk's answer either

    def quiet_for(self) -> float:
        return time.monotonic() - self.last_mail_at


def _register(app: App) -> None:
    register_demo(app)
    with transaction(app.sessions) as session:
        now = app.clock.now()
        registry.add_site(session, "5678", "Other site", now)
        registry.add_editor(session, "5678", RUDE_EDITOR, now, name="Rik")
        registry.add_agent(session, POLITE_AGENT, now, name="Paula")
        for agent in RUDE_AGENTS:
            registry.add_agent(session, agent, now, name=agent.split("@")[0].title())


def _first(sender: str, subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = DESK
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="start.example")
    msg.set_content("The contact form of site 1234 gives error 500.\n")
    return msg


def test_auto_responders_through_the_desk_stop_by_themselves(
        make_settings: SettingsFactory, sink: SmtpSink) -> None:
    app = App(make_settings(access={"acks_per_hour": ACKS_PER_HOUR,
                                    "auto_replies_per_hour": AUTO_REPLIES_PER_HOUR}))
    upgrade(app.engine)
    _register(app)
    d = RunningDaemon(app).start()
    machines = Machines(sink, d.port)
    started = time.monotonic()
    try:
        machines.start()
        for sender, subject in ((POLITE_EDITOR, "Site 1234: form broken"),
                                (RUDE_EDITOR, "Site 5678: menu gone"),
                                (RUDE_STRANGER, "Your offer")):
            with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as smtp:
                smtp.send_message(_first(sender, subject))
        # Run for a bounded time, or less once nothing has moved for QUIET_SECONDS.
        until(lambda: machines.quiet_for() > QUIET_SECONDS
              or time.monotonic() - started > RUN_SECONDS, timeout=RUN_SECONDS + 5,
              interval=0.2, what="the run")
        stopped_by_itself = machines.quiet_for() > QUIET_SECONDS
        ran = time.monotonic() - started
    finally:
        machines.stop.set()
        if machines.thread:
            machines.thread.join(10)
        d.stop()
    with app.sessions() as s:
        received = s.execute(select(func.count()).select_from(Inbound)).scalar_one()
        sent_by_kind: dict[str, Any] = dict(s.execute(
            select(Outbox.kind, func.count()).group_by(Outbox.kind)).all())
    app.close()
    sent = sum(sent_by_kind.values())
    print(f"\nloop run {ran:.1f}s: the desk received {received} mails and sent {sent} "
          f"({dict(sorted(sent_by_kind.items()))}); the machines answered "
          f"{dict(machines.answered)}; stopped by itself: {stopped_by_itself}")
    assert stopped_by_itself, "the mail still went round when the run ended"
    # The bound, from the brakes. The stranger: at most auto_replies_per_hour refusals. Per
    # ticket (one per editor's first mail): its acknowledgement; the agents told of the new
    # ticket and of at most SAME_TEXT_PER_HOUR follow-ups with one text; and per rude agent
    # at most SAME_TEXT_PER_HOUR answers with one text relayed, each one mail to the editor
    # and one copy to the other agents. (acks_per_hour is the ceiling for an editor whose
    # machine varies its text.)
    n = SAME_TEXT_PER_HOUR
    per_ticket = 1 + (1 + n) + len(RUDE_AGENTS) * n * 2
    bound = AUTO_REPLIES_PER_HOUR + 2 * per_ticket
    assert sent_by_kind.get("refusal", 0) <= AUTO_REPLIES_PER_HOUR
    assert sent <= bound, (sent, bound)
    print(f"bound from the brakes: {bound} mails")
