"""The least a mail gateway in Python does per mail, as a yardstick for bench/mix.py's
end-to-end rate (``python -m bench.mix --floor``). Asserts nothing.

An aiosmtpd server (as the daemon's listener) that, for each mail, parses it with Python's own
``email`` exactly as the mix's baseline does (``policy.default``, every leaf's content), answers
250 and, for a new request, relays one acknowledgement to the sink over one smtplib connection
(``Re: [SD-n] subject``, In-Reply-To the request): no database, no ticket, no second mail
to the agents, no threading, no templates. Run in its own process, like the daemon, so it has a
core of its own beside the bench's clients and sink. Whatever rate the mix reaches against
this floor bounds what the desk's full path can reach on the same machine.

Usage (by bench.mix): ``python -m bench.floor --port P --relay-port R``.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import queue
import re
import signal
import smtplib
import threading
from email import policy
from typing import Any

from aiosmtpd.controller import Controller

DESK = "servicedesk@floor.example"
_LINE_BREAKS = re.compile(r"[\r\n]+")


class Floor:
    """The SMTP handler: parse, 250, queue the ack for the relay thread."""

    def __init__(self, out: queue.Queue[tuple[str, str, str] | None]) -> None:
        self.out = out

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=policy.default)
        for part in msg.walk():
            if not part.is_multipart():
                part.get_content()  # type: ignore[attr-defined]
        subject = _LINE_BREAKS.sub(" ", str(msg["Subject"] or ""))
        if "[SD-" not in subject:
            self.out.put((envelope.mail_from, str(msg["Message-ID"] or ""), subject))
        return "250 OK"


def relay(out: queue.Queue[tuple[str, str, str] | None], port: int) -> None:
    number = 0
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        while (item := out.get()) is not None:
            to, message_id, subject = item
            number += 1
            ack = (f"From: {DESK}\r\nTo: {to}\r\nSubject: Re: [SD-{number}] {subject}\r\n"
                   f"Message-ID: <ack.{number}@floor.example>\r\nIn-Reply-To: {message_id}\r\n"
                   f"References: {message_id}\r\n\r\nTicket SD-{number}.\r\n")
            smtp.sendmail(DESK, [to], ack.encode())


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.floor")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--relay-port", type=int, required=True)
    args = parser.parse_args()
    out: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
    sender = threading.Thread(target=relay, args=(out, args.relay_port), daemon=True)
    sender.start()
    controller = Controller(Floor(out), hostname="127.0.0.1", port=args.port,
                            data_size_limit=64 * 1024 * 1024)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        controller.stop()
        out.put(None)
        sender.join(5)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
