from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.config import ConfigError, from_dict
from tests.support.tls import self_signed


def test_defaults_are_the_embedded_setup() -> None:
    s = from_dict({})
    assert s.database.url == "sqlite:///var/mailgate.db"
    assert s.outbound.maildir == "var/maildir" and not s.outbound.uses_relay
    assert (s.smtp.host, s.smtp.port) == ("127.0.0.1", 2525)
    assert s.desk.ticket_prefix == "SD" and s.sla.first_response_hours == 4


@pytest.mark.parametrize(("data", "key"), [
    ({"imap": [{"host": "h", "username": "u"}]}, "imap[0].password"),
    ({"imap": [{"host": "h", "username": "u", "password": "p", "processed_folder": "INBOX"}]},
     "imap[0].processed_folder"),
    ({"imap": [{"host": "h", "username": "u", "password": "p", "ssl": True,
                "starttls": True}]}, "imap[0].starttls"),
    ({"imap": [{"host": "h", "password": "p"}]}, "imap[0].username"),
    ({"desk": {"ticket_prefix": "sd-"}}, "desk.ticket_prefix"),
    ({"desk": {"secret": "short"}}, "desk.secret"),
    ({"sla": {"business_hours": "17:00-08:00"}}, "sla.business_hours"),
    ({"lifecycle": {"reminder_working_days": [2, "x"]}}, "lifecycle.reminder_working_days"),
    ({"database": {"url": "mysql://x"}}, "database.url"),
    ({"outbound": {"retry_base_seconds": 0}}, "outbound.retry_base_seconds"),
    ({"access": {"require_authentication": True}}, "access.authserv_id"),
    ({"nonsense": 1}, "nonsense"),
    ({"smtp": {"max_connections": 0}}, "smtp.max_connections"),
    ({"smtp": {"timeout_seconds": 0}}, "smtp.timeout_seconds"),
    ({"smtp": {"timeout_seconds": "5m"}}, "smtp.timeout_seconds"),
    ({"smtp": {"max_line_length": 500}}, "smtp.max_line_length"),
    ({"smtp": {"max_line_length": 2_000_000, "max_message_size": 1_000_000}},
     "smtp.max_line_length"),
    ({"smtp": {"require_tls": True}}, "smtp.require_tls"),
    ({"deliver": {"handoff": "sometimes"}}, "deliver.handoff"),
    ({"deliver": {"handoff": True}}, "deliver.handoff"),
    ({"deliver": {"hand_off": "never"}}, "deliver.hand_off"),
    ({"worker": {"parse_ahead": "maybe"}}, "worker.parse_ahead"),
    ({"worker": {"parse_ahead": True}}, "worker.parse_ahead"),
    ({"smtp": {"tls_cert": "/nonexistent/cert.pem"}}, "smtp.tls_key"),
    ({"smtp": {"tls_cert": "/nonexistent/cert.pem", "tls_key": "/nonexistent/key.pem"}},
     "smtp.tls_cert"),
])
def test_errors_name_the_key(data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert info.value.key == key


def test_imap_account_defaults() -> None:
    s = from_dict({"imap": [{"host": "imap.x", "username": "desk", "password": "p"}]})
    [acct] = s.imap
    assert acct.name == "desk" and acct.folder == "INBOX" and acct.port == 993


def test_smtp_defaults() -> None:
    smtp = from_dict({}).smtp
    assert smtp.max_line_length == 65536 and smtp.max_connections == 100
    assert smtp.timeout_seconds == 300 and not smtp.tls_cert and not smtp.require_tls


def test_tls_certificate_and_key_are_loaded_when_the_config_is_read(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "a")
    s = from_dict({"smtp": {"tls_cert": str(cert), "tls_key": str(key), "require_tls": True}})
    assert s.smtp.require_tls
    # A key of another certificate: named as the key, with the reason.
    _other_cert, other_key = self_signed(tmp_path / "b")
    with pytest.raises(ConfigError) as info:
        from_dict({"smtp": {"tls_cert": str(cert), "tls_key": str(other_key)}})
    assert info.value.key == "smtp.tls_key" and "does not belong" in info.value.reason
    # Not a certificate at all.
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as info:
        from_dict({"smtp": {"tls_cert": str(junk), "tls_key": str(key)}})
    assert info.value.key == "smtp.tls_cert" and "cannot load" in info.value.reason


def test_deliver_handoff() -> None:
    """`mailgate deliver` tries the listener by default where it pays: on PostgreSQL."""
    assert from_dict({}).deliver.handoff == "auto"
    for value in ("auto", "always", "never"):
        assert from_dict({"deliver": {"handoff": value}}).deliver.handoff == value
    with pytest.raises(ConfigError) as info:
        from_dict({"deliver": {"handoff": "yes"}})
    assert info.value.reason == 'must be "auto", "always" or "never", got \'yes\''
