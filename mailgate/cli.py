"""The `mailgate` command's entry point.

`mailgate deliver` is an MTA's pipe transport: Postfix starts a fresh process for every mail,
so its start-up is paid per mail (issue 11: it cost 1.2-2.8 s when the CLI imported the
ORM, the parser and the ticket services). A command line that is a plain `deliver`
(``[--config FILE] deliver [-f SENDER] [-r RECIPIENT]...``, the long forms and ``--opt=value``
too) runs here, without click or the command tree; anything else, including any `deliver`
line this does not recognise for certain, goes to click (:mod:`mailgate.cli_commands`), whose
`deliver` runs the same :func:`deliver_mail`. That hands the mail to the running daemon's
listener first where ``[deliver] handoff`` wants it (PostgreSQL, whose driver import alone is
over the goal: mailgate/inbound/handoff.py), and stores it directly otherwise or when that
fails. bench/deliver.py measures the ways, tests/test_startup.py holds what they may import.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from mailgate.exitcodes import EX_CONFIG, EX_OK, EX_TEMPFAIL

if TYPE_CHECKING:
    from mailgate.config import Settings


class Fail(Exception):
    """An error with its sysexits code, printed as ``mailgate: <message>``, no traceback."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def load_settings(config_path: str | None) -> Settings:
    """The validated settings (``$MAILGATE_CONFIG`` when no path is given); a broken file
    exits 78 naming the key and the reason."""
    from mailgate import config as config_mod

    try:
        return config_mod.load(config_path)
    except config_mod.ConfigError as exc:
        raise Fail(f"configuration error: {exc}", EX_CONFIG) from exc


def with_logging(settings: Settings) -> Settings:
    """Sets up logging from ``settings``; returns them."""
    from mailgate import logs

    # One line per event, text or JSON (log_format); under journald without the time.
    logs.setup(settings.log_level, settings.log_format)
    # aiosmtpd's "mail.log" writes five INFO lines per mail: noise at a desk's volume.
    for noisy in ("alembic", "apscheduler", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # mail-parser warns about every MIME part type it does not render; the raw mail is
    # kept whole, so those warnings say nothing ops can act on.
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    return settings


def deliver_mail(config_path: str | None, sender: str | None,
                 recipients: list[str] | None) -> str:
    """`mailgate deliver`: stores the mail on stdin; returns the line to print. First, where
    ``[deliver] handoff`` wants it, handed to the running daemon's SMTP listener
    (mailgate/inbound/handoff.py: no database driver imported); else, or when that fails,
    stored directly (mailgate/inbound/pipe.py: no App, no engine, no ORM)."""
    from mailgate.inbound.handoff import envelope, try_hand_off

    settings = with_logging(load_settings(config_path))
    raw = sys.stdin.buffer.read()  # one read to the end: FileIO grows one buffer
    sender, recipients = envelope(sender, recipients)
    handed = try_hand_off(settings, raw, sender, recipients)
    if handed is not None:
        return (f"stored as inbound {handed.inbound_id}" if handed.inbound_id is not None
                else f"stored by the daemon's listener ({handed.reply})")

    from mailgate.clock import SystemClock
    from mailgate.inbound.pipe import deliver_raw

    try:
        code, stored, error = deliver_raw(settings.database, SystemClock(), raw, sender,
                                          recipients)
    except OSError as exc:  # e.g. the SQLite file's directory cannot be made
        code, stored, error = EX_TEMPFAIL, None, f"storage unavailable: {exc}"
    if code != EX_OK:
        raise Fail(error, code)
    assert stored is not None
    return (f"stored as inbound {stored.inbound_id}"
            + (" (duplicate, already stored)" if stored.duplicate else ""))


def plain_deliver(args: list[str]) -> tuple[str | None, str | None, list[str] | None] | None:
    """(config path, sender, recipients) when ``args`` is a `deliver` command line in one of
    the shapes click reads the same way; None for anything else (click decides then)."""
    config: str | None = None
    i = 0
    while i < len(args) and args[i] != "deliver":
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            config, i = args[i + 1], i + 2
        elif arg.startswith("--config="):
            config, i = arg.partition("=")[2], i + 1
        else:
            return None
    if i == len(args):
        return None
    sender: str | None = None
    recipients: list[str] = []
    i += 1
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg in ("-f", "--sender", "-r", "--recipient") and i + 1 < len(args):
            name, value, i = arg, args[i + 1], i + 2
        elif eq and name in ("--sender", "--recipient"):
            i += 1
        else:
            return None
        if name in ("-f", "--sender"):
            sender = value
        else:
            recipients.append(value)
    return config, sender, recipients or None


def main(argv: list[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else list(argv)
    plain = plain_deliver(args)
    if plain is None:
        from mailgate.cli_commands import run

        run(args)
    try:
        line = deliver_mail(*plain)
    except Fail as exc:
        print(f"mailgate: {exc.message}", file=sys.stderr)
        sys.exit(exc.code)
    print(line)
    sys.exit(EX_OK)


def __getattr__(name: str) -> Any:
    """``mailgate.cli.cli``, the click group, as before the entry point was split off."""
    if name == "cli":
        from mailgate.cli_commands import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
