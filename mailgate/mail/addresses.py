"""E-mail address checks shared by config, access rules and outgoing headers."""

from __future__ import annotations

import re

# Deliberately strict: an address that reaches an outgoing header must not carry anything
# a header parser could read as structure (quotes, commas, CR/LF, angle brackets).
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def is_valid_address(value: str) -> bool:
    return bool(_ADDRESS.fullmatch(value or "")) and ".." not in value and len(value) <= 254


def normalize(value: str) -> str:
    """Lower-case address for lookups (local parts are case-insensitive in practice)."""
    return value.strip().lower()
