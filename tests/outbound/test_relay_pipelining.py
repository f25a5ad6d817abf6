"""The relay transport pipelines (RFC 2920) where the relay offers it, with smtplib's outcomes."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

import pytest

from mailgate.config import OutboundSettings
from mailgate.outbound.sender import PermanentFailure, RelayTransport
from tests.support.proxy import TcpProxy
from tests.support.sink import SmtpSink

RAW = (b"From: Desk <servicedesk@desk.example>\r\nTo: eva@site1234.example.be\r\n"
       b"Subject: [SD-1] Test\r\nMessage-ID: <1@desk.example>\r\n\r\n"
       b"Hallo\r\n.a line that starts with a dot\r\n")
EVA, JAN = "eva@site1234.example.be", "jan@site1234.example.be"


@pytest.fixture(params=[True, False], ids=["pipelining", "plain"])
def relay(request: pytest.FixtureRequest) -> Iterator[tuple[SmtpSink, TcpProxy]]:
    sink = SmtpSink(pipelining=request.param).start()
    proxy = TcpProxy("127.0.0.1", sink.port)
    yield sink, proxy
    proxy.close()
    sink.stop()


def _transport(proxy: TcpProxy) -> RelayTransport:
    return RelayTransport(OutboundSettings(relay_host="127.0.0.1", relay_port=proxy.port,
                                           timeout_seconds=5))


def _commands_in_one_piece(proxy: TcpProxy) -> bool:
    return any(b"MAIL FROM" in piece and b"DATA\r\n" in piece for piece in proxy.sent)


def test_mail_goes_out_whole_in_two_round_trips_where_offered(
        relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    transport = _transport(proxy)
    with transport.batch():
        transport.send("servicedesk@desk.example", [EVA, JAN], RAW)
        transport.send("servicedesk@desk.example", [EVA], RAW.replace(b"<1@", b"<2@"))
    got = sink.wait_for(2)
    assert [r.rcpt_tos for r in sink.handler.received] == [[EVA, JAN], [EVA]]
    assert sink.handler.received[0].raw.replace(b"\r\n", b"\n") == RAW.replace(b"\r\n", b"\n")
    assert got[1]["Message-ID"] == "<2@desk.example>"
    assert _commands_in_one_piece(proxy) == sink.handler.pipelining


def test_one_refused_recipient_does_not_stop_the_mail(relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    sink.handler.refuse[JAN] = "550 5.1.1 no such user"
    _transport(proxy).send("servicedesk@desk.example", [JAN, EVA], RAW)
    sink.wait_for(1)
    assert sink.handler.received[0].rcpt_tos == [EVA]


def test_all_recipients_refused_for_good_is_permanent_and_the_connection_goes_on(
        relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    sink.handler.refuse[JAN] = "550 5.1.1 no such user"
    transport = _transport(proxy)
    with transport.batch():
        with pytest.raises(PermanentFailure, match="recipients refused"):
            transport.send("servicedesk@desk.example", [JAN], RAW)
        transport.send("servicedesk@desk.example", [EVA], RAW)  # the same connection
    sink.wait_for(1)
    assert [r.rcpt_tos for r in sink.handler.received] == [[EVA]]


def test_a_refused_recipient_for_now_is_retried_later(relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    sink.handler.refuse[EVA] = "450 4.2.1 mailbox busy"
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        _transport(proxy).send("servicedesk@desk.example", [EVA], RAW)
    assert sink.handler.received == []


@pytest.mark.parametrize(("answer", "permanent"), [("554 5.7.1 rejected", True),
                                                   ("451 4.3.0 try later", False)])
def test_the_answer_to_the_content_decides(relay: tuple[SmtpSink, TcpProxy], answer: str,
                                           permanent: bool) -> None:
    sink, proxy = relay
    sink.handler.fail_with = [answer]
    transport = _transport(proxy)
    with transport.batch():
        with pytest.raises(PermanentFailure if permanent else smtplib.SMTPDataError):
            transport.send("servicedesk@desk.example", [EVA], RAW)
        transport.send("servicedesk@desk.example", [EVA], RAW)  # reset, then the next one
    assert len(sink.wait_for(1)) == 1


def test_what_follows_a_newline_in_an_address_never_reaches_the_relay(
        relay: tuple[SmtpSink, TcpProxy]) -> None:
    """Outbox addresses are checked before; here the transport alone, as smtplib does it."""
    sink, proxy = relay
    _transport(proxy).send("servicedesk@desk.example", [f"{EVA}>\r\nRCPT TO:<x@y.z"], RAW)
    sink.wait_for(1)
    assert sink.handler.received[0].rcpt_tos == [EVA]
    assert not any(b"x@y.z" in piece for piece in proxy.sent)


def _mails(n: int, to: str = EVA) -> list[tuple[str, list[str], bytes]]:
    return [("servicedesk@desk.example", [to], RAW.replace(b"<1@", f"<m{i}@".encode()))
            for i in range(n)]


def test_a_mails_content_goes_with_the_next_mails_commands(
        relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    transport = _transport(proxy)
    with transport.batch():
        assert transport.send_many(_mails(5)) == [None] * 5
    got = sink.wait_for(5)
    assert [m["Message-ID"] for m in got] == [f"<m{i}@desk.example>" for i in range(5)]
    together = [p for p in proxy.sent if b"\r\n.\r\nMAIL FROM" in p]
    # One round trip a mail where the relay offers PIPELINING: 4 of the 5 contents went
    # with the next mail's commands.
    assert len(together) == (4 if sink.handler.pipelining else 0)


def test_refusals_in_a_pipelined_run_are_each_mails_own(
        relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    sink.handler.refuse[JAN] = "550 5.1.1 no such user"
    sink.handler.fail_with = ["451 4.3.0 try later"]  # the first content's answer
    mails = _mails(5)
    mails[2] = ("servicedesk@desk.example", [JAN], mails[2][2])
    transport = _transport(proxy)
    with transport.batch():
        outcomes = transport.send_many(mails)
    assert isinstance(outcomes[0], smtplib.SMTPDataError)
    assert isinstance(outcomes[2], PermanentFailure)
    assert [o is None for o in outcomes] == [False, True, False, True, True]
    got = sink.wait_for(3)
    assert [m["Message-ID"] for m in got] == [f"<m{i}@desk.example>" for i in (1, 3, 4)]


def test_a_relay_that_goes_away_mid_run_ends_the_outcomes_there(
        relay: tuple[SmtpSink, TcpProxy]) -> None:
    sink, proxy = relay
    sink.handler.fail_with = ["250 ok", "421 4.3.2 shutting down"]  # the second content
    transport = _transport(proxy)
    with transport.batch():
        outcomes = transport.send_many(_mails(5))
    # The first went; the second was refused with 421 (the relay is going); the third and
    # later were not tried (the sender releases them for the next pass).
    assert outcomes[0] is None and isinstance(outcomes[1], smtplib.SMTPDataError)
    assert outcomes[1].smtp_code == 421 and len(outcomes) == 2
