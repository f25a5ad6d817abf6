"""Corpus tests: skipped with the reason when ``../shared/corpus`` is absent; their per-source
tables (recorded with ``corpus.report``) are printed at the end of the run
(``terminal_summary``) and written to ``var/corpus-report.md`` so that the figures can be
copied into the README."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.corpus.corpus import CORPUS, REPORT

# mail-parser logs a warning for every part type it leaves alone; a corpus run is 1,500 mails.
logging.getLogger("mailparser").setLevel(logging.ERROR)

REPORT_FILE = Path(__file__).resolve().parents[2] / "var" / "corpus-report.md"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"the shared mail corpus is not here ({CORPUS}); CI has it beside the repo")
    return CORPUS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORT:
        return
    terminalreporter.section("mail corpus report")
    text = "".join(f"\n## {title}\n\n{table}\n" for title, table in REPORT.items())
    terminalreporter.write(text)
    try:
        REPORT_FILE.parent.mkdir(parents=True, exist_ok=True)
        REPORT_FILE.write_text("# Mail corpus report\n" + text, encoding="utf-8")
        terminalreporter.write_line(f"(written to {REPORT_FILE})")
    except OSError as exc:  # a read-only checkout must not fail the run
        terminalreporter.write_line(f"(report not written: {exc})")
