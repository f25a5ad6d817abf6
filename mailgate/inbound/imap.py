"""The IMAP way in: one poller per ``[[imap]]`` account, each in its own thread.

This module's sole job is to move mail from a mailbox into the inbound store exactly once.
imapclient blocks, so every account runs its own connection in its own thread; the event
loop of the daemon never waits on an IMAP server, and one broken account never holds up
another one or the SMTP listener.

One session of an account::

    connect → LOGIN → check folders → SELECT → loop { drain ; wait }

(with ``auth = "oauth2"``, ``AUTHENTICATE XOAUTH2`` instead of LOGIN: :func:`oauth2_login`.)

*drain*: ``UID SEARCH UNDELETED`` (mail someone flagged ``\\Deleted`` is theirs to expunge),
then per chunk ``UID FETCH BODY.PEEK[]`` (RFC 3501 §6.4.5: PEEK leaves ``\\Seen`` alone, so
nothing looks read before it is ours), store the raw bytes and commit
(:func:`~mailgate.inbound.store.store_raw`), process the row, and only then ``UID MOVE`` it
(RFC 6851) to ``processed_folder`` — or to ``failed_folder`` when it ended in quarantine.
*wait*: ``IDLE`` (RFC 2177) where the server offers it, else a poll every ``poll_interval``
seconds.

Exactly once: the mail leaves the folder only after its row is committed, so a crash can
only leave a stored mail behind, never lose one; on the next pass the same bytes hit the
store's dedup key (docs/design.md §1.2), the existing row is looked at instead of making a new one,
and the mail is moved on. No second ticket, no second acknowledgement.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from mailgate.config import ImapAccount
from mailgate.db.engine import StorageUnavailable, is_unavailable
from mailgate.db.status import InboundStatus
from mailgate.inbound.leader import Lead, LeadLost, Leads
from mailgate.inbound.oauth2 import OAuth2Error, TokenSource, token_source
from mailgate.inbound.store import Stored

log = logging.getLogger(__name__)

DELETED = b"\\Deleted"
# RFC 2177 §3: servers may drop a client idling for 30 minutes; re-issue IDLE well before.
IDLE_RENEW_SECONDS = 25 * 60


class FolderMissing(Exception):
    """The account's source folder does not exist on the server (a configuration error)."""

    def __init__(self, folder: str) -> None:
        super().__init__(f"folder {folder!r} does not exist")
        self.folder = folder


class PasswordUnreadable(Exception):
    """``password_file`` cannot be read (moved, or its permissions changed since start)."""


class ConnectionLost(Exception):
    """The server ended or broke the session: ``BYE``, end of stream, or an untagged ``NO``
    during IDLE (Dovecot's answer when the selected folder is deleted under us)."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: ``initial``, doubling on each failure, up to ``cap``."""

    initial: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1-based)."""
        return min(self.cap, self.initial * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True)
class Tuning:
    """Knobs that are not account settings; the defaults suit production and tests."""

    backoff: Backoff = field(default_factory=Backoff)
    idle_renew_seconds: float = IDLE_RENEW_SECONDS
    # How often a thread in IDLE looks up to see whether it should stop.
    idle_check_seconds: float = 1.0
    # Messages fetched per UID FETCH: fewer round trips, bounded memory.
    fetch_batch: int = 10
    # Pause before re-scanning when a pass had to leave mail in the folder.
    rescan_seconds: float = 0.5
    # False forces COPY + STORE \Deleted + UID EXPUNGE even where MOVE is offered.
    use_move: bool = True
    ssl_context: ssl.SSLContext | None = None


# Commits the raw bytes under a channel name; raises when storage is unavailable.
Store = Callable[[bytes, str], Stored]
# Processes a stored row (or waits, bounded, for whoever has it) and returns its status;
# the second argument says when to stop waiting.
Settle = Callable[[int, Callable[[], bool]], str]


@dataclass(frozen=True)
class Taken:
    """What became of one fetched mail: its row, the row's status, where the mail goes."""

    uid: int
    inbound_id: int
    status: str
    duplicate: bool
    destination: str | None  # None: still pending elsewhere, leave it in the folder


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def destination(account: ImapAccount, status: str) -> str | None:
    """Quarantined mail goes to the failed folder; a settled row to the processed one."""
    if status == InboundStatus.PENDING:
        return None
    return (account.failed_folder if status == InboundStatus.QUARANTINED
            else account.processed_folder)


def ends_session(responses: Iterable[tuple[object, ...]]) -> bool:
    """``BYE`` ends the session (RFC 3501 §7.1.5); an untagged ``NO`` or ``BAD`` during IDLE
    means the selected folder is no longer what we think: start a fresh session."""
    return any(r[:1] in ((b"BYE",), (b"NO",), (b"BAD",)) for r in responses)


def has_new_mail(responses: Iterable[tuple[object, ...]]) -> bool:
    """An untagged ``n EXISTS`` (RFC 3501 §7.3.1) is how IDLE announces new mail."""
    return any(len(r) > 1 and r[1] == b"EXISTS" for r in responses)


def describe(responses: Iterable[tuple[object, ...]]) -> str:
    """Untagged responses as the server wrote them, for a log line."""
    def text(part: object) -> str:
        return part.decode(errors="replace") if isinstance(part, bytes) else str(part)
    return "; ".join(" ".join(text(p) for p in r) for r in responses)


class ImapPoller:
    """Fetches one account's mail into the store, in a thread of its own.

    It gets the two callables it needs, ``store`` and ``settle``, wired by the daemon (a way
    in never holds the worker or the app). ``on_processed`` is called (from this thread)
    after each chunk of processed mail, so the daemon sends the acknowledgements at once
    instead of at its next sweep.
    """

    def __init__(self, account: ImapAccount, store: Store, settle: Settle, *,
                 on_processed: Callable[[], None] = lambda: None,
                 tuning: Tuning | None = None, lead: Lead | None = None) -> None:
        self.account = account
        # Several instances on PostgreSQL: poll only while holding the account's lock.
        self.lead = lead
        self.store = store
        self.settle = settle
        self.on_processed = on_processed
        self.tuning = tuning or Tuning()
        self.channel = f"imap:{account.name}"
        # auth = "oauth2": where the access tokens come from; kept across sessions.
        self.tokens: TokenSource | None = (token_source(account) if account.auth == "oauth2"
                                           else None)
        self.uidvalidity: int | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._client: IMAPClient | None = None
        self._thread: threading.Thread | None = None
        self._selected = False
        # Set while the connection sits in IDLE: for tests, health checks and the bench.
        self.idling = threading.Event()
        # Read by /metrics and /healthz (wall-clock seconds): the last search that worked,
        # and since when the account has failed without one in between (None: it works).
        self.last_ok_at: float | None = None
        self.failing_since: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"imap-{self.account.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after the mail in hand; see :meth:`abort` for a hard stop."""
        self._stop.set()

    def abort(self) -> None:
        """Cut the connection so that a thread blocked on the network gives up now. Safe:
        a mail is moved only after its commit, so whatever was in flight is fetched again.
        (A connection still waiting for the server's greeting is not registered yet; it
        ends at ``timeout_seconds``.)"""
        self._stop.set()
        with self._lock:
            client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                # The plain socket's shutdown, also under TLS: it wakes a blocked reader
                # without touching the SSL object that reader is using.
                socket.socket.shutdown(client.socket(), socket.SHUT_RDWR)

    def join(self, timeout: float | None = None) -> bool:
        """True when the thread has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def run(self) -> None:
        """Sessions until stopped; every failure is logged with the account and retried."""
        failures = 0
        while not self._stop.is_set():
            self._selected = False
            if self.lead is not None and not self.lead.held \
                    and not self.lead.acquire(self._stop):
                break
            failure: Exception | None = None
            try:
                self._session()
            except Exception as exc:
                failure = exc
            finally:
                self._disconnect()  # before the backoff: no half-dead session held open
            if failure is None or self._stop.is_set():
                continue
            if isinstance(failure, LeadLost):
                log.warning("imap account %r: storage unavailable, mail left in %r: %s; "
                            "polling again once this instance holds the lock",
                            self.account.name, self.account.folder, failure)
                continue  # back to waiting for the lock, which may be free again at once
            if self.lead is not None and not self._selected:
                # Cannot even log in (a wrong password here, say): let an instance that
                # can have the mailbox meanwhile.
                self.lead.release()
            # An account that worked up to SELECT retries from the short delay again.
            failures = 1 if self._selected else failures + 1
            delay = self.tuning.backoff.delay(failures)
            if self.failing_since is None:
                self.failing_since = time.time()
            self._log_failure(failure, delay)
            self._stop.wait(delay)
        if self.lead is not None:
            self.lead.release()
        log.info("imap account %r: stopped", self.account.name)

    # -- one session -----------------------------------------------------------------------

    def _session(self) -> None:
        client = self._connect()
        self._check_folders(client)
        self._select(client)
        self._selected = True
        self._watch(client)

    def _connect(self) -> IMAPClient:
        a = self.account
        password = ""
        if self.tokens is not None:
            # Before connecting: a token endpoint that is down holds no IMAP session open.
            self.tokens.token()
        else:
            try:
                password = a.read_password()
            except OSError as exc:
                raise PasswordUnreadable(f"cannot read password_file {a.password_file}: "
                                         f"{exc.strerror or exc}") from exc
        client = IMAPClient(a.host, port=a.port, ssl=a.ssl, ssl_context=self.tuning.ssl_context,
                            timeout=a.timeout_seconds)
        with self._lock:
            self._client = client
        if self._stop.is_set():
            raise ConnectionLost("stopping")
        if a.starttls:
            client.starttls(self.tuning.ssl_context or ssl.create_default_context())
        if self.tokens is not None:
            oauth2_login(client, a, self.tokens)
        else:
            client.login(a.username, password)
        return client

    def _check_folders(self, client: IMAPClient) -> None:
        """The source folder must exist (it is the operator's); ours are made when missing."""
        a = self.account
        if not client.folder_exists(a.folder):
            raise FolderMissing(a.folder)
        for folder in (a.processed_folder, a.failed_folder):
            if client.folder_exists(folder):
                continue
            try:
                client.create_folder(folder)
                log.info("imap account %r: created folder %r", a.name, folder)
            except IMAPClientError:
                # Another poller on the same mailbox may have made it just now.
                if not client.folder_exists(folder):
                    raise

    def _select(self, client: IMAPClient) -> None:
        """RFC 3501 §2.3.1.1: a new UIDVALIDITY means old UIDs name other mails now. We keep
        no UIDs across passes (mail leaves the folder once stored) and the store dedups, so
        a change only calls for a full re-scan, which every pass does anyway."""
        info = client.select_folder(self.account.folder)
        value = info.get(b"UIDVALIDITY")
        uidvalidity = int(value) if value is not None else None
        if self.uidvalidity is not None and uidvalidity != self.uidvalidity:
            log.warning("imap account %r: UIDVALIDITY of %r changed from %s to %s; "
                        "re-scanning the whole folder", self.account.name, self.account.folder,
                        self.uidvalidity, uidvalidity)
        self.uidvalidity = uidvalidity

    def _watch(self, client: IMAPClient) -> None:
        a = self.account
        idle = a.idle and client.has_capability("IDLE")
        log.info("imap account %r: watching %r on %s:%s (%s)", a.name, a.folder, a.host, a.port,
                 "IDLE" if idle else f"polling every {a.poll_interval:g}s")
        while not self._stop.is_set():
            if self.lead is not None:
                self.lead.check()  # between passes: no pass without the lock
            uids = sorted(client.search(["UNDELETED"]))
            self.last_ok_at, self.failing_since = time.time(), None
            if uids:
                moved = self._drain(client, uids)
                if moved < len(uids):
                    self._stop.wait(self.tuning.rescan_seconds)
                # Search again before waiting: mail that came during the drain may have been
                # announced in a response we did not read, and IDLE would not repeat it.
                continue
            if idle:
                self._idle(client)
            else:
                self._stop.wait(a.poll_interval)

    def _idle(self, client: IMAPClient) -> None:
        """RFC 2177: wait for ``EXISTS``. The round is re-issued within ``poll_interval`` (and
        always before the 29-minute limit), so a notification a server forgot to send costs
        at most one poll interval."""
        client.idle()
        self.idling.set()
        ends = time.monotonic() + min(self.tuning.idle_renew_seconds, self.account.poll_interval)
        while not self._stop.is_set():
            left = ends - time.monotonic()
            if left <= 0:
                break
            timeout = min(self.tuning.idle_check_seconds, left)
            started = time.monotonic()
            responses = client.idle_check(timeout=timeout)
            if ends_session(responses):
                raise ConnectionLost(f"server ended the session: {describe(responses)}")
            if has_new_mail(responses):
                break
            if not responses and time.monotonic() - started < timeout / 2:
                # The socket woke up but held no whole line: end of stream, most likely.
                # DONE below either works or raises, which tells us which it was.
                break
        self.idling.clear()
        client.idle_done()

    # -- moving mail -----------------------------------------------------------------------

    def _drain(self, client: IMAPClient, uids: list[int]) -> int:
        """Stores, processes and moves the given mails; returns how many were moved."""
        moved = 0
        for chunk in chunks(uids, self.tuning.fetch_batch):
            if self._stop.is_set():
                break
            fetched = client.fetch(chunk, [b"BODY.PEEK[]"])
            targets: dict[str, list[int]] = {}
            try:
                for uid in chunk:
                    if self._stop.is_set():
                        break
                    # Popped, not read: a big mail is not held here while it is processed.
                    entry = fetched.pop(uid, {})
                    if b"BODY[]" not in entry:
                        continue  # expunged by someone else since the search
                    taken = self._take(uid, bytes(entry.pop(b"BODY[]")))
                    if taken.destination:
                        targets.setdefault(taken.destination, []).append(uid)
            finally:
                # Whatever was committed moves on, even when a later mail hit an outage.
                for folder, group in targets.items():
                    self._move(client, group, folder)
                    moved += len(group)
                if targets:
                    # Once per chunk, not per mail: on SQLite the sender's writes would
                    # otherwise queue behind ours for the one write lock, mail by mail.
                    self._notify()
        return moved

    def _take(self, uid: int, raw: bytes) -> Taken:
        """Store-first, then process: the move that follows depends on the outcome."""
        stored = self.store(raw, self.channel)
        del raw  # committed: the worker reads its own copy
        status = self.settle(stored.inbound_id, self._stop.is_set)
        if stored.duplicate:
            log.info("imap account %r: uid %s is inbound %s, stored before (%s); moving it on",
                     self.account.name, uid, stored.inbound_id, status)
        return Taken(uid, stored.inbound_id, status, stored.duplicate,
                     destination(self.account, status))

    def _move(self, client: IMAPClient, uids: list[int], folder: str) -> None:
        """RFC 6851 MOVE is atomic. Without it: COPY, flag \\Deleted, and expunge only these
        UIDs (RFC 4315 UID EXPUNGE); a crash in between leaves a copy in both folders,
        which the dedup turns into a second move, not a second ticket."""
        if self.tuning.use_move and client.has_capability("MOVE"):
            client.move(uids, folder)
            return
        client.copy(uids, folder)
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()  # also removes what others flagged \Deleted; RFC 3501 offers no less

    def _notify(self) -> None:
        # The daemon's loop may be closing when we get here; the ack then goes at its sweep.
        with contextlib.suppress(RuntimeError):
            self.on_processed()

    # -- failures --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Logged in with the folder selected (for /metrics)."""
        return self._selected and self._client is not None

    def _disconnect(self) -> None:
        # Left in IDLE by an error: LOGOUT would only be read as a bad DONE, and waited on.
        polite = not self.idling.is_set()
        self.idling.clear()
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        if polite:
            with contextlib.suppress(Exception):
                client.socket().settimeout(min(5.0, self.account.timeout_seconds))
                client.logout()  # also closes the socket
                return
        with contextlib.suppress(Exception):
            client.shutdown()

    def _log_failure(self, exc: Exception, delay: float) -> None:
        a = self.account
        where = f"{a.host}:{a.port}"
        name = a.name
        if isinstance(exc, LoginError):
            log.error("imap account %r: login failed for user %r on %s%s: %s; retrying in %gs",
                      name, a.login_user, where,
                      " with an OAuth2 token (XOAUTH2)" if self.tokens else "", _text(exc),
                      delay)
        elif isinstance(exc, OAuth2Error):
            log.error("imap account %r: no OAuth2 access token: %s; retrying in %gs",
                      name, exc, delay)
        elif isinstance(exc, PasswordUnreadable):
            log.error("imap account %r: %s; retrying in %gs", name, exc, delay)
        elif isinstance(exc, FolderMissing):
            log.error("imap account %r: folder %r does not exist on %s (user %r); "
                      "retrying in %gs", name, exc.folder, where, a.username, delay)
        elif isinstance(exc, StorageUnavailable) or is_unavailable(exc):
            log.warning("imap account %r: storage unavailable, mail left in %r: %s; "
                        "retrying in %gs", name, a.folder, _text(exc), delay)
        elif isinstance(exc, TimeoutError):
            log.warning("imap account %r: %s timed out after %gs; retrying in %gs",
                        name, where, a.timeout_seconds, delay)
        elif isinstance(exc, OSError | IMAPClientAbortError | ConnectionLost):
            log.warning("imap account %r: connection to %s failed or lost: %s; "
                        "retrying in %gs", name, where, _text(exc), delay)
        elif isinstance(exc, IMAPClientError):
            log.warning("imap account %r: server %s refused: %s; retrying in %gs",
                        name, where, _text(exc), delay)
        else:
            log.exception("imap account %r: unexpected error; retrying in %gs", name, delay)


def oauth2_login(client: IMAPClient, account: ImapAccount, tokens: TokenSource) -> None:
    """SASL XOAUTH2 with the cached token. A refused token may have been revoked or have
    expired early: it is dropped and the login tried once more, on the same connection, with
    a fresh one; a second refusal goes up as the :class:`LoginError`. The token is never
    logged (imapclient's own debug log hides AUTHENTICATE too)."""
    try:
        client.oauth2_login(account.login_user, tokens.token())
    except LoginError as exc:
        log.info("imap account %r: %s refused the OAuth2 token (%s); fetching a new one",
                 account.name, f"{account.host}:{account.port}", _text(exc))
        tokens.invalidate()
        client.oauth2_login(account.login_user, tokens.token())


def _text(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.removeprefix("b'").removesuffix("'") if text.startswith("b'") else text


class ImapPollers:
    """Every account's poller, started and stopped together by the daemon."""

    def __init__(self, accounts: Iterable[ImapAccount], store: Store, settle: Settle,
                 on_processed: Callable[[], None] = lambda: None,
                 tuning: Tuning | None = None, leads: Leads | None = None) -> None:
        self.pollers = [ImapPoller(account, store, settle, on_processed=on_processed,
                                   tuning=tuning, lead=leads(account) if leads else None)
                        for account in accounts]

    def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    def stop(self, grace: float = 3.0) -> None:
        """Let each thread finish the mail in hand, then cut connections still busy."""
        for poller in self.pollers:
            poller.stop()
        deadline = time.monotonic() + grace
        late = [p for p in self.pollers if not p.join(max(0.0, deadline - time.monotonic()))]
        for poller in late:
            log.warning("imap account %r: still busy at stop; closing its connection",
                        poller.account.name)
            poller.abort()
        for poller in late:
            if not poller.join(5.0):
                log.error("imap account %r: thread did not end", poller.account.name)
