"""Log lines fit for journald: one line per event, with the fields ops grep for.

An event carries its fields beside the message (``event(log, "inbound processed",
inbound=12, outcome="ticket", ticket="SD-4")``, or ``extra={"fields": {...}}`` on any logging
call), and the formatter chosen by the top-level ``log_format`` writes them:

- ``text``: ``INFO mailgate.worker: inbound processed inbound=12 outcome=ticket ticket=SD-4``.
  A value with spaces, quotes, ``=`` or nothing in it is quoted (``reason="no site"``); a
  missing value is ``-``. Under journald (``$JOURNAL_STREAM`` names our stderr) the line
  starts with the syslog priority (``<6>``, which journald takes as the entry's priority:
  ``journalctl -p warning``) and carries no time, journald adds its own; elsewhere it starts
  with the time (UTC, ISO 8601).
- ``json``: one object per line: ``time``, ``level``, ``logger``, ``message``, then the
  fields (a field named like one of those four comes as ``field_<name>``), and
  ``exception`` with the traceback when there is one. Under journald the priority prefix is
  added too; journald strips it, the stored message is the bare JSON object.

A traceback stays on the lines after its text line; in JSON it is inside the one object.
Only the standard library: every part of mailgate may log events.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

FORMATS = ("text", "json")
FIELDS = "fields"  # the ``extra`` key events carry their fields under

_RESERVED = ("time", "level", "logger", "message")
# What makes a text value quoted: a space of any kind, a quote, "=" or a backslash. A regex,
# not a loop over the characters: the intake writes a line per mail (bench/ingest.py).
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')
# syslog priorities, as journald reads them from a "<N>" line prefix (SyslogLevelPrefix=yes).
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
_MARK = "_mailgate_handler"


def event(log: logging.Logger, message: str, /, *, level: int = logging.INFO,
          **fields: Any) -> None:
    """One event line: ``message`` and its ``key=value`` fields, in the order given (any
    name but ``level``)."""
    if log.isEnabledFor(level):
        log.log(level, message, extra={FIELDS: fields}, stacklevel=2)


def fields_of(record: logging.LogRecord) -> Mapping[str, Any]:
    found = getattr(record, FIELDS, None)
    return found if isinstance(found, Mapping) else {}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(_plain(v)) for v in value)
    return value


def text_value(value: Any) -> str:
    """A field value as the text format writes it: bare when it can be, else quoted."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(_plain(value))
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _priority(record: logging.LogRecord) -> str:
    level = max((lv for lv in _PRIORITY if lv <= record.levelno), default=logging.DEBUG)
    return f"<{_PRIORITY[level]}>"


def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value ...``; under journald ``<N>`` instead
    of the time."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        head = _priority(record) if self.journald else _time(record) + " "
        line = f"{head}{record.levelname} {record.name}: {record.getMessage()}"
        pairs = " ".join(f"{k}={text_value(v)}" for k, v in fields_of(record).items())
        if pairs:
            line += " " + pairs
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the fields, exception."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": _time(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        for key, value in fields_of(record).items():
            out[f"field_{key}" if key in _RESERVED else key] = _plain(value)
        if record.exc_info:
            record.exc_text = record.exc_text or self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        line = json.dumps(out, ensure_ascii=False, default=str)
        return (_priority(record) + line) if self.journald else line


def under_journald(stream: IO[str] | None = None) -> bool:
    """True when ``stream`` (stderr) is connected to the journal: systemd sets
    ``$JOURNAL_STREAM`` to the ``device:inode`` of the stream it hands over."""
    wanted = os.environ.get("JOURNAL_STREAM", "")
    if not wanted:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return wanted == f"{st.st_dev}:{st.st_ino}"


def formatter(log_format: str, journald: bool = False) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, got {log_format!r}")
    return JsonFormatter(journald) if log_format == "json" else TextFormatter(journald)


def setup(level: str, log_format: str = "text", stream: IO[str] | None = None) -> None:
    """The root logger writes to ``stream`` (stderr) in ``log_format``. Called again, it
    replaces its own handler; a root logger that already has other handlers (a test's
    capture) keeps them and gets none of ours, as ``logging.basicConfig`` would."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    out = stream or sys.stderr
    ours = [h for h in root.handlers if getattr(h, _MARK, False)]
    for h in ours:
        root.removeHandler(h)
    if root.handlers and not ours:
        return
    handler = logging.StreamHandler(out)
    setattr(handler, _MARK, True)
    handler.setFormatter(formatter(log_format, under_journald(out)))
    root.addHandler(handler)
