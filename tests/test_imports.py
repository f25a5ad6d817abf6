"""Imports point one way (docs/design.md §1.6): inbound/ → worker → tickets/ → outbound/,
all onto mail/ and db/. A module that imports against that direction fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mailgate

PACKAGE = Path(mailgate.__file__).parent

# What each part may import besides itself (first component under `mailgate.`).
BASE = {"clock", "calendar", "config", "exitcodes", "logs"}
ALLOWED: dict[str, set[str]] = {
    "clock": set(),
    "calendar": set(),
    "exitcodes": set(),
    "logs": set(),                       # event lines and their formatters: stdlib only
    "mail": set(),                       # pure mail handling: no tickets, no database
    "config": {"mail"},                  # address syntax only
    "db": {"config"},
    "blobs": {"config", "db"},
    "views": {"db"},
    "scheduler": set(),
    "systemd": set(),
    "outbound": BASE | {"mail", "db"},
    "tickets": BASE | {"mail", "db", "blobs", "outbound"},
    "inbound": BASE | {"mail", "db"},    # a way in gets callables, never the worker
    "app": BASE | {"mail", "db", "outbound", "tickets"},
    "parse_ahead": BASE | {"mail", "db"},   # the helper that parses for the worker
    "worker": BASE | {"mail", "db", "tickets", "app", "parse_ahead"},
    "worker_processes": BASE | {"mail", "app", "worker"},  # `mailgate work` beside the daemon
    "daemon": BASE | {"mail", "db", "outbound", "tickets", "inbound", "app", "worker",
                      "worker_processes", "parse_ahead", "scheduler", "systemd", "metrics"},
    "metrics": BASE | {"db", "app", "tickets"},  # reads the daemon through a Protocol
    "doctor": BASE | {"db", "outbound", "inbound"},
    "stats": {"db", "views"},
    "cli": BASE | {"inbound", "cli_commands"},  # the entry point: `deliver`, else click
    "cli_commands": BASE | {"mail", "db", "outbound", "tickets", "inbound", "app", "worker",
                            "worker_processes", "daemon", "views", "doctor", "stats", "cli"},
    "__main__": {"cli"},
    "__init__": set(),
}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def imported_parts(source: str) -> list[tuple[int, str]]:
    """(line, first component) of every `mailgate.` import, lazy ones inside functions too."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "mailgate" else \
                [f"mailgate.{a.name}" for a in node.names]
        else:
            continue
        found += [(node.lineno, n.split(".")[1]) for n in names
                  if n.startswith("mailgate.")]
    return found


def violations(part: str, source: str) -> list[str]:
    allowed = ALLOWED[part] | {part}
    return [f"line {line}: {part} imports mailgate.{target}"
            for line, target in imported_parts(source) if target not in allowed]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_flow(path: Path) -> None:
    part = part_of(path)
    assert part in ALLOWED, f"{part}: new part of the package; give it a row in ALLOWED"
    assert violations(part, path.read_text(encoding="utf-8")) == []


def test_the_check_catches_a_reversed_import() -> None:
    assert violations("mail", "from mailgate.db.models import Ticket\n")
    assert violations("inbound", "def f():\n    from mailgate.worker import process_one\n")
    assert violations("outbound", "from mailgate import tickets\n")
    assert not violations("tickets", "from mailgate.outbound.outbox import enqueue\n")
