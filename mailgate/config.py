"""TOML configuration → typed, validated, frozen settings.

Every error names the key (``section.key``) and the reason, so ops can fix a broken file
without reading code; the CLI turns :class:`ConfigError` into exit code 78 (EX_CONFIG).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailgate.mail.addresses import is_valid_address

LANGUAGES = ("nl", "fr", "en")


class ConfigError(Exception):
    """A key of the configuration is wrong or missing."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class DeskSettings:
    name: str = "Service Desk"
    address: str = "servicedesk@example.org"
    complaints_address: str = "complaints@example.org"
    service_manager: str = ""
    phone: str = ""
    ticket_prefix: str = "SD"
    default_language: str = "nl"
    timezone: str = "Europe/Brussels"
    # Signs our Message-IDs so that a reply's References proves which ticket it answers.
    secret: str = ""
    # Further addresses the SMTP listener accepts (aliases of the desk).
    aliases: tuple[str, ...] = ()
    # Agents' internal notes: mail here is stored on the ticket and never reaches the editor.
    comment_address: str = ""
    # The on-duty address: alerted at once of every urgent ticket, with the editor's phone.
    urgent_notify: str = ""
    # Desk addresses per language (servicedesk-fr@... = "fr"): mail sent there is answered in
    # that language unless the editor registered one. Given in TOML as a table.
    addresses_by_language: dict[str, str] = field(default_factory=dict)

    def language_of(self, addresses: tuple[str, ...]) -> str:
        by_address = {a.lower(): lang for a, lang in dict(self.addresses_by_language).items()}
        return next((by_address[a.lower()] for a in addresses if a.lower() in by_address), "")

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    @property
    def own_addresses(self) -> frozenset[str]:
        addrs = {self.address, self.complaints_address, self.comment_address, *self.aliases,
                 *dict(self.addresses_by_language)}
        return frozenset(a.lower() for a in addrs if a)


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""
    # How long SQLite waits for a lock before the write counts as "storage unavailable".
    busy_timeout_ms: int = 5000
    echo: bool = False


@dataclass(frozen=True)
class SmtpSettings:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2525
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 50
    # Sessions open at once; one more is greeted with 421 and closed (its client retries).
    max_connections: int = 100
    # The longest a client may take for one command, or for the whole DATA of one mail.
    timeout_seconds: float = 300.0
    # Longest line accepted in DATA, without its CRLF. RFC 5322 says 998, but a script or a
    # broken client that does not fold its lines would get a permanent 500 and lose its mail.
    max_line_length: int = 64 * 1024
    # STARTTLS with this PEM certificate (chain) and key; both or neither.
    tls_cert: str = ""
    tls_key: str = ""
    # No MAIL before STARTTLS (530 5.7.0); needs tls_cert and tls_key.
    require_tls: bool = False


@dataclass(frozen=True)
class DeliverSettings:
    # `mailgate deliver` hands the mail to the running daemon's SMTP listener ([smtp] host,
    # port) first, storing directly only when that fails (mailgate/inbound/handoff.py):
    # "auto" on PostgreSQL only (psycopg's import is most of a direct store there), "always"
    # (on SQLite too), "never".
    handoff: str = "auto"


@dataclass(frozen=True)
class OutboundSettings:
    relay_host: str = ""
    relay_port: int = 25
    starttls: bool = False
    username: str = ""
    password: str = ""
    maildir: str = ""
    retry_base_seconds: float = 4.0
    retry_max_seconds: float = 300.0
    timeout_seconds: float = 30.0
    # How long a claimed row is ours before another pass (or instance) may take it: a sender
    # killed mid-send leaves its rows leased this long, then they go again (at-least-once).
    lease_seconds: float = 120.0

    @property
    def uses_relay(self) -> bool:
        return bool(self.relay_host)


@dataclass(frozen=True)
class ImapAccount:
    name: str
    host: str
    username: str
    port: int = 993
    ssl: bool = True
    starttls: bool = False
    password: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    failed_folder: str = "Failed"
    poll_interval: float = 60.0
    idle: bool = True
    timeout_seconds: float = 30.0
    # "password" (LOGIN) or "oauth2" (SASL XOAUTH2 with an access token: inbound/oauth2.py).
    auth: str = "password"
    # "microsoft" (client credentials: tenant_id, client_id, client_secret_file) or
    # "token_endpoint" (refresh-token grant: token_url, refresh_token_file, client_id, and
    # client_secret_file where the endpoint wants one).
    oauth2_provider: str = ""
    tenant_id: str = ""
    client_id: str = ""
    client_secret_file: str = ""
    token_url: str = ""
    refresh_token_file: str = ""
    # The scope asked for; "" = https://outlook.office365.com/.default for "microsoft", and
    # none sent to a token endpoint (the refresh token's own).
    oauth2_scope: str = ""
    # The mailbox logged in to with the token; "" = username.
    oauth2_user: str = ""
    # PostgreSQL: one instance polls the account at a time (inbound/leader.py); the others
    # try to take over this often, so a killed poller is replaced within this many seconds.
    leader_retry_seconds: float = 15.0

    @property
    def login_user(self) -> str:
        return (self.oauth2_user or self.username) if self.auth == "oauth2" else self.username

    def read_password(self) -> str:
        if self.password_file:
            return Path(self.password_file).read_text(encoding="utf-8").strip()
        return self.password


@dataclass(frozen=True)
class SlaSettings:
    first_response_hours: float = 4.0
    # Share of the first-response time after which the agents are warned (once).
    warn_at: float = 0.75
    # Urgent incidents: their own first-response time, in business time or round the clock.
    urgent_response_minutes: float = 30.0
    urgent_24x7: bool = False
    business_hours: str = "08:00-17:00"
    country: str = "BE"


@dataclass(frozen=True)
class LifecycleSettings:
    auto_close_working_days: int = 5
    reminder_working_days: tuple[int, ...] = (2, 4)
    # Extra days the desk is closed ("YYYY-MM-DD"), on top of weekends and public holidays.
    closed_days: tuple[str, ...] = ()
    notify_on_close: bool = True
    sweep_seconds: float = 60.0

    @property
    def closed_dates(self) -> tuple[date, ...]:
        return tuple(date.fromisoformat(d) for d in self.closed_days)


@dataclass(frozen=True)
class AccessSettings:
    unknown_senders: str = "refuse"
    auto_replies_per_hour: int = 5
    # Acknowledgements to registered editors: a ceiling no person reaches.
    acks_per_hour: int = 60
    complaints_from_strangers: bool = True
    require_authentication: bool = False
    authserv_id: str = ""


@dataclass(frozen=True)
class AgentSettings:
    # Who is told of new tickets and editors' mails; empty: every registered agent.
    notify: tuple[str, ...] = ()


@dataclass(frozen=True)
class AttachmentSettings:
    # "database" lets several instances share the blobs; "directory" keeps the DB small.
    store: str = "database"
    directory: str = ""
    # Larger attachments are not copied out of the raw mail (which is always kept).
    max_size: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class WorkerSettings:
    # Fallback sweep when no in-process wake-up arrives (mail stored by `deliver` or a peer).
    poll_seconds: float = 2.0
    batch_size: int = 50
    # Processes that process mail: the daemon's own thread and processes - 1 more (each
    # `mailgate work`). 0 = by the database: 1 on SQLite (one writer at a time anyway), the
    # number of CPUs (at most 4) on PostgreSQL, where workers claim rows without waiting on
    # each other.
    processes: int = 0
    # A helper process that parses the next mails while the worker writes (parse_ahead.py):
    # "auto" = on SQLite with two CPUs or more (one writer, which used one core), off on
    # PostgreSQL (its worker processes use the cores); "on"; "off".
    parse_ahead: str = "auto"

    def parses_ahead(self, database_url: str) -> bool:
        if self.parse_ahead != "auto":
            return self.parse_ahead == "on"
        return database_url.startswith("sqlite") and (os.cpu_count() or 1) >= 2

    def process_count(self, database_url: str) -> int:
        if self.processes:
            return self.processes
        if database_url.startswith("sqlite"):
            return 1
        return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class RetentionSettings:
    # Privacy: this many days after a ticket closed, its raw mails (as they arrived and as
    # sent) are emptied; the ticket, its messages' text and its events stay. 0 = kept.
    raw_days: int = 0
    # Likewise its attachments' bytes (name, type, size and SHA-256 stay); a blob that a
    # ticket not yet due shares stays. 0 = kept.
    attachments_days: int = 0


@dataclass(frozen=True)
class MetricsSettings:
    # "host:port" ("[::1]:9325" for IPv6; port 0 = any free port) serves /metrics and
    # /healthz; "" = off.
    listen: str = ""
    # /healthz fails when the oldest pending outbox row is older than this.
    outbox_alarm_seconds: float = 300.0
    # /healthz fails when an IMAP account has been failing for longer than this.
    imap_alarm_seconds: float = 300.0

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True)
class Settings:
    desk: DeskSettings = field(default_factory=DeskSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    deliver: DeliverSettings = field(default_factory=DeliverSettings)
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    imap: tuple[ImapAccount, ...] = ()
    sla: SlaSettings = field(default_factory=SlaSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    agents: AgentSettings = field(default_factory=AgentSettings)
    attachments: AttachmentSettings = field(default_factory=AttachmentSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    state_dir: str = "var"
    templates_dir: str = ""  # overrides, file by file; "" = the packaged templates only
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line (mailgate/logs.py)
    source: str = ""

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.desk.timezone)


_SECTIONS: dict[str, type] = {
    "desk": DeskSettings,
    "database": DatabaseSettings,
    "smtp": SmtpSettings,
    "deliver": DeliverSettings,
    "outbound": OutboundSettings,
    "sla": SlaSettings,
    "lifecycle": LifecycleSettings,
    "access": AccessSettings,
    "agents": AgentSettings,
    "attachments": AttachmentSettings,
    "worker": WorkerSettings,
    "metrics": MetricsSettings,
    "retention": RetentionSettings,
}
_TOP_LEVEL = {"state_dir": str, "templates_dir": str, "log_level": str, "log_format": str}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check a TOML value against the dataclass field type; TOML already typed it."""
    expected = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    if expected in ("bool",):
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if expected in ("int",):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be a whole number, got {value!r}")
        return value
    if expected in ("float",):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if expected in ("str",):
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string, got {value!r}")
        return value
    if expected.startswith("tuple[int"):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(key, f"must be a list of whole numbers, got {value!r}")
        return tuple(value)
    if expected.startswith("dict[str, str]"):
        if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(key, f"must be a table of strings, got {value!r}")
        return {k.lower(): v for k, v in value.items()}
    if expected.startswith("tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {value!r}")
        return tuple(value)
    raise ConfigError(key, f"unsupported type {expected}")  # pragma: no cover


def _build(cls: type, section: str, data: Any, extra: dict[str, Any] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(section, "must be a table")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = dict(extra or {})
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}",
                              f"unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(f"{section}.{key}", value, known[key].type)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        missing = re.findall(r"'(\w+)'", str(exc))
        key = f"{section}.{missing[0]}" if missing else section
        raise ConfigError(key, "is required") from exc


def _check(cond: bool, key: str, reason: str) -> None:
    if not cond:
        raise ConfigError(key, reason)


def _positive(key: str, value: float) -> None:
    _check(value > 0, key, f"must be greater than 0, got {value}")


_OAUTH2_KEYS = {
    # provider → (required keys, optional keys); every other oauth2 key must stay unset.
    "microsoft": (("tenant_id", "client_id", "client_secret_file"), ("oauth2_scope",)),
    "token_endpoint": (("token_url", "refresh_token_file"),
                       ("client_id", "client_secret_file", "oauth2_scope")),
}
_OAUTH2_ONLY = ("oauth2_provider", "tenant_id", "client_id", "client_secret_file", "token_url",
                "refresh_token_file", "oauth2_scope", "oauth2_user")
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _validate_imap_auth(acct: ImapAccount, key: str) -> None:
    _check(acct.auth in ("password", "oauth2"), f"{key}.auth",
           f'must be "password" or "oauth2", got {acct.auth!r}')
    if acct.auth == "password":
        for name in _OAUTH2_ONLY:
            _check(not getattr(acct, name), f"{key}.{name}",
                   'is only used with auth = "oauth2"')
        _check(bool(acct.password) != bool(acct.password_file), f"{key}.password",
               "set exactly one of password or password_file")
        if acct.password_file:
            _check(os.access(acct.password_file, os.R_OK), f"{key}.password_file",
                   f"cannot read {acct.password_file}")
        return
    for name in ("password", "password_file"):
        _check(not getattr(acct, name), f"{key}.{name}",
               'is not used with auth = "oauth2" (leave it out)')
    provider = acct.oauth2_provider
    _check(provider in _OAUTH2_KEYS, f"{key}.oauth2_provider",
           'must be "microsoft" or "token_endpoint" when auth = "oauth2"'
           + (f", got {provider!r}" if provider else ""))
    required, optional = _OAUTH2_KEYS[provider]
    for name in required:
        _check(bool(getattr(acct, name)), f"{key}.{name}",
               f'is required with oauth2_provider = "{provider}"')
    for name in _OAUTH2_ONLY:
        if name not in (*required, *optional, "oauth2_provider", "oauth2_user"):
            _check(not getattr(acct, name), f"{key}.{name}",
                   f'is not used with oauth2_provider = "{provider}"')
    for name in ("client_secret_file", "refresh_token_file"):
        path = getattr(acct, name)
        if path:
            _check(os.access(path, os.R_OK), f"{key}.{name}", f"cannot read {path}")
    if acct.token_url:
        url = urlsplit(acct.token_url)
        _check((url.scheme == "https" and bool(url.hostname))
               or (url.scheme == "http" and url.hostname in _LOOPBACK_HOSTS),
               f"{key}.token_url", "must be an https:// URL (http:// only to this host)")


def _validate_smtp(smtp: SmtpSettings) -> None:
    _positive("smtp.max_connections", smtp.max_connections)
    _positive("smtp.timeout_seconds", smtp.timeout_seconds)
    _check(smtp.max_line_length >= 998, "smtp.max_line_length",
           f"must be at least 998 (RFC 5322's own limit), got {smtp.max_line_length}")
    _check(smtp.max_line_length <= smtp.max_message_size, "smtp.max_line_length",
           "must not be larger than smtp.max_message_size")
    for key, other in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        if getattr(smtp, key):
            _check(bool(getattr(smtp, other)), f"smtp.{other}",
                   f"is required when smtp.{key} is set")
            path = getattr(smtp, key)
            _check(os.access(path, os.R_OK), f"smtp.{key}", f"cannot read {path}")
    if smtp.require_tls:
        _check(bool(smtp.tls_cert), "smtp.require_tls",
               "needs smtp.tls_cert and smtp.tls_key (the certificate STARTTLS offers)")
    if smtp.tls_cert:
        import ssl  # only where TLS is configured: the CLI's start stays light

        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(smtp.tls_cert, smtp.tls_key)
        except (ssl.SSLError, OSError) as exc:
            mismatch = "KEY_VALUES_MISMATCH" in str(exc)
            raise ConfigError("smtp.tls_key" if mismatch else "smtp.tls_cert",
                              "does not belong to smtp.tls_cert" if mismatch else
                              f"cannot load it with smtp.tls_key as PEM: {exc}") from exc


def _validate(s: Settings) -> None:
    d = s.desk
    for key in ("address", "complaints_address"):
        _check(is_valid_address(getattr(d, key)), f"desk.{key}", "must be an e-mail address")
    if d.service_manager:
        _check(is_valid_address(d.service_manager), "desk.service_manager",
               "must be an e-mail address")
    if d.comment_address:
        _check(is_valid_address(d.comment_address), "desk.comment_address",
               "must be an e-mail address")
        _check(d.comment_address.lower() != d.address.lower(), "desk.comment_address",
               "must differ from desk.address (notes would reach editors)")
    if d.urgent_notify:
        _check(is_valid_address(d.urgent_notify), "desk.urgent_notify",
               "must be an e-mail address")
    for addr, lang in dict(d.addresses_by_language).items():
        key = f"desk.addresses_by_language.{addr}"
        _check(is_valid_address(addr), key, "must be an e-mail address")
        _check(lang in LANGUAGES, key, f"must be one of {', '.join(LANGUAGES)}")
    _positive("sla.urgent_response_minutes", s.sla.urgent_response_minutes)
    for i, addr in enumerate(s.agents.notify):
        _check(is_valid_address(addr), f"agents.notify[{i}]", "must be an e-mail address")
    for i, alias in enumerate(d.aliases):
        _check(is_valid_address(alias), f"desk.aliases[{i}]", "must be an e-mail address")
    _check(bool(re.fullmatch(r"[A-Z][A-Z0-9]{0,9}", d.ticket_prefix)), "desk.ticket_prefix",
           "must be 1-10 capital letters or digits, starting with a letter")
    _check(d.default_language in LANGUAGES, "desk.default_language",
           f"must be one of {', '.join(LANGUAGES)}")
    try:
        ZoneInfo(d.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError("desk.timezone", f"unknown time zone {d.timezone!r}") from exc
    _check(d.secret == "" or len(d.secret) >= 16, "desk.secret",
           "must be at least 16 characters (or left out to use the one kept in the database)")
    _check(s.database.url.startswith(("sqlite", "postgresql")), "database.url",
           "must be a sqlite:/// or postgresql+psycopg:// URL")
    _check(s.database.busy_timeout_ms >= 0, "database.busy_timeout_ms", "must be 0 or more")
    _check(0 <= s.smtp.port < 65536, "smtp.port", "must be a TCP port (0 = any free port)")
    _positive("smtp.max_message_size", s.smtp.max_message_size)
    _positive("smtp.max_recipients", s.smtp.max_recipients)
    _validate_smtp(s.smtp)
    _check(s.deliver.handoff in ("auto", "always", "never"), "deliver.handoff",
           f'must be "auto", "always" or "never", got {s.deliver.handoff!r}')
    o = s.outbound
    if o.uses_relay:
        _check(0 < o.relay_port < 65536, "outbound.relay_port", "must be a TCP port (1-65535)")
    else:
        _check(bool(o.maildir), "outbound.maildir",
               "is required when outbound.relay_host is not set")
    _positive("outbound.retry_base_seconds", o.retry_base_seconds)
    _check(o.retry_max_seconds >= o.retry_base_seconds, "outbound.retry_max_seconds",
           "must be at least outbound.retry_base_seconds")
    _positive("outbound.timeout_seconds", o.timeout_seconds)
    names = [a.name for a in s.imap]
    for i, acct in enumerate(s.imap):
        key = f"imap[{i}]"
        _check(names.count(acct.name) == 1, f"{key}.name", f"duplicate account name {acct.name!r}")
        _check(0 < acct.port < 65536, f"{key}.port", "must be a TCP port (1-65535)")
        _check(not (acct.ssl and acct.starttls), f"{key}.starttls",
               "cannot be combined with ssl = true")
        _validate_imap_auth(acct, key)
        _positive(f"{key}.poll_interval", acct.poll_interval)
        _check(len({acct.folder, acct.processed_folder, acct.failed_folder}) == 3,
               f"{key}.processed_folder", "folder, processed_folder and failed_folder must differ")
    _positive("sla.first_response_hours", s.sla.first_response_hours)
    m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", s.sla.business_hours)
    _check(bool(m) and m.group(1, 2) < m.group(3, 4) and int(m.group(3)) <= 24,  # type: ignore[union-attr]
           "sla.business_hours", 'must look like "08:00-17:00" with start before end')
    lc = s.lifecycle
    _positive("lifecycle.auto_close_working_days", lc.auto_close_working_days)
    _check(all(0 < d < lc.auto_close_working_days for d in lc.reminder_working_days)
           and list(lc.reminder_working_days) == sorted(set(lc.reminder_working_days)),
           "lifecycle.reminder_working_days",
           "must be rising working days, each before lifecycle.auto_close_working_days")
    for i, day in enumerate(lc.closed_days):
        try:
            date.fromisoformat(day)
        except ValueError as exc:
            raise ConfigError(f"lifecycle.closed_days[{i}]",
                              f"must be a date like 2026-12-24, got {day!r}") from exc
    _positive("lifecycle.sweep_seconds", lc.sweep_seconds)
    _check(0 < s.sla.warn_at < 1, "sla.warn_at", "must be between 0 and 1 (e.g. 0.75)")
    _check(s.access.unknown_senders in ("refuse", "accept"), "access.unknown_senders",
           'must be "refuse" or "accept"')
    _check(s.access.auto_replies_per_hour >= 0, "access.auto_replies_per_hour",
           "must be 0 or more")
    _check(s.access.acks_per_hour >= 0, "access.acks_per_hour", "must be 0 or more")
    if s.access.require_authentication:
        _check(bool(s.access.authserv_id), "access.authserv_id",
               "is required when access.require_authentication = true")
    a = s.attachments
    _check(a.store in ("database", "directory"), "attachments.store",
           'must be "database" or "directory"')
    if a.store == "directory":
        _check(bool(a.directory), "attachments.directory",
               'is required when attachments.store = "directory"')
    _check(a.max_size >= 0, "attachments.max_size", "must be 0 or more")
    _positive("worker.poll_seconds", s.worker.poll_seconds)
    _positive("worker.batch_size", s.worker.batch_size)
    _check(0 <= s.worker.processes <= 64, "worker.processes",
           f"must be 0 (by the database) to 64, got {s.worker.processes}")
    _check(s.worker.parse_ahead in ("auto", "on", "off"), "worker.parse_ahead",
           f'must be "auto", "on" or "off", got {s.worker.parse_ahead!r}')
    if s.metrics.listen:
        _check(bool(re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):\d{1,5}", s.metrics.listen))
               and s.metrics.address[1] < 65536, "metrics.listen",
               'must be "host:port" ("[::1]:9325" for IPv6; port 0 = any free port), '
               'or "" to turn metrics off')
    _positive("metrics.outbox_alarm_seconds", s.metrics.outbox_alarm_seconds)
    _positive("metrics.imap_alarm_seconds", s.metrics.imap_alarm_seconds)
    _check(s.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level",
           "must be DEBUG, INFO, WARNING or ERROR")
    _check(s.log_format in ("text", "json"), "log_format", 'must be "text" or "json"')
    _check(s.retention.raw_days >= 0, "retention.raw_days", "must be 0 (kept) or more")
    _check(s.retention.attachments_days >= 0, "retention.attachments_days",
           "must be 0 (kept) or more")
    if s.templates_dir:
        _check(Path(s.templates_dir).is_dir(), "templates_dir",
               f"directory {s.templates_dir} does not exist (leave the key out to use only"
               " the templates shipped with mailgate)")


def from_dict(data: dict[str, Any], source: str = "") -> Settings:
    """Build settings from parsed TOML; fills the defaults that depend on state_dir."""
    top: dict[str, Any] = {}
    sections: dict[str, Any] = {}
    imap: tuple[ImapAccount, ...] = ()
    for key, value in data.items():
        if key in _SECTIONS:
            sections[key] = _build(_SECTIONS[key], key, value)
        elif key == "imap":
            if not isinstance(value, list):
                raise ConfigError("imap", "must be an array of tables: [[imap]]")
            accounts = []
            for i, item in enumerate(value):
                extra = {}
                if isinstance(item, dict) and "name" not in item:
                    extra["name"] = str(item.get("username", f"imap{i}"))
                accounts.append(_build(ImapAccount, f"imap[{i}]", item, extra))
            imap = tuple(accounts)
        elif key in _TOP_LEVEL:
            top[key] = _coerce(key, value, _TOP_LEVEL[key].__name__)
        else:
            raise ConfigError(key, "unknown key or section")
    settings = Settings(**sections, **top, imap=imap, source=source)
    state = Path(settings.state_dir)
    if not settings.database.url:
        settings = replace(settings, database=replace(
            settings.database, url=f"sqlite:///{state / 'mailgate.db'}"))
    if not settings.outbound.uses_relay and not settings.outbound.maildir:
        settings = replace(settings, outbound=replace(
            settings.outbound, maildir=str(state / "maildir")))
    _validate(settings)
    return settings


def load(path: str | os.PathLike[str] | None = None,
         overrides: Callable[[dict[str, Any]], None] | None = None) -> Settings:
    """Read the TOML file (``path``, else ``$MAILGATE_CONFIG``, else built-in defaults)."""
    path = path or os.environ.get("MAILGATE_CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError("--config", f"file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    if overrides:
        overrides(data)
    return from_dict(data, source=str(path or ""))


def masked(settings: Settings) -> dict[str, Any]:
    """Effective settings as a dict with every secret replaced, for `check-config`."""
    from dataclasses import asdict

    out = asdict(settings)
    out["desk"]["secret"] = "***" if settings.desk.secret else "(kept in the database)"
    if out["outbound"]["password"]:
        out["outbound"]["password"] = "***"
    for acct in out["imap"]:
        if acct["password"]:
            acct["password"] = "***"
    out["database"]["url"] = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", settings.database.url)
    return out
