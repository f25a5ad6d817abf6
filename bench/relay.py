"""The sender's relay connection with and without PIPELINING (RFC 2920), the relay near
(loopback) and far (``--delay`` ms each way, through a proxy that holds every piece that
long, as a network would). Prints figures; asserts nothing.

Usage, from the repository root::

    .venv/bin/python -m bench.relay                    # 0, 1 and 5 ms each way
    .venv/bin/python -m bench.relay --delay 0 2 --mails 500 --rounds 3

The sender sends one mail after the other on one connection (mailgate/outbound/sender.py):
every round trip to the relay is time each acknowledgement behind it waits. Per delay and
round, interleaved: the same acknowledgement-sized mails (one recipient) sent through
``RelayTransport`` to an aiosmtpd sink (tests/support/sink.py) that does not offer
PIPELINING (the baseline: smtplib's MAIL, RCPT, DATA, content, each waiting for its answer)
and to one that does. Figures: mails/s of each, median over the rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import select
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mailgate.config import OutboundSettings  # noqa: E402
from mailgate.outbound.sender import WINDOW, RelayTransport  # noqa: E402
from tests.support.sink import SmtpSink  # noqa: E402

ACK = (b"From: Service Desk <servicedesk@desk.example>\r\nTo: eva@site1234.example.be\r\n"
       b"Subject: [SD-1042] Contactformulier kapot\r\nMessage-ID: <%d@desk.example>\r\n"
       b"Auto-Submitted: auto-replied\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
       + b"Uw melding is ontvangen onder nummer SD-1042.\r\n" * 30)


class DelayProxy:
    """Forwards each piece ``delay`` seconds after it arrived, in both directions: a
    one-way latency, not a per-command pause (pipelined commands share one delay)."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target, self.delay = ("127.0.0.1", target_port), delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            # The proxy plays the network, not an end: it holds nothing back (no Nagle).
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                pieces: queue.Queue[tuple[float, bytes]] = queue.Queue()
                threading.Thread(target=self._read, args=(a, pieces), daemon=True).start()
                threading.Thread(target=self._write, args=(b, pieces), daemon=True).start()

    @staticmethod
    def _read(src: socket.socket, pieces: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError, ValueError):
            while True:
                select.select([src], [], [])
                data = src.recv(65536)
                pieces.put((time.monotonic(), data))
                if not data:
                    return

    def _write(self, dst: socket.socket, pieces: queue.Queue[tuple[float, bytes]]) -> None:
        with contextlib.suppress(OSError):
            while True:
                at, data = pieces.get()
                time.sleep(max(0.0, at + self.delay - time.monotonic()))
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)

    def close(self) -> None:
        self._listener.close()


@contextlib.contextmanager
def relay(pipelining: bool, delay: float) -> Iterator[tuple[SmtpSink, int]]:
    sink = SmtpSink(pipelining).start()
    proxy = DelayProxy(sink.port, delay) if delay else None
    try:
        yield sink, proxy.port if proxy else sink.port
    finally:
        if proxy:
            proxy.close()
        sink.stop()


def run(pipelining: bool, delay: float, mails: int) -> float:
    with relay(pipelining, delay) as (sink, port):
        transport = RelayTransport(OutboundSettings(relay_host="127.0.0.1", relay_port=port,
                                                    timeout_seconds=30))
        start = time.perf_counter()
        with transport.batch():
            # As the sender hands them over: WINDOW mails at a time.
            for at in range(0, mails, WINDOW):
                outcomes = transport.send_many(
                    [("servicedesk@desk.example", ["eva@site1234.example.be"], ACK % i)
                     for i in range(at, min(at + WINDOW, mails))])
                assert all(o is None for o in outcomes), outcomes
        took = time.perf_counter() - start
        sink.wait_for(mails, timeout=30)
    return mails / took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, nargs="+", default=[0, 1, 5],
                        help="milliseconds each way (0: loopback, no proxy)")
    parser.add_argument("--mails", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"mailgate relay bench: {os.cpu_count()} CPU(s), load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.mails} mails per run, "
          f"median of {args.rounds} rounds")
    for delay_ms in args.delay:
        plain: list[float] = []
        piped: list[float] = []
        for _ in range(args.rounds):
            plain.append(run(False, delay_ms / 1000, args.mails))
            piped.append(run(True, delay_ms / 1000, args.mails))
        p, q = statistics.median(plain), statistics.median(piped)
        print(f"{delay_ms:4g} ms each way: without PIPELINING {p:7.1f} mails/s, with "
              f"{q:7.1f} mails/s: {q / p:.2f}x")
    print(f"load at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
