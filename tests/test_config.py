from __future__ import annotations

import pytest

from mailgate.config import ConfigError, from_dict


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
])
def test_errors_name_the_key(data: dict, key: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert info.value.key == key


def test_imap_account_defaults() -> None:
    s = from_dict({"imap": [{"host": "imap.x", "username": "desk", "password": "p"}]})
    [acct] = s.imap
    assert acct.name == "desk" and acct.folder == "INBOX" and acct.port == 993
