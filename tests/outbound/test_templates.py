"""`mailgate templates check`: every template, every language, rendered with sample data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from mailgate.outbound import samples
from mailgate.outbound.compose import flow, html_from_text, unflow
from mailgate.outbound.render import LANGUAGES, Renderer, check
from mailgate.outbound.samples import SAMPLES
from mailgate.tickets import commands, notify

SOURCE = Path(__file__).resolve().parents[2] / "templates"
SHIPPED = sorted({p.name.removesuffix(".txt.j2") for p in SOURCE.glob("*/*.txt.j2")})


def _mailgate(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailgate", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60)


def _config(tmp_path: Path, templates_dir: Path | None = None) -> Path:
    path = tmp_path / "mailgate.toml"
    path.write_text(f'templates_dir = "{templates_dir}"\n' if templates_dir else "")
    return path


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_every_shipped_template_has_samples_and_passes() -> None:
    assert set(SHIPPED) <= set(SAMPLES), "every template has its sample contexts"
    assert {p.parent.name for p in SOURCE.glob("*/*.txt.j2")} == set(LANGUAGES)
    results = check(Renderer("", "nl"), SAMPLES)
    assert [r for r in results if not r.ok] == []
    assert len(results) == len(SHIPPED) * len(LANGUAGES)
    assert {r.source for r in results} == {"packaged"}


def test_sample_stand_ins_have_the_fields_of_the_real_classes() -> None:
    """outbound/ may not import tickets/: samples.py has look-alikes of what the code passes."""
    for real, stand_in in ((commands.BadLine, samples.BadLine),
                           (notify.AutoReplySeen, samples.AutoReplySeen),
                           (notify.BounceSeen, samples.BounceSeen)):
        assert [(f.name, f.type) for f in fields(real)] == \
            [(f.name, f.type) for f in fields(stand_in)], real


def test_the_command_passes_on_the_shipped_templates(tmp_path: Path) -> None:
    result = _mailgate("templates", "check", config=_config(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(SHIPPED) * len(LANGUAGES)
    assert all(re.fullmatch(r"\w+ +(nl|fr|en)  OK \(packaged\)", line) for line in lines), lines
    rows = json.loads(_mailgate("templates", "check", "--json", config=_config(tmp_path)).stdout)
    assert {(r["template"], r["language"]) for r in rows} == {
        (name, lang) for name in SHIPPED for lang in LANGUAGES}
    assert all(r["ok"] and r["error"] == "" for r in rows)


def test_a_broken_override_fails_the_command(tmp_path: Path) -> None:
    overrides = tmp_path / "templates"
    _write(overrides, "nl/ack.txt.j2", "Beste {{ name }},\n{{ ticket_number }}\n")
    result = _mailgate("templates", "check", config=_config(tmp_path, overrides))
    assert result.returncode == 65, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if "OK" not in line]
    assert failed == [f"ack              nl  ERROR {overrides / 'nl/ack.txt.j2'}: uses variables "
                      "mailgate does not pass: ticket_number"]
    assert "ack              fr  OK (packaged)" in result.stdout
    assert f"1 of {len(SHIPPED) * len(LANGUAGES)} template checks failed" in result.stderr


def test_errors_name_the_file_the_sample_and_the_line(tmp_path: Path) -> None:
    _write(tmp_path, "nl/ack.txt.j2", "Beste {{ name }},\n\n{{ ticket.number_typo }}\n")
    _write(tmp_path, "fr/ack.txt.j2", "{% if missing %}\noups\n")
    _write(tmp_path, "en/reminder.txt.j2", "{{ close_on.strftime(42) }}\n")
    _write(tmp_path, "nl/welcome.txt.j2", "Welkom\n")
    _write(tmp_path, "en/ack.txt.j2", "{% if due %}{{ due.nope }}{% endif %}\n")
    errors = {(r.template, r.language): r.error for r in check(Renderer(tmp_path, "nl"), SAMPLES)
              if not r.ok}
    assert errors.pop(("ack", "nl")) == (
        "with sample 'filled' (line 3): UndefinedError: "
        "'mailgate.db.models.Ticket object' has no attribute 'number_typo'")
    assert errors.pop(("ack", "fr")).startswith("syntax error (line 2): Unexpected end of template")
    assert errors.pop(("reminder", "en")).startswith("with sample 'filled' (line 1): TypeError")
    # Only the filled sample reaches the branch: the check takes every branch.
    assert errors.pop(("ack", "en")).startswith("with sample 'filled' (line 1): UndefinedError")
    for lang in LANGUAGES:
        assert errors.pop(("welcome", lang)) == \
            "no sample context: add one to mailgate/outbound/samples.py"
    assert errors == {}


def test_a_broken_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[smtp\n")
    result = _mailgate("templates", "check", config=path)
    assert result.returncode == 78 and "configuration error" in result.stderr


def test_templates_dir_option_checks_another_directory(tmp_path: Path) -> None:
    _write(tmp_path / "new", "fr/refused.txt.j2", "{{ desk.nom }}\n")
    result = _mailgate("templates", "check", "--templates-dir", str(tmp_path / "new"),
                       config=_config(tmp_path))
    assert result.returncode == 65
    assert f"refused          fr  ERROR {tmp_path / 'new/fr/refused.txt.j2'}: with sample " \
           "'filled' (line 1): UndefinedError" in result.stdout


@pytest.mark.parametrize("lang", LANGUAGES)
@pytest.mark.parametrize("name", SHIPPED)
def test_every_mail_goes_out_wrapped_and_comes_back_whole(name: str, lang: str) -> None:
    for _label, context in SAMPLES[name]:
        _check_parts(lang, Renderer("", "nl").render(name, lang, **context)[1])


def _check_parts(lang: str, text: str) -> None:
    flowed = flow(text)
    for line in flowed.split("\n"):
        assert len(line) <= 72 or " " not in line.strip(), line
    # What a flowed-aware reader shows is the rendered text (trailing spaces aside).
    expected = "\n".join(line if line == "-- " else line.rstrip(" ") for line in text.split("\n"))
    assert unflow(flowed) == expected
    page = html_from_text(text, lang=lang)
    assert "<script" not in page and "<img" not in page and "src=" not in page
