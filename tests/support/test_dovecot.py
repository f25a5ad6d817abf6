"""Proves tests/support/dovecot.py against a real Dovecot server (the ``dovecot_server``
fixture is in tests/conftest.py)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from .dovecot import (
    DEFAULT_PASSWORD,
    DEFAULT_USER,
    DovecotError,
    DovecotServer,
    require_dovecot,
)

USER, PASSWORD = DEFAULT_USER, DEFAULT_PASSWORD

pytestmark = pytest.mark.timeout(30)


def _message(n: int) -> bytes:
    return (
        f"From: sender{n}@example.com\r\n"
        f"To: desk@example.com\r\n"
        f"Subject: test {n}\r\n"
        f"Message-ID: <msg{n}@example.com>\r\n"
        "\r\n"
        f"body {n}\r\n"
    ).encode()


def test_start_login_append_and_list(dovecot_server: DovecotServer) -> None:
    server = dovecot_server
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.log_path.is_file()

    with server.imap_client(USER, PASSWORD) as client:
        assert b"IDLE" in client.capabilities()
        assert b"MOVE" in client.capabilities()

    uids = [server.append(USER, PASSWORD, "INBOX", _message(n)) for n in range(3)]
    assert uids == [1, 2, 3]
    assert server.list_uids(USER, PASSWORD, "INBOX") == [1, 2, 3]

    bodies = server.fetch_all(USER, PASSWORD, "INBOX")
    assert [b.replace(b"\r\n", b"\n") for b in bodies] == [
        _message(n).replace(b"\r\n", b"\n") for n in range(3)
    ]
    # Mail really is on disk in the Maildir under base_dir.
    assert len(list((server.maildir(USER) / "new").iterdir())) == 3


def test_move_to_other_folder(dovecot_server: DovecotServer) -> None:
    server = dovecot_server
    for n in range(3):
        server.append(USER, PASSWORD, "INBOX", _message(n))
    assert not server.folder_exists(USER, PASSWORD, "Archive")
    server.create_folder(USER, PASSWORD, "Archive")
    assert server.folder_exists(USER, PASSWORD, "Archive")

    with server.imap_client(USER, PASSWORD) as client:
        client.select_folder("INBOX")
        client.move([2], "Archive")

    assert server.list_uids(USER, PASSWORD, "INBOX") == [1, 3]
    archived = server.fetch_all(USER, PASSWORD, "Archive")
    assert len(archived) == 1
    assert b"Subject: test 1" in archived[0]


def test_idle_wakes_up_on_new_mail(dovecot_server: DovecotServer) -> None:
    server = dovecot_server
    appended = threading.Event()
    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            # Give the main connection time to enter IDLE first, so the
            # wake-up must come from IDLE and not from SELECT.
            time.sleep(0.3)
            server.append(USER, PASSWORD, "INBOX", _message(42))
            appended.set()
        except BaseException as exc:
            errors.append(exc)

    with server.imap_client(USER, PASSWORD) as client:
        client.select_folder("INBOX")
        client.idle()
        sender = threading.Thread(target=deliver, daemon=True)
        sender.start()
        responses: list[tuple[int | bytes, ...]] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(r[1:2] == (b"EXISTS",) for r in responses):
            responses.extend(client.idle_check(timeout=1))
        client.idle_done()
        sender.join(timeout=5)

    assert not errors, errors
    assert appended.is_set()
    assert (1, b"EXISTS") in responses, responses


def test_restart_keeps_mail_and_port(dovecot_server: DovecotServer) -> None:
    server = dovecot_server
    server.append(USER, PASSWORD, "INBOX", _message(1))
    port = server.port

    server.restart()

    assert server.port == port
    assert server.running
    assert server.list_uids(USER, PASSWORD, "INBOX") == [1]
    assert b"Subject: test 1" in server.fetch_all(USER, PASSWORD, "INBOX")[0]


def test_wrong_password_is_refused(dovecot_server: DovecotServer) -> None:
    client = IMAPClient(dovecot_server.host, port=dovecot_server.port, ssl=False, timeout=5)
    try:
        with pytest.raises(LoginError):
            client.login(USER, "wrong")
    finally:
        client.shutdown()
    with pytest.raises(LoginError):
        dovecot_server.list_uids("nobody-here", "x", "INBOX")


def test_add_user_after_start(dovecot_server: DovecotServer) -> None:
    dovecot_server.add_user("second", "pw2")
    dovecot_server.append("second", "pw2", "INBOX", _message(7))
    assert dovecot_server.list_uids("second", "pw2", "INBOX") == [1]
    assert dovecot_server.list_uids(USER, PASSWORD, "INBOX") == []


def test_context_manager_and_long_base_dir(tmp_path: Path) -> None:
    require_dovecot()
    # Deep enough that unix sockets directly under it would exceed sun_path.
    deep = tmp_path.joinpath(*(["d" * 20] * 6))
    with DovecotServer(deep) as server:
        server.add_user("late", "pw")
        assert server.list_uids("late", "pw", "INBOX") == []
        run_dir = server._run_dir
        assert run_dir is not None and len(run_dir) < 40
    assert not server.running
    assert not Path(run_dir).exists()
    assert server.conf_path.is_file()


def test_missing_dovecot_skips_or_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from . import dovecot as module

    monkeypatch.setattr(module, "find_dovecot", lambda: None)

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install dovecot-imapd"):
        module.require_dovecot()

    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="dovecot not installed"):
        module.require_dovecot()


def test_start_failure_reports_log(tmp_path: Path) -> None:
    require_dovecot()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = DovecotServer(tmp_path / "dc", port=blocker.getsockname()[1])
        server.add_user(USER, PASSWORD)
        with pytest.raises(DovecotError, match="Address already in use"):
            server.start()
    assert not server.running
