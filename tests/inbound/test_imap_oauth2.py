"""IMAP with OAuth2 (SASL XOAUTH2): token sources, their refresh, and logins against the real
Dovecot of the test suite, whose oauth2 passdb asks a small identity provider run by the test
(:class:`IdentityProvider`: token endpoint, Microsoft's tenant discovery and RFC 7662
introspection) whether a token is good.

Microsoft itself cannot be reached from here: msal's own code runs against the same local
provider through msal's ``http_client`` hook, which sends login.microsoftonline.com's requests
to it."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from imapclient import IMAPClient
from sqlalchemy import select

from mailgate import config
from mailgate.app import App
from mailgate.daemon import imap_callables
from mailgate.db.models import Ticket
from mailgate.inbound import oauth2
from mailgate.inbound.imap import Backoff, ImapPoller, Tuning, oauth2_login
from mailgate.inbound.oauth2 import (
    MICROSOFT_IMAP_SCOPE,
    CachedTokenSource,
    Grant,
    MicrosoftClientCredentials,
    OAuth2Error,
    RefreshTokenGrant,
    token_source,
)
from tests.support.desk import EDITOR, RunningDaemon, SettingsFactory
from tests.support.dovecot import DEFAULT_PASSWORD as PASSWORD
from tests.support.dovecot import DEFAULT_USER as USER
from tests.support.dovecot import DovecotServer, require_dovecot
from tests.support.mails import make_mail, wire
from tests.support.wait import until

pytestmark = pytest.mark.timeout(60)

TENANT = "contoso-tenant-id"
CLIENT_ID = "mailgate-test-client"
MICROSOFT = "https://login.microsoftonline.com"


# -- the identity provider the test plays ----------------------------------------------------

class IdentityProvider:
    """Token endpoint and token introspection on a loopback port.

    ``POST /token`` takes the refresh-token grant; ``POST /<tenant>/oauth2/v2.0/token`` the
    client-credentials grant as Microsoft's does, after msal read
    ``GET /<tenant>/v2.0/.well-known/openid-configuration`` (and, after a refusal,
    ``GET /common/discovery/instance``). Access tokens are ``tok-1-…``,
    ``tok-2-…``, … (a random tail, so that a log search cannot hit by accident). ``POST
    /introspect`` is Dovecot's oauth2 passdb asking: ``active`` only for a token issued here,
    not revoked and not past its ``expires_in``.
    """

    def __init__(self, *, expires_in: float = 3600, rotate: bool = False) -> None:
        self.expires_in = expires_in
        self.rotate = rotate
        self.client_secret = "client-secret-" + secrets.token_hex(8)
        self.refresh_token = "rt-0-" + secrets.token_hex(8)
        self.issued: list[str] = []
        self.expiry: dict[str, float] = {}
        self.revoked: set[str] = set()
        self.token_requests: list[dict[str, str]] = []
        self.introspected: list[tuple[str, bool]] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
                    base = f"{MICROSOFT}/{TENANT}"
                    self._json(200, {"token_endpoint": f"{base}/oauth2/v2.0/token",
                                     "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                                     "issuer": f"{base}/v2.0"})
                elif self.path.startswith("/common/discovery/instance?"):
                    # msal checks the authority this way after a refusal.
                    self._json(200, {
                        "tenant_discovery_endpoint":
                            f"{MICROSOFT}/{TENANT}/v2.0/.well-known/openid-configuration",
                        "api-version": "1.1",
                        "metadata": [{"preferred_network": "login.microsoftonline.com",
                                      "preferred_cache": "login.windows.net",
                                      "aliases": ["login.microsoftonline.com",
                                                  "login.windows.net"]}]})
                else:
                    self._json(404, {"error": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(
                    self.rfile.read(length).decode()).items()}
                if self.path == "/introspect":
                    self._json(200, provider.introspect(form.get("token", "")))
                elif self.path in ("/token", f"/{TENANT}/oauth2/v2.0/token"):
                    self._json(*provider.grant(form))
                else:
                    self._json(404, {"error": "not_found"})

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def start(self) -> IdentityProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def revoke(self, token: str) -> None:
        with self._lock:
            self.revoked.add(token)

    def grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.token_requests.append(form)
            if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID,
                                                                      self.client_secret):
                return 401, {"error": "invalid_client",
                             "error_description": "AADSTS7000215: Invalid client secret."}
            answer: dict[str, Any] = {}
            if form.get("grant_type") == "refresh_token":
                if form.get("refresh_token") != self.refresh_token:
                    return 400, {"error": "invalid_grant",
                                 "error_description": "Token has been expired or revoked."}
                if self.rotate:
                    self.refresh_token = f"rt-{len(self.issued) + 1}-{secrets.token_hex(8)}"
                    answer["refresh_token"] = self.refresh_token
            elif form.get("grant_type") == "client_credentials":
                if form.get("scope") != MICROSOFT_IMAP_SCOPE:
                    return 400, {"error": "invalid_scope"}
            else:
                return 400, {"error": "unsupported_grant_type"}
            token = f"tok-{len(self.issued) + 1}-{secrets.token_hex(8)}"
            self.issued.append(token)
            self.expiry[token] = time.monotonic() + self.expires_in
            return 200, {**answer, "access_token": token, "token_type": "Bearer",
                         "expires_in": self.expires_in, "ext_expires_in": self.expires_in}

    def introspect(self, token: str) -> dict[str, Any]:
        with self._lock:
            active = (token in self.expiry and token not in self.revoked
                      and time.monotonic() < self.expiry[token])
            self.introspected.append((token, active))
        return {"active": True, "username": USER} if active else {"active": False}

    def refused(self) -> list[str]:
        return [token for token, active in self.introspected if not active]


class ToLocalProvider:
    """msal's ``http_client``: a requests session whose Microsoft URLs go to the provider."""

    def __init__(self, provider: IdentityProvider) -> None:
        self.provider = provider
        self.session = requests.Session()
        self.urls: list[str] = []

    def _local(self, url: str) -> str:
        self.urls.append(url)
        assert url.startswith(MICROSOFT), f"msal wanted another host: {url}"
        return self.provider.url + url.removeprefix(MICROSOFT)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self._local(url), timeout=5, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self._local(url), timeout=5, **kwargs)

    def close(self) -> None:
        self.session.close()


# -- fixtures and helpers --------------------------------------------------------------------

@pytest.fixture
def provider() -> Iterator[IdentityProvider]:
    p = IdentityProvider().start()
    yield p
    p.stop()


@pytest.fixture
def oauth2_dovecot(tmp_path: Path, provider: IdentityProvider) -> Iterator[DovecotServer]:
    """A private Dovecot whose oauth2 passdb asks ``provider`` about every token."""
    require_dovecot()
    server = DovecotServer(tmp_path / "dovecot",
                           oauth2_introspection_url=f"{provider.url}/introspect")
    server.add_user(USER, PASSWORD)  # for the test's own APPENDs
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def secret_files(tmp_path: Path, provider: IdentityProvider) -> dict[str, str]:
    files = {"client_secret_file": tmp_path / "client.secret",
             "refresh_token_file": tmp_path / "refresh.token"}
    files["client_secret_file"].write_text(provider.client_secret + "\n")
    files["refresh_token_file"].write_text(provider.refresh_token + "\n")
    for path in files.values():
        path.chmod(0o600)
    return {key: str(path) for key, path in files.items()}


def token_endpoint_account(server: DovecotServer, provider: IdentityProvider,
                           files: dict[str, str], **over: Any) -> dict[str, Any]:
    return {"name": "desk", "host": server.host, "port": server.port, "ssl": False,
            "username": USER, "auth": "oauth2", "oauth2_provider": "token_endpoint",
            "token_url": f"{provider.url}/token", "client_id": CLIENT_ID,
            "refresh_token_file": files["refresh_token_file"],
            "client_secret_file": files["client_secret_file"],
            "poll_interval": 60, "timeout_seconds": 5, **over}


def kick(server: DovecotServer, user: str = USER) -> None:
    """End the user's IMAP sessions, as tests/inbound/test_imap.py does: the poller must log
    in again."""
    doveadm = shutil.which("doveadm") or "/usr/bin/doveadm"
    subprocess.run([doveadm, "-c", str(server.conf_path), "kick", user],
                   check=True, capture_output=True, timeout=10)


def append(server: DovecotServer, *mails: EmailMessage) -> None:
    with server.imap_client(USER, PASSWORD) as client:
        for msg in mails:
            client.append("INBOX", wire(msg))


def subjects(app: App) -> list[str]:
    with app.sessions() as s:
        return list(s.execute(select(Ticket.subject).order_by(Ticket.number)).scalars())


def logs(caplog: pytest.LogCaptureFixture) -> str:
    """Everything logged, tracebacks included."""
    return "\n".join(f"{_message(r)}\n{r.exc_text or ''}" for r in caplog.records)


def _message(record: logging.LogRecord) -> str:
    # imaplib's debug records sometimes carry arguments their text has no place for
    # (getMessage raises): then the text and the arguments, all of it searched.
    try:
        return record.getMessage()
    except TypeError:
        return f"{record.msg} {record.args!r}"


def assert_never_logged(caplog: pytest.LogCaptureFixture, *secret_values: str) -> None:
    text = logs(caplog)
    for value in secret_values:
        assert value not in text, "a secret reached the log"
        # imapclient's debug log would show XOAUTH2's auth string base64-encoded.
        assert value.encode().hex() not in text


@pytest.fixture
def oauth2_app(make_settings: SettingsFactory, app: App) -> Iterator[Callable[..., App]]:
    """Apps on the migrated database of `app` (editor registered) with the given accounts."""
    made: list[App] = []

    def make(*accounts: dict[str, Any]) -> App:
        a = App(make_settings(imap=list(accounts), access={"auto_replies_per_hour": 1000}))
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


# -- the cache: refreshed before expiry (fake clock) -----------------------------------------

class Scripted(CachedTokenSource):
    """Hands out tok-1, tok-2, … with the lifetimes it is given, one per fetch."""

    def __init__(self, lifetimes: list[float | None], clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.lifetimes = lifetimes

    def describe(self) -> str:
        return "the script"

    def fetch(self) -> Grant:
        return Grant(f"tok-{self.fetches + 1}", self.lifetimes[self.fetches])


def test_token_is_kept_until_sixty_seconds_before_expiry_then_refreshed() -> None:
    now = [1000.0]
    tokens = Scripted([300, 300, 30, None], clock=lambda: now[0])
    assert tokens.token() == "tok-1"
    assert tokens.expires_at == 1300
    now[0] = 1239.9  # 60.1 s left: still good
    assert tokens.token() == "tok-1"
    now[0] = 1240.0  # 60 s left: too close to expiry for a new login
    assert tokens.token() == "tok-2"
    assert tokens.expires_at == 1540
    now[0] = 1241.0
    assert tokens.token() == "tok-2"
    tokens.invalidate()  # the server refused it
    assert tokens.expires_at is None
    assert tokens.token() == "tok-3"
    # A lifetime under the margin: good for the login at hand only.
    assert tokens.token() == "tok-4"
    # No expires_in: kept until the server refuses it.
    now[0] += 10 ** 6
    assert tokens.token() == "tok-4"
    assert tokens.fetches == 4


def test_a_failed_fetch_keeps_nothing_and_is_retried() -> None:
    class Flaky(Scripted):
        def fetch(self) -> Grant:
            if self.fetches == 0 and not getattr(self, "failed", False):
                self.failed = True
                raise OAuth2Error("down")
            return super().fetch()

    tokens = Flaky([3600], clock=lambda: 0.0)
    with pytest.raises(OAuth2Error):
        tokens.token()
    assert tokens.token() == "tok-1"


# -- the refresh-token grant -----------------------------------------------------------------

def test_refresh_token_grant_posts_the_grant_and_caches(
        provider: IdentityProvider, secret_files: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = RefreshTokenGrant(f"{provider.url}/token", secret_files["refresh_token_file"],
                               client_id=CLIENT_ID,
                               client_secret_file=secret_files["client_secret_file"],
                               scope="https://mail.google.com/")
    first = tokens.token()
    assert first == provider.issued[0] and first.startswith("tok-1-")
    assert tokens.token() == first, "cached, not fetched again"
    assert provider.token_requests == [{
        "grant_type": "refresh_token", "refresh_token": provider.refresh_token,
        "client_id": CLIENT_ID, "client_secret": provider.client_secret,
        "scope": "https://mail.google.com/"}]
    tokens.invalidate()
    assert tokens.token() == provider.issued[1]
    assert "new OAuth2 access token from token endpoint" in logs(caplog)
    assert_never_logged(caplog, *provider.issued, provider.refresh_token,
                        provider.client_secret)


def test_rotated_refresh_token_is_used_and_written_back(
        provider: IdentityProvider, secret_files: dict[str, str], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    provider.rotate = True
    first_rt = provider.refresh_token
    path = Path(secret_files["refresh_token_file"])
    tokens = RefreshTokenGrant(f"{provider.url}/token", str(path), client_id=CLIENT_ID,
                               client_secret_file=secret_files["client_secret_file"])
    tokens.token()
    assert provider.refresh_token != first_rt
    assert path.read_text().strip() == provider.refresh_token
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["client.secret", "refresh.token"]), "no temporary file left behind"
    tokens.invalidate()
    tokens.token()  # with the rotated token: the old one is refused by now
    assert [r["refresh_token"] for r in provider.token_requests][1] != first_rt
    assert path.read_text().strip() == provider.refresh_token

    # An operator's new consent in the file wins over the token held in memory.
    provider.refresh_token = "rt-new-consent-" + secrets.token_hex(8)
    path.write_text(provider.refresh_token + "\n")
    tokens.invalidate()
    tokens.token()
    assert provider.token_requests[-1]["refresh_token"].startswith("rt-new-consent-")
    assert_never_logged(caplog, *provider.issued,
                        *(r["refresh_token"] for r in provider.token_requests))


def test_rotated_refresh_token_that_cannot_be_saved_is_kept_in_memory(
        provider: IdentityProvider, secret_files: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    provider.rotate = True
    path = Path(secret_files["refresh_token_file"])
    on_disk = path.read_text()

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(oauth2.tempfile, "mkstemp", read_only)
    tokens = RefreshTokenGrant(f"{provider.url}/token", str(path), client_id=CLIENT_ID,
                               client_secret_file=secret_files["client_secret_file"])
    tokens.token()
    assert path.read_text() == on_disk
    assert "could not be written to refresh_token_file" in logs(caplog)
    tokens.invalidate()
    tokens.token()  # the rotated token from memory, not the retired one in the file
    assert len(provider.issued) == 2
    assert_never_logged(caplog, *provider.issued, provider.refresh_token)


def test_refused_and_unreachable_endpoints_are_named_without_secrets(
        provider: IdentityProvider, secret_files: dict[str, str], tmp_path: Path) -> None:
    stale = "rt-stale-" + secrets.token_hex(8)
    Path(secret_files["refresh_token_file"]).write_text(stale)
    tokens = RefreshTokenGrant(f"{provider.url}/token", secret_files["refresh_token_file"],
                               client_id=CLIENT_ID,
                               client_secret_file=secret_files["client_secret_file"])
    with pytest.raises(OAuth2Error) as refused:
        tokens.token()
    assert str(refused.value) == (f"token endpoint {provider.url}/token refused: HTTP 400 "
                                  "invalid_grant: Token has been expired or revoked.")
    assert stale not in str(refused.value) and provider.client_secret not in str(refused.value)

    gone = RefreshTokenGrant("http://127.0.0.1:9/token", secret_files["refresh_token_file"])
    with pytest.raises(OAuth2Error, match=r"token endpoint http://127.0.0.1:9/token could not "
                                          r"be reached: .*refused"):
        gone.token()

    missing = RefreshTokenGrant(f"{provider.url}/token", str(tmp_path / "nope"))
    with pytest.raises(OAuth2Error, match=r"cannot read refresh_token_file .*nope: No such"):
        missing.token()


# -- Microsoft: msal's client-credentials flow, answered locally -----------------------------

def test_microsoft_client_credentials_through_msal(
        provider: IdentityProvider, secret_files: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    http = ToLocalProvider(provider)
    tokens = MicrosoftClientCredentials(TENANT, CLIENT_ID, secret_files["client_secret_file"],
                                        http_client=http)
    first = tokens.token()
    assert first == provider.issued[0]
    assert tokens.token() == first
    [request] = provider.token_requests
    assert request["grant_type"] == "client_credentials"
    assert request["scope"] == MICROSOFT_IMAP_SCOPE
    assert request["client_secret"] == provider.client_secret
    assert any(u.endswith(f"/{TENANT}/v2.0/.well-known/openid-configuration")
               for u in http.urls), http.urls
    # Refused by the IMAP server: msal's own cache must not hand the same token back.
    tokens.invalidate()
    assert tokens.token() == provider.issued[1] != first
    assert_never_logged(caplog, *provider.issued, provider.client_secret)

    # A wrong secret is named, and the secret file is read again on the next try.
    Path(secret_files["client_secret_file"]).write_text("wrong-" + secrets.token_hex(4))
    tokens.invalidate()
    with pytest.raises(OAuth2Error, match="refused: invalid_client: AADSTS7000215") as bad:
        tokens.token()
    assert "wrong-" not in str(bad.value)
    Path(secret_files["client_secret_file"]).write_text(provider.client_secret)
    assert tokens.token() == provider.issued[2]


def test_token_source_follows_the_account(secret_files: dict[str, str]) -> None:
    base = {"name": "m", "host": "outlook.office365.com", "username": "desk@contoso.example",
            "auth": "oauth2"}
    ms = token_source(config.ImapAccount(
        **base, oauth2_provider="microsoft", tenant_id=TENANT, client_id=CLIENT_ID,
        client_secret_file=secret_files["client_secret_file"]))
    assert isinstance(ms, MicrosoftClientCredentials)
    assert ms.authority == f"{MICROSOFT}/{TENANT}" and ms.scope == MICROSOFT_IMAP_SCOPE
    assert ms.name == "imap account 'm'"
    generic = token_source(config.ImapAccount(
        **base, oauth2_provider="token_endpoint", token_url="https://idp.example/token",
        refresh_token_file=secret_files["refresh_token_file"]))
    assert isinstance(generic, RefreshTokenGrant)
    assert generic.token_url == "https://idp.example/token"


# -- configuration ---------------------------------------------------------------------------

def settings_with(tmp_path: Path, **imap: Any) -> config.Settings:
    account = {"name": "m", "host": "imap.example.org", "username": "desk", **imap}
    return config.from_dict({"state_dir": str(tmp_path), "imap": [account]})


def test_config_takes_oauth2_accounts(tmp_path: Path, secret_files: dict[str, str]) -> None:
    ms = settings_with(tmp_path, auth="oauth2", oauth2_provider="microsoft", tenant_id=TENANT,
                       client_id=CLIENT_ID, client_secret_file=secret_files["client_secret_file"],
                       oauth2_user="servicedesk@contoso.example").imap[0]
    assert ms.login_user == "servicedesk@contoso.example"
    generic = settings_with(tmp_path, auth="oauth2", oauth2_provider="token_endpoint",
                            token_url="https://oauth2.googleapis.com/token",
                            refresh_token_file=secret_files["refresh_token_file"]).imap[0]
    assert generic.login_user == "desk" and generic.password == ""
    assert settings_with(tmp_path, password="pw").imap[0].auth == "password"


@pytest.mark.parametrize(("imap", "key", "reason"), [
    ({"auth": "kerberos", "password": "pw"}, "auth", 'must be "password" or "oauth2"'),
    ({"password": "pw", "tenant_id": TENANT}, "tenant_id", 'only used with auth = "oauth2"'),
    ({"auth": "oauth2", "oauth2_provider": "microsoft", "tenant_id": TENANT,
      "client_id": CLIENT_ID, "client_secret_file": "{secret}", "password": "pw"},
     "password", 'not used with auth = "oauth2"'),
    ({"auth": "oauth2"}, "oauth2_provider", 'must be "microsoft" or "token_endpoint"'),
    ({"auth": "oauth2", "oauth2_provider": "google"}, "oauth2_provider", "got 'google'"),
    ({"auth": "oauth2", "oauth2_provider": "microsoft", "client_id": CLIENT_ID,
      "client_secret_file": "{secret}"}, "tenant_id", 'required with oauth2_provider = "micro'),
    ({"auth": "oauth2", "oauth2_provider": "microsoft", "tenant_id": TENANT,
      "client_id": CLIENT_ID, "client_secret_file": "/nonexistent/secret"},
     "client_secret_file", "cannot read /nonexistent/secret"),
    ({"auth": "oauth2", "oauth2_provider": "microsoft", "tenant_id": TENANT,
      "client_id": CLIENT_ID, "client_secret_file": "{secret}", "token_url": "https://x/t"},
     "token_url", 'not used with oauth2_provider = "microsoft"'),
    ({"auth": "oauth2", "oauth2_provider": "token_endpoint",
      "refresh_token_file": "{refresh}"}, "token_url", "is required"),
    ({"auth": "oauth2", "oauth2_provider": "token_endpoint", "token_url": "http://idp/token",
      "refresh_token_file": "{refresh}"}, "token_url", "must be an https:// URL"),
    ({"auth": "oauth2", "oauth2_provider": "token_endpoint", "token_url": "https://i/t",
      "refresh_token_file": "{refresh}", "tenant_id": TENANT}, "tenant_id", "not used with"),
])
def test_config_errors_name_the_key(tmp_path: Path, secret_files: dict[str, str],
                                    imap: dict[str, Any], key: str, reason: str) -> None:
    filled = {k: v.format(secret=secret_files["client_secret_file"],
                          refresh=secret_files["refresh_token_file"]) if isinstance(v, str)
              else v for k, v in imap.items()}
    with pytest.raises(config.ConfigError) as err:
        settings_with(tmp_path, **filled)
    assert err.value.key == f"imap[0].{key}"
    assert reason in err.value.reason


# -- against the real Dovecot ----------------------------------------------------------------

def test_xoauth2_login_retries_once_with_a_fresh_token(
        oauth2_dovecot: DovecotServer, provider: IdentityProvider,
        secret_files: dict[str, str]) -> None:
    account = config.ImapAccount(**token_endpoint_account(oauth2_dovecot, provider,
                                                          secret_files))
    tokens = token_source(account)
    first = tokens.token()
    provider.revoke(first)
    assert oauth2_dovecot.folder_exists(USER, PASSWORD, "INBOX"), "passwords work beside tokens"
    client = IMAPClient(oauth2_dovecot.host, port=oauth2_dovecot.port, ssl=False, timeout=5)
    try:
        oauth2_login(client, account, tokens)  # refused, refreshed, let in
        assert client.folder_exists("INBOX")
    finally:
        client.logout()
    assert provider.refused() == [first]
    assert len(provider.issued) == 2
    # Both tokens refused: the second refusal is the caller's.
    provider.revoke(provider.issued[1])
    provider.client_secret = "rotated-away"
    client = IMAPClient(oauth2_dovecot.host, port=oauth2_dovecot.port, ssl=False, timeout=5)
    try:
        with pytest.raises(OAuth2Error, match="invalid_client"):
            oauth2_login(client, account, tokens)
    finally:
        client.shutdown()


def test_poller_refreshes_a_refused_token_and_goes_on(
        oauth2_app: Callable[..., App], oauth2_dovecot: DovecotServer,
        provider: IdentityProvider, secret_files: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    """The issue's story: logged in with tok-1, a mail in; tok-1 stops being good (revoked, or
    expired before its time) and the session ends; the next login is refused, the poller gets
    tok-2 and takes the next mail. No token in the log, not even at DEBUG."""
    caplog.set_level(logging.DEBUG)
    server = oauth2_dovecot
    append(server, make_mail(EDITOR, "Eerste via OAuth2"))
    d = RunningDaemon(oauth2_app(token_endpoint_account(server, provider,
                                                         secret_files))).start()
    try:
        until(lambda: subjects(d.app) == ["Eerste via OAuth2"], timeout=20, what="first mail")
        assert d.daemon.imap is not None
        poller = d.daemon.imap.pollers[0]
        until(poller.idling.is_set, what="IDLE")
        [tok1] = provider.issued
        assert provider.introspected == [(tok1, True)]
        provider.revoke(tok1)
        kick(server)
        until(lambda: len(provider.issued) == 2, timeout=15, what="tok-2 fetched")
        until(poller.idling.is_set, what="IDLE again, logged in with tok-2")
        append(server, make_mail(EDITOR, "Tweede na verversen"))
        until(lambda: len(subjects(d.app)) == 2, timeout=15, what="second mail")
    finally:
        d.stop()
    assert subjects(d.app) == ["Eerste via OAuth2", "Tweede na verversen"]
    tok2 = provider.issued[1]
    assert provider.refused() == [tok1]
    assert provider.introspected[-1] == (tok2, True)
    assert [r["grant_type"] for r in provider.token_requests] == ["refresh_token"] * 2
    text = logs(caplog)
    assert "refused the OAuth2 token" in text
    assert "login failed" not in text, "the retry with a fresh token must have worked"
    assert_never_logged(caplog, tok1, tok2, provider.refresh_token, provider.client_secret)


def test_poller_with_microsoft_refreshes_before_expiry(
        oauth2_app: Callable[..., App], oauth2_dovecot: DovecotServer,
        provider: IdentityProvider, secret_files: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    """msal's client-credentials flow end to end; tokens live 62 s, so 2 s after the first
    login the poller takes a new one for its next login instead of waiting to be refused."""
    caplog.set_level(logging.DEBUG)
    provider.expires_in = 62
    server = oauth2_dovecot
    ms = {"auth": "oauth2", "oauth2_provider": "microsoft", "tenant_id": TENANT,
          "client_id": CLIENT_ID, "client_secret_file": secret_files["client_secret_file"],
          "token_url": "", "refresh_token_file": ""}
    app = oauth2_app(token_endpoint_account(server, provider, secret_files, **ms))
    account = app.settings.imap[0]
    poller = ImapPoller(account, *imap_callables(app))
    assert isinstance(poller.tokens, MicrosoftClientCredentials)
    poller.tokens = token_source(account, http_client=ToLocalProvider(provider))
    append(server, make_mail(EDITOR, "Via Microsoft"))
    poller.start()
    try:
        until(lambda: subjects(app) == ["Via Microsoft"], timeout=20, what="first mail")
        until(poller.idling.is_set, what="IDLE")
        time.sleep(2.1)  # now less than 60 s from the token's expiry
        kick(server)
        until(lambda: len(provider.issued) == 2, timeout=15, what="a token before expiry")
        until(poller.idling.is_set, what="IDLE again")
        append(server, make_mail(EDITOR, "Na verversen"))
        until(lambda: len(subjects(app)) == 2, timeout=15, what="second mail")
    finally:
        poller.stop()
        poller.abort()
        assert poller.join(5)
    assert provider.refused() == [], "refreshed before expiry, never refused"
    assert [r["grant_type"] for r in provider.token_requests] == ["client_credentials"] * 2
    assert_never_logged(caplog, *provider.issued, provider.client_secret)


def test_login_refused_twice_is_logged_and_backed_off(
        oauth2_app: Callable[..., App], oauth2_dovecot: DovecotServer,
        provider: IdentityProvider, secret_files: dict[str, str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A token for another mailbox (oauth2_user wrong): refused even when fresh; named in the
    log with the user, retried with backoff, never a loop of token requests."""
    caplog.set_level(logging.INFO, logger="mailgate")
    app = oauth2_app(token_endpoint_account(oauth2_dovecot, provider, secret_files,
                                            oauth2_user="someone-else"))
    poller = ImapPoller(app.settings.imap[0], *imap_callables(app),
                        tuning=Tuning(backoff=Backoff(initial=30)))
    poller.start()
    try:
        until(lambda: "login failed for user 'someone-else'" in logs(caplog), timeout=15,
              what="the login failure")
        assert "with an OAuth2 token (XOAUTH2)" in logs(caplog)
        time.sleep(0.3)
        assert len(provider.issued) == 2, "one retry with a fresh token, then backoff"
        # Dovecot refused both: introspection said active, but for another user.
        assert [active for _, active in provider.introspected] == [True, True]
        assert "refused the OAuth2 token" in logs(caplog)
    finally:
        poller.stop()
        poller.abort()
        assert poller.join(5)
    assert_never_logged(caplog, *provider.issued)
