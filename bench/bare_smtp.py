"""The baseline for bench/ingest.py: a bare aiosmtpd server whose handler only answers 250.

It is built like mailgate's listener (same ``SMTP`` class and options, the same line limit,
``loop.create_server``) so the ratio mailgate / bare measures what mailgate adds to the
protocol, nothing else.

    python bench/bare_smtp.py --port 2526        # runs until SIGTERM / SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


class BareSMTP(SMTP):
    """aiosmtpd's SMTP with mailgate's line limit (``[smtp] max_line_length``), which also
    sizes the stream reader's buffer: the same reading as the listener's."""

    def __init__(self, handler: object, max_line_length: int, **kwargs: Any) -> None:
        self.line_length_limit = max_line_length + 1
        super().__init__(handler, **kwargs)


class BareHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


async def serve(host: str, port: int, max_size: int, max_line_length: int) -> None:
    loop = asyncio.get_running_loop()
    handler = BareHandler()
    hostname = socket.getfqdn()
    server = await loop.create_server(
        lambda: BareSMTP(handler, max_line_length, data_size_limit=max_size,
                         hostname=hostname, enable_SMTPUTF8=True, decode_data=False,
                         ident="bare ESMTP"),
        host=host, port=port, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-message-size", type=int, default=25 * 1024 * 1024)
    parser.add_argument("--max-line-length", type=int, default=64 * 1024)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.max_message_size, args.max_line_length))


if __name__ == "__main__":
    main()
