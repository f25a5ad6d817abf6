"""OAuth2 access tokens for IMAP (SASL XOAUTH2), for mailboxes that take no password.

Microsoft 365 and Gmail refuse plain passwords over IMAP. An ``[[imap]]`` account with
``auth = "oauth2"`` gets its access token from one of two places:

* ``oauth2_provider = "microsoft"``: the Microsoft identity platform's client-credentials
  flow (an app registration with the ``IMAP.AccessAsApp`` permission), through msal; the
  scope is ``https://outlook.office365.com/.default``.
* ``oauth2_provider = "token_endpoint"``: any OAuth2 token endpoint, with the refresh-token
  grant (RFC 6749 §6) and a refresh token that an operator obtained once (Gmail, or a
  delegated Microsoft consent, or a company's own identity provider).

A :class:`TokenSource` keeps its token until it is less than :data:`REFRESH_MARGIN` seconds
from expiry, and drops it on :meth:`TokenSource.invalidate` (the poller calls that when the
IMAP server refuses the token, then tries once more with a fresh one).

Secrets are read from files, each time a token is fetched, so that an operator can rotate
them without a restart. No access token, refresh token or client secret ever goes into a log
line or an exception message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mailgate.config import ImapAccount

log = logging.getLogger(__name__)

# A token this close to its expiry is not used for a new login any more.
REFRESH_MARGIN = 60.0
MICROSOFT_AUTHORITY_HOST = "https://login.microsoftonline.com"
MICROSOFT_IMAP_SCOPE = "https://outlook.office365.com/.default"

Clock = Callable[[], float]


class OAuth2Error(Exception):
    """No access token could be had: the endpoint refused or could not be reached, or a
    secret file could not be read. The message names the cause, never a secret."""


class TokenSource(Protocol):
    def token(self) -> str:
        """A valid access token: the cached one, or a fresh one when it is (nearly) expired."""
        ...

    def invalidate(self) -> None:
        """Forget the cached token: the server refused it; the next :meth:`token` fetches."""
        ...


@dataclass(frozen=True)
class Grant:
    """What a token endpoint gave: the access token and its lifetime in seconds, if said."""

    access_token: str
    expires_in: float | None = None


def read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OAuth2Error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _lifetime(value: object) -> float | None:
    """``expires_in`` as a number of seconds; some servers send it as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return None


class CachedTokenSource:
    """The caching half of every token source; subclasses implement :meth:`fetch`.

    A token without ``expires_in`` is kept until the server refuses it. Lifetimes are
    measured on ``clock`` (monotonic: a wall-clock jump neither keeps nor drops a token)
    from the moment before the request, so the cached expiry is never later than the real one.
    """

    def __init__(self, *, name: str = "oauth2", clock: Clock = time.monotonic,
                 margin: float = REFRESH_MARGIN) -> None:
        self.name = name
        self._clock = clock
        self._margin = margin
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at: float | None = None
        self.fetches = 0

    @property
    def expires_at(self) -> float | None:
        """When the cached token expires, on ``clock``; None when none is cached or no
        lifetime was given."""
        return self._expires_at if self._token is not None else None

    def _fresh(self, now: float) -> bool:
        return self._token is not None and (self._expires_at is None
                                            or now < self._expires_at - self._margin)

    def token(self) -> str:
        with self._lock:
            now = self._clock()
            if self._fresh(now):
                assert self._token is not None
                return self._token
            grant = self.fetch()
            if not grant.access_token:
                raise OAuth2Error(f"{self.describe()} answered without an access_token")
            self.fetches += 1
            self._token = grant.access_token
            self._expires_at = None if grant.expires_in is None else now + grant.expires_in
            log.info("%s: new OAuth2 access token from %s (%s)", self.name, self.describe(),
                     "no expiry given" if grant.expires_in is None
                     else f"expires in {grant.expires_in:g}s")
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None
            self._expires_at = None

    def fetch(self) -> Grant:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


class MicrosoftClientCredentials(CachedTokenSource):
    """The client-credentials flow of the Microsoft identity platform, through msal (imported
    on first use). ``http_client`` is msal's own hook (an object with ``get`` and ``post``
    like a requests session); tests use it to answer in Microsoft's place."""

    def __init__(self, tenant_id: str, client_id: str, client_secret_file: str, *,
                 scope: str = MICROSOFT_IMAP_SCOPE,
                 authority_host: str = MICROSOFT_AUTHORITY_HOST,
                 timeout: float = 30.0, http_client: Any = None,
                 name: str = "oauth2", clock: Clock = time.monotonic,
                 margin: float = REFRESH_MARGIN) -> None:
        super().__init__(name=name, clock=clock, margin=margin)
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret_file = client_secret_file
        self.scope = scope
        self.authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        self.timeout = timeout
        self.http_client = http_client
        self._app: Any = None

    def describe(self) -> str:
        return f"the Microsoft identity platform ({self.authority})"

    def invalidate(self) -> None:
        super().invalidate()
        # msal keeps the token in its own cache too: a new application starts without it
        # (and reads a client secret the operator may have replaced).
        self._app = None

    def _application(self) -> Any:
        if self._app is None:
            try:
                import msal  # type: ignore[import-untyped]
            except ImportError as exc:  # pragma: no cover - msal is a dependency
                raise OAuth2Error("oauth2_provider = \"microsoft\" needs the msal package "
                                  "(pip install msal)") from exc
            secret = read_secret(self.client_secret_file, "client_secret_file")
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id, authority=self.authority, client_credential=secret,
                    http_client=self.http_client, timeout=self.timeout,
                    token_cache=msal.TokenCache())
            except Exception as exc:
                # msal looks the tenant up on construction: network errors come out here.
                raise OAuth2Error(f"{self.describe()}: {_first_line(exc)}") from exc
        return self._app

    def fetch(self) -> Grant:
        app = self._application()
        try:
            result = app.acquire_token_for_client(scopes=[self.scope])
        except Exception as exc:
            self._app = None
            raise OAuth2Error(f"{self.describe()} could not be reached: "
                              f"{_first_line(exc)}") from exc
        if not isinstance(result, dict) or "access_token" not in result:
            # A refused secret: build the application anew next time, from the file.
            self._app = None
            result = result if isinstance(result, dict) else {}
            raise OAuth2Error(f"{self.describe()} refused: {_error_text(result)}")
        return Grant(str(result["access_token"]), _lifetime(result.get("expires_in")))


class RefreshTokenGrant(CachedTokenSource):
    """RFC 6749 §6: ``grant_type=refresh_token`` POSTed to ``token_url``.

    The refresh token is read from ``refresh_token_file``. When the endpoint hands out a new
    one (rotation), it is used from then on and written back to the file (atomically, same
    permissions), so that a restart does not present a token the server has retired; if the
    file cannot be written, the new token still serves until the restart and a warning says
    so. A file an operator replaced (a new consent) wins over the token held in memory.
    """

    def __init__(self, token_url: str, refresh_token_file: str, *, client_id: str = "",
                 client_secret_file: str = "", scope: str = "", timeout: float = 30.0,
                 name: str = "oauth2", clock: Clock = time.monotonic,
                 margin: float = REFRESH_MARGIN) -> None:
        super().__init__(name=name, clock=clock, margin=margin)
        self.token_url = token_url
        self.refresh_token_file = refresh_token_file
        self.client_id = client_id
        self.client_secret_file = client_secret_file
        self.scope = scope
        self.timeout = timeout
        self._refresh_token = ""
        self._in_file = ""  # what the file held when last read or written by us

    def describe(self) -> str:
        # Without its query, where a careless URL might carry a key.
        return f"token endpoint {self.token_url.partition('?')[0]}"

    def _current_refresh_token(self) -> str:
        on_disk = read_secret(self.refresh_token_file, "refresh_token_file")
        if on_disk != self._in_file:
            self._in_file = self._refresh_token = on_disk
        if not self._refresh_token:
            raise OAuth2Error(f"refresh_token_file {self.refresh_token_file} is empty")
        return self._refresh_token

    def fetch(self) -> Grant:
        form = {"grant_type": "refresh_token", "refresh_token": self._current_refresh_token()}
        if self.client_id:
            form["client_id"] = self.client_id
        if self.client_secret_file:
            form["client_secret"] = read_secret(self.client_secret_file, "client_secret_file")
        if self.scope:
            form["scope"] = self.scope
        request = urllib.request.Request(
            self.token_url, data=urllib.parse.urlencode(form).encode("ascii"), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise OAuth2Error(f"{self.describe()} refused: HTTP {exc.code}"
                              f"{_http_error_details(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise OAuth2Error(f"{self.describe()} could not be reached: {reason}") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise OAuth2Error(f"{self.describe()} answered with no JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise OAuth2Error(f"{self.describe()} answered without an access_token"
                              + (f": {_error_text(data)}" if isinstance(data, dict) else ""))
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != self._refresh_token:
            self._refresh_token = rotated
            self._write_back(rotated)
        return Grant(data["access_token"], _lifetime(data.get("expires_in")))

    def _write_back(self, refresh_token: str) -> None:
        path = Path(self.refresh_token_file)
        try:
            mode = path.stat().st_mode & 0o777
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    os.fchmod(fh.fileno(), mode)
                    fh.write(refresh_token + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("%s: %s sent a new refresh token, which could not be written to "
                        "refresh_token_file %s (%s); it is used until mailgate restarts, "
                        "after which the file's older token may be refused",
                        self.name, self.describe(), path, exc.strerror or exc)
            return
        self._in_file = refresh_token
        log.info("%s: %s rotated the refresh token; saved to %s", self.name, self.describe(),
                 path)


def token_source(account: ImapAccount, *, clock: Clock = time.monotonic,
                 http_client: Any = None) -> CachedTokenSource:
    """The token source an ``auth = "oauth2"`` account's settings describe."""
    name = f"imap account {account.name!r}"
    if account.oauth2_provider == "microsoft":
        return MicrosoftClientCredentials(
            account.tenant_id, account.client_id, account.client_secret_file,
            scope=account.oauth2_scope or MICROSOFT_IMAP_SCOPE,
            timeout=account.timeout_seconds, http_client=http_client, name=name, clock=clock)
    if account.oauth2_provider == "token_endpoint":
        return RefreshTokenGrant(
            account.token_url, account.refresh_token_file, client_id=account.client_id,
            client_secret_file=account.client_secret_file, scope=account.oauth2_scope,
            timeout=account.timeout_seconds, name=name, clock=clock)
    raise OAuth2Error(f"unknown oauth2_provider {account.oauth2_provider!r}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _http_error_details(exc: urllib.error.HTTPError) -> str:
    """`` invalid_grant: ...`` from the JSON body of a refusal, or nothing."""
    try:
        data = json.loads(exc.read())
    except Exception:
        return ""
    return f" {_error_text(data)}" if isinstance(data, dict) else ""


def _error_text(data: dict[str, Any]) -> str:
    """RFC 6749 §5.2 error fields: ``error`` and the first line of ``error_description``."""
    error = str(data.get("error") or "no error code")
    description = str(data.get("error_description") or "").strip()
    return f"{error}: {description.splitlines()[0]}" if description else error
