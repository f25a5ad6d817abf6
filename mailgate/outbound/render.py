"""Mail texts from Jinja2 templates ``<lang>/<name>.txt.j2``, with the desk default as fallback.

The templates ship inside the package (``mailgate/templates``; in a checkout a link to the
top-level ``templates/``, their source). A configured ``templates_dir`` holds overrides, file by
file: a template found there wins, every other one comes from the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateNotFound,
)


def packaged_loader() -> PackageLoader:
    """The templates shipped with mailgate, wherever it is installed (wheel, sdist, editable)."""
    return PackageLoader("mailgate", "templates")


class Renderer:
    def __init__(self, templates_dir: str | Path | None, default_language: str) -> None:
        """``templates_dir``: directory of overrides, or empty/None for the packaged ones only."""
        self.default_language = default_language
        loaders: list[BaseLoader] = []
        if templates_dir:
            loaders.append(FileSystemLoader(str(templates_dir)))
        loaders.append(packaged_loader())
        # Plain-text mail: no HTML escaping, but every variable must exist.
        self.env = Environment(loader=ChoiceLoader(loaders),
                               undefined=StrictUndefined, autoescape=False,
                               keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)

    def render(self, template: str, language: str, /, **context: Any) -> tuple[str, str]:
        """Returns (language used, text).

        Languages are tried in order (the editor's, the desk default, English); for each, an
        override comes before the packaged template.
        """
        for lang in dict.fromkeys((language, self.default_language, "en")):
            try:
                found = self.env.get_template(f"{lang}/{template}.txt.j2")
            except TemplateNotFound:
                continue
            return lang, found.render(**context)
        raise TemplateNotFound(f"{language}/{template}.txt.j2")
