"""Mail texts from Jinja2 templates in templates/<lang>/, with the desk default as fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound


class Renderer:
    def __init__(self, templates_dir: str | Path, default_language: str) -> None:
        self.default_language = default_language
        # Plain-text mail: no HTML escaping, but every variable must exist.
        self.env = Environment(loader=FileSystemLoader(str(templates_dir)),
                               undefined=StrictUndefined, autoescape=False,
                               keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)

    def render(self, template: str, language: str, /, **context: Any) -> tuple[str, str]:
        """Returns (language used, text)."""
        for lang in dict.fromkeys((language, self.default_language, "en")):
            try:
                template = self.env.get_template(f"{lang}/{template}.txt.j2")
            except TemplateNotFound:
                continue
            return lang, template.render(**context)
        raise TemplateNotFound(f"{language}/{template}.txt.j2")
