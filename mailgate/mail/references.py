"""Ticket references: subject tags and our own signed Message-IDs.

Our Message-IDs look like ``<SD-12.3f9a0c1d2e.7b1c9e0a4d2f6b18@desk.example>``: ticket ref,
a random part, and an HMAC of both.  A reply's In-Reply-To/References therefore proves which
ticket it answers; an ID whose HMAC does not verify is ignored, so a ticket number alone
does not let a stranger thread into a ticket.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

# Reply/forward prefixes in the languages our editors' clients use, in any case, with the
# counted forms some clients add: "RE[2]:", "Re(3):", "Re^2:".
_PREFIX = re.compile(
    r"^\s*(?:re|aw|antw|antwoord|tr|fwd?|wg|w\.|doorst|sv|vs|vb|rif|ref|réf|rv|enc|odp|res)"
    r"\s*(?:\[\d+\]|\(\d+\)|\^\d+)?\s*[:：]\s*",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class TicketRef:
    prefix: str
    number: int

    def __str__(self) -> str:
        return f"{self.prefix}-{self.number}"

    @property
    def tag(self) -> str:
        return f"[{self}]"


def parse_ref(prefix: str, text: str) -> TicketRef | None:
    m = re.fullmatch(rf"{re.escape(prefix)}-(\d{{1,12}})", text.strip(), re.IGNORECASE)
    return TicketRef(prefix, int(m.group(1))) if m else None


def find_tag(prefix: str, subject: str) -> TicketRef | None:
    """First ``[PREFIX-n]`` anywhere in the subject (after any chain of prefixes)."""
    m = re.search(rf"\[\s*{re.escape(prefix)}\s*-\s*(\d{{1,12}})\s*\]", subject, re.IGNORECASE)
    return TicketRef(prefix, int(m.group(1))) if m else None


def remove_tags(prefix: str, subject: str) -> str:
    return re.sub(rf"\s*\[\s*{re.escape(prefix)}\s*-\s*\d{{1,12}}\s*\]", "", subject,
                  flags=re.IGNORECASE).strip()


def strip_prefixes(subject: str, prefix: str | None = None) -> str:
    """Subject without reply/forward prefixes and (if ``prefix`` given) our ticket tags."""
    s = subject
    while True:
        if prefix:
            s = re.sub(rf"^\s*\[\s*{re.escape(prefix)}\s*-\s*\d+\s*\]\s*", "", s,
                       flags=re.IGNORECASE)
        stripped = _PREFIX.sub("", s, count=1)
        if stripped == s:
            return s.strip()
        s = stripped


class MessageIds:
    """Makes and verifies our signed Message-IDs."""

    def __init__(self, secret: str, domain: str, prefix: str) -> None:
        self._key = secret.encode()
        self.domain = domain
        self.prefix = prefix

    def _mac(self, ref: str, nonce: str) -> str:
        return hmac.new(self._key, f"{ref}.{nonce}".encode(), hashlib.sha256).hexdigest()[:16]

    def make(self, ref: TicketRef | None) -> str:
        nonce = secrets.token_hex(5)
        if ref is None:
            return f"<mg.{nonce}.{secrets.token_hex(8)}@{self.domain}>"
        return f"<{ref}.{nonce}.{self._mac(str(ref), nonce)}@{self.domain}>"

    def verify(self, message_id: str) -> TicketRef | None:
        m = re.fullmatch(
            rf"<({re.escape(self.prefix)}-\d{{1,12}})\.([0-9a-f]{{10}})\.([0-9a-f]{{16}})@"
            rf"{re.escape(self.domain)}>", message_id.strip(), re.IGNORECASE)
        if not m:
            return None
        ref, nonce, mac = m.group(1).upper(), m.group(2).lower(), m.group(3).lower()
        if not hmac.compare_digest(mac, self._mac(ref, nonce)):
            return None
        return parse_ref(self.prefix, ref)

    def is_ours(self, message_id: str) -> bool:
        """Made by `make` (signed ticket IDs, or the unsigned form for mail without a
        ticket). Only our exact formats count: editors may share the desk's domain."""
        if self.verify(message_id) is not None:
            return True
        return bool(re.fullmatch(rf"<mg\.[0-9a-f]{{10}}\.[0-9a-f]{{16}}@{re.escape(self.domain)}>",
                                 message_id.strip(), re.IGNORECASE))

    def find(self, message_ids: tuple[str, ...]) -> TicketRef | None:
        """The ticket the nearest verifiable ID points at."""
        for mid in message_ids:
            ref = self.verify(mid)
            if ref is not None:
                return ref
        return None
