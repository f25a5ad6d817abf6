"""`mailgate deliver`: one message on stdin from an MTA pipe transport (Postfix, Exim).

Exit 0 once committed; 75 (EX_TEMPFAIL) when storage is unavailable so the MTA retries,
as rt-mailgate does; 65 (EX_DATAERR) for an empty message.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from mailgate.clock import Clock
from mailgate.db.engine import StorageUnavailable, is_unavailable
from mailgate.exitcodes import EX_DATAERR, EX_OK, EX_TEMPFAIL
from mailgate.inbound.store import Stored, store_raw


def deliver(sessions: sessionmaker[Session], clock: Clock, stream: BinaryIO,
            sender: str | None = None,
            recipients: list[str] | None = None) -> tuple[int, Stored | None, str]:
    raw = stream.read()
    if not raw.strip():
        return EX_DATAERR, None, "empty message on standard input"
    # Postfix's pipe(8) and Exim pass the envelope in these variables.
    sender = sender if sender is not None else os.environ.get("SENDER", "")
    if recipients is None:
        env_rcpt = os.environ.get("RECIPIENT", "")
        recipients = [env_rcpt] if env_rcpt else []
    try:
        stored = store_raw(sessions, clock, raw, "pipe", sender, recipients)
    except StorageUnavailable as exc:
        return EX_TEMPFAIL, None, f"storage unavailable: {exc}"
    except Exception as exc:
        if is_unavailable(exc):
            return EX_TEMPFAIL, None, f"storage unavailable: {exc}"
        raise
    return EX_OK, stored, ""
