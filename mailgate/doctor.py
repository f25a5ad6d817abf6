"""`mailgate doctor`: is this installation able to work? One line per check, OK or the fix.

Each check is a small function returning :class:`Result`; none of them sends or takes mail.
The relay check stops after ``MAIL FROM`` (then ``RSET``), the IMAP check logs in through the
poller's own connect (so it sees what ``serve`` will see, password_file and TLS included)
and only makes the processed/failed folders the poller would make at start anyway.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from mailgate.config import ConfigError, ImapAccount, OutboundSettings, Settings

OK, WARN, FAIL = "OK", "WARN", "FAIL"
# Exit status when a check fails. Not a sysexits code on purpose: the failures are of
# different kinds (configuration, a service down, a password), each named on its line; a
# broken config file alone exits 78 like every other command.
EX_CHECK_FAILED = 1
# Further apart than this, the system clock and the database server's disagree on due times.
MAX_CLOCK_SKEW_SECONDS = 5.0


@dataclass(frozen=True)
class Result:
    check: str
    status: str  # OK, WARN (works, but look at it) or FAIL
    detail: str  # what was found, or what is wrong and how to fix it

    @property
    def ok(self) -> bool:
        return self.status != FAIL


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip()
    if not text_:
        return type(exc).__name__
    line = text_.splitlines()[0]
    return line.removeprefix("b'").removesuffix("'") if line.startswith("b'") else line


# --- config -------------------------------------------------------------------------------

def config_ok(settings: Settings) -> Result:
    where = settings.source or "built-in defaults ($MAILGATE_CONFIG and --config not set)"
    return Result("config", OK, f"{where}: valid")


def config_failed(exc: ConfigError) -> Result:
    return Result("config", FAIL, f"{exc} (fix the key in the config file)")


# --- database -----------------------------------------------------------------------------

def database(engine: Engine) -> Result:
    from mailgate.db.migrate import current_revision, head_revision

    url = engine.url.render_as_string(hide_password=True)
    try:
        current = current_revision(engine)
    except Exception as exc:
        return Result("database", FAIL, f"cannot reach {url}: {_first_line(exc)}; check "
                                        "database.url and that the database server runs")
    head = head_revision()
    if current != head:
        return Result("database", FAIL,
                      f"{url}: schema at {current or 'nothing (empty database)'}, this mailgate "
                      f"needs {head}: run `mailgate db upgrade`")
    return Result("database", OK, f"{url}: schema current ({head})")


# --- outgoing mail ------------------------------------------------------------------------

def relay(settings: Settings) -> Result:
    o = settings.outbound
    if not o.uses_relay:
        return maildir(o.maildir)
    senders = list(dict.fromkeys((settings.desk.address, settings.desk.complaints_address)))
    return smtp_relay(o, senders)


def smtp_relay(o: OutboundSettings, senders: list[str]) -> Result:
    """Connect, EHLO, STARTTLS and AUTH as the sender does, then ``MAIL FROM`` for each of
    our sender addresses, each followed by ``RSET``: nothing is sent."""
    where = f"{o.relay_host}:{o.relay_port}"
    name = "relay"
    try:
        smtp = smtplib.SMTP(o.relay_host, o.relay_port, timeout=o.timeout_seconds)
    except TimeoutError:
        return Result(name, FAIL, f"relay {where} unreachable: no answer within "
                                  f"{o.timeout_seconds:g}s; check outbound.relay_host/"
                                  "relay_port and the firewall")
    except (OSError, smtplib.SMTPException) as exc:
        return Result(name, FAIL, f"relay {where} unreachable: {_first_line(exc)}; check "
                                  "outbound.relay_host/relay_port and that the relay runs")
    try:
        smtp.ehlo()
        if o.starttls:
            try:
                smtp.starttls(context=ssl.create_default_context())
            except smtplib.SMTPNotSupportedError:
                return Result(name, FAIL, f"relay {where} does not offer STARTTLS; set "
                                          "outbound.starttls = false or use the TLS port")
            except (ssl.SSLError, ssl.CertificateError) as exc:
                return Result(name, FAIL, f"relay {where}: TLS failed: {_first_line(exc)}")
            smtp.ehlo()
        if o.username:
            try:
                smtp.login(o.username, o.password)
            except smtplib.SMTPAuthenticationError as exc:
                return Result(name, FAIL, f"relay {where} refused login for user "
                                          f"{o.username!r}: {exc.smtp_code} "
                                          f"{_reply(exc.smtp_error)}; check "
                                          "outbound.username/password")
            except smtplib.SMTPNotSupportedError:
                return Result(name, FAIL, f"relay {where} offers no AUTH"
                                          + ("" if o.starttls else " without TLS (set "
                                             "outbound.starttls = true?)"))
        for sender in senders:
            code, reply = smtp.mail(sender)
            if code >= 400:
                kind = "refuses" if code >= 500 else "temporarily refuses"
                return Result(name, FAIL, f"relay {where} {kind} our sender <{sender}>: "
                                          f"{code} {_reply(reply)}; allow it on the relay "
                                          "(or authenticate: outbound.username)")
            smtp.rset()
    except (OSError, smtplib.SMTPException) as exc:
        return Result(name, FAIL, f"relay {where}: {_first_line(exc)}")
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
    return Result(name, OK, f"relay {where} accepts "
                  + ", ".join(f"<{s}>" for s in senders)
                  + (" (STARTTLS" if o.starttls else " (no TLS")
                  + (f", login {o.username})" if o.username else ")"))


def _reply(raw: bytes | str) -> str:
    return (raw.decode(errors="replace") if isinstance(raw, bytes) else raw).replace("\n", " ")


def maildir(path: str) -> Result:
    """The embedded default: outgoing mail lands in a Maildir, which must be writable."""
    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return Result("maildir", FAIL, f"{path}: {existing} is not a directory; "
                                       "fix outbound.maildir")
    dirs = [target / sub for sub in ("tmp", "new", "cur") if (target / sub).is_dir()]
    unwritable = [str(d) for d in ([existing] if existing != target else [target, *dirs])
                  if not os.access(d, os.W_OK | os.X_OK)]
    if unwritable:
        return Result("maildir", FAIL, f"{path}: cannot write to {', '.join(unwritable)} "
                                       "(as this user); fix the permissions or outbound.maildir")
    note = "writable" if existing == target else f"will be created (in {existing})"
    return Result("maildir", OK, f"no relay_host: outgoing mail into {path}, {note}")


# --- IMAP ---------------------------------------------------------------------------------

def _no_mail(*_args: object) -> NoReturn:
    raise AssertionError("the doctor fetches no mail")


def imap(account: ImapAccount) -> Result:
    """Log in as the poller does, select the folder, make sure ours exist."""
    from imapclient.exceptions import IMAPClientError, LoginError

    from mailgate.inbound.imap import ImapPoller, PasswordUnreadable
    from mailgate.inbound.oauth2 import OAuth2Error

    name = f"imap {account.name}"
    where = f"{account.host}:{account.port}"
    poller = ImapPoller(account, _no_mail, _no_mail)
    try:
        try:
            client = poller._connect()
        except LoginError as exc:
            fix = ("check the OAuth2 settings (oauth2_user, client and tenant)"
                   if account.auth == "oauth2" else
                   "check the account's password (or password_file)")
            return Result(name, FAIL, f"login failed for user {account.login_user!r} on "
                                      f"{where}: {_first_line(exc)}; {fix}")
        except OAuth2Error as exc:
            return Result(name, FAIL, f"no OAuth2 token for {account.login_user!r}: {exc}")
        except PasswordUnreadable as exc:
            return Result(name, FAIL, f"{exc}; fix password_file or its permissions")
        except TimeoutError:
            return Result(name, FAIL, f"{where} unreachable: no answer within "
                                      f"{account.timeout_seconds:g}s; check host, port and "
                                      "the firewall")
        except ssl.SSLError as exc:
            return Result(name, FAIL, f"{where}: TLS failed: {_first_line(exc)}; check ssl, "
                                      "starttls and port")
        except (OSError, IMAPClientError) as exc:
            return Result(name, FAIL, f"{where} unreachable or refused: {_first_line(exc)}; "
                                      "check host, port, ssl and starttls")
        try:
            if not client.folder_exists(account.folder):
                return Result(name, FAIL, f"folder {account.folder!r} does not exist for user "
                                          f"{account.username!r} on {where}; create it or fix "
                                          "the account's folder")
            created = []
            for folder in (account.processed_folder, account.failed_folder):
                if not client.folder_exists(folder):
                    try:
                        client.create_folder(folder)
                    except IMAPClientError as exc:
                        return Result(name, FAIL, f"folder {folder!r} is missing and cannot "
                                                  f"be created: {_first_line(exc)}")
                    created.append(folder)
            info = client.select_folder(account.folder, readonly=True)
            waiting = int(info.get(b"EXISTS", 0))
        except (OSError, IMAPClientError) as exc:
            return Result(name, FAIL, f"{where}: {_first_line(exc)}")
        return Result(name, OK, f"{account.username}@{where}: {account.folder!r} has "
                      f"{waiting} mail(s)"
                      + (f"; created {', '.join(repr(f) for f in created)}" if created else ""))
    finally:
        poller._disconnect()


# --- templates ----------------------------------------------------------------------------

def templates(settings: Settings) -> Result:
    from mailgate.outbound import render, samples

    renderer = render.Renderer(settings.templates_dir, settings.desk.default_language)
    results = render.check(renderer, samples.SAMPLES)
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        return Result("templates", FAIL,
                      f"{len(failed)} of {len(results)} fail, e.g. {first.language}/"
                      f"{first.template}: {first.error}; see `mailgate templates check`")
    where = f" with overrides from {settings.templates_dir}" if settings.templates_dir else ""
    names = len({r.template for r in results})
    return Result("templates", OK, f"{names} templates render in "
                                   f"{', '.join(render.LANGUAGES)}{where}")


# --- clock --------------------------------------------------------------------------------

def clock(settings: Settings, engine: Engine | None,
          now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Result:
    """The desk's time zone, the local time, and on PostgreSQL the database server's clock
    (due times are written by every instance and compared by the database)."""
    try:
        tz = ZoneInfo(settings.desk.timezone)
    except Exception as exc:
        return Result("clock", FAIL, f"time zone {settings.desk.timezone!r} unknown: "
                                     f"{_first_line(exc)}; install tzdata or fix desk.timezone")
    local = now().astimezone(tz)
    offset = f"{local:%z}"
    detail = (f"desk time {local:%Y-%m-%d %H:%M:%S} {settings.desk.timezone} "
              f"({local:%Z}, UTC{offset[:3]}:{offset[3:]})")
    if engine is None or engine.dialect.name != "postgresql":
        return Result("clock", OK, detail)
    try:
        with engine.connect() as conn:
            before = time.monotonic()
            ours = now()
            theirs = conn.execute(text("SELECT now()")).scalar_one()
            trip = time.monotonic() - before
    except Exception:
        return Result("clock", OK, detail + "; database clock not compared (unreachable)")
    skew = (theirs.astimezone(UTC) - ours).total_seconds() - trip / 2
    if abs(skew) > MAX_CLOCK_SKEW_SECONDS:
        return Result("clock", WARN, detail + f"; this machine's clock is {abs(skew):.0f}s "
                      f"{'behind' if skew > 0 else 'ahead of'} the database server's: "
                      "sync both with NTP")
    return Result("clock", OK, detail + f"; database server clock within {abs(skew):.1f}s")


# --- all ----------------------------------------------------------------------------------

def checks(settings: Settings, engine: Engine) -> Iterator[Result]:
    """Every check after the config, in order; each result as soon as it is known."""
    yield config_ok(settings)
    yield database(engine)
    yield relay(settings)
    for account in settings.imap:
        yield imap(account)
    yield templates(settings)
    yield clock(settings, engine)


def rows(results: list[Result]) -> list[dict[str, Any]]:
    return [{"check": r.check, "status": r.status, "ok": r.ok, "detail": r.detail}
            for r in results]


def text_lines(results: list[dict[str, Any]]) -> str:
    width = max((len(r["check"]) for r in results), default=5)
    return "\n".join(f"{r['check']:<{width}}  {r['status']:<4}  {r['detail']}" for r in results)
