"""Mail texts: the packaged templates, and a templates_dir that overrides them file by file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.config import ConfigError, DeskSettings, from_dict
from mailgate.outbound.render import Renderer, packaged_loader

SOURCE = Path(__file__).resolve().parents[2] / "templates"
CONTEXT = {"subject": "Help", "sender": "x@y.example", "desk": DeskSettings(name="Test Desk")}


def _write(root: Path, name: str, text: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_packaged_templates_are_the_top_level_source() -> None:
    """mailgate/templates (what wheel and editable install read) is templates/, unchanged."""
    env_loader = packaged_loader()
    sources = sorted(p.relative_to(SOURCE).as_posix() for p in SOURCE.glob("*/*.txt.j2"))
    assert sources and sorted(env_loader.list_templates()) == sources
    renderer = Renderer("", "nl")
    for name in sources:
        text, _, _ = env_loader.get_source(renderer.env, name)
        assert text == (SOURCE / name).read_text(encoding="utf-8"), name


@pytest.mark.parametrize("templates_dir", ["", None])
def test_without_templates_dir_the_packaged_ones_render(templates_dir: str | None) -> None:
    renderer = Renderer(templates_dir, "nl")
    lang, text = renderer.render("refused", "fr", **CONTEXT)
    assert lang == "fr" and "« Help »" in text and "Test Desk" in text
    lang, text = renderer.render("refused", "en", **CONTEXT)
    assert lang == "en" and "x@y.example" in text


def test_override_replaces_only_its_own_file(tmp_path: Path) -> None:
    _write(tmp_path, "nl/refused.txt.j2", "Eigen tekst voor {{ sender }}\n")
    renderer = Renderer(tmp_path, "nl")
    assert renderer.render("refused", "nl", **CONTEXT) == ("nl", "Eigen tekst voor x@y.example\n")
    # Same template, other languages: packaged.
    lang, text = renderer.render("refused", "fr", **CONTEXT)
    assert lang == "fr" and "Madame, Monsieur" in text
    lang, text = renderer.render("refused", "en", **CONTEXT)
    assert lang == "en" and "Eigen tekst" not in text
    # Other template, same language: packaged.
    lang, text = renderer.render("reply", "nl", body="Opgelost.", ref="SD-7",
                                 desk=CONTEXT["desk"], agent_name="Alex")
    assert lang == "nl" and text.startswith("Opgelost.") and "SD-7" in text


def test_override_does_not_beat_the_editors_language(tmp_path: Path) -> None:
    """An English override is no reason to answer a French editor in English."""
    _write(tmp_path, "en/refused.txt.j2", "Custom English\n")
    renderer = Renderer(tmp_path, "nl")
    lang, text = renderer.render("refused", "fr", **CONTEXT)
    assert lang == "fr" and "Madame, Monsieur" in text
    assert renderer.render("refused", "en", **CONTEXT) == ("en", "Custom English\n")


def test_language_fallback_reaches_overrides_and_package(tmp_path: Path) -> None:
    """Unknown language → desk default (here overridden) → English (packaged)."""
    _write(tmp_path, "fr/refused.txt.j2", "Texte maison\n")
    assert Renderer(tmp_path, "fr").render("refused", "de", **CONTEXT) == ("fr", "Texte maison\n")
    lang, text = Renderer(tmp_path, "xx").render("refused", "de", **CONTEXT)
    assert lang == "en" and "Test Desk" in text


def test_templates_dir_config(tmp_path: Path) -> None:
    assert from_dict({}).templates_dir == ""
    assert from_dict({"templates_dir": str(tmp_path)}).templates_dir == str(tmp_path)
    with pytest.raises(ConfigError) as err:
        from_dict({"templates_dir": str(tmp_path / "missing")})
    assert err.value.key == "templates_dir" and "does not exist" in err.value.reason
