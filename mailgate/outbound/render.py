"""Mail texts from Jinja2 templates ``<lang>/<name>.txt.j2``, with the desk default as fallback.

The templates ship inside the package (``mailgate/templates``; in a checkout a link to the
top-level ``templates/``, their source). A configured ``templates_dir`` holds overrides, file by
file: a template found there wins, every other one comes from the package.

:func:`check` renders every template in every language with sample contexts
(:mod:`mailgate.outbound.samples`): ``mailgate templates check``.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    meta,
    nodes,
)

LANGUAGES = ("nl", "fr", "en")
_NAME = re.compile(r"([a-z]{2})/(\w+)\.txt\.j2")


def packaged_loader() -> PackageLoader:
    """The templates shipped with mailgate, wherever it is installed (wheel, sdist, editable)."""
    return PackageLoader("mailgate", "templates")


class Renderer:
    def __init__(self, templates_dir: str | Path | None, default_language: str) -> None:
        """``templates_dir``: directory of overrides, or empty/None for the packaged ones only."""
        self.default_language = default_language
        self.templates_dir = str(templates_dir or "")
        self.overrides = FileSystemLoader(self.templates_dir) if templates_dir else None
        loaders: list[BaseLoader] = [self.overrides] if self.overrides else []
        self.packaged = packaged_loader()
        loaders.append(self.packaged)
        # Plain-text mail: no HTML escaping, but every variable must exist.
        # Compiled once: no stat of the files at every mail (auto_reload); a changed
        # template is taken by a new Renderer, which SIGHUP builds (App.reload).
        self.env = Environment(loader=ChoiceLoader(loaders),
                               undefined=StrictUndefined, autoescape=False, auto_reload=False,
                               cache_size=-1, keep_trailing_newline=True, trim_blocks=True,
                               lstrip_blocks=True)

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

    def names(self) -> list[str]:
        """Every template name, packaged or in the overrides, whatever its languages."""
        found = {m.group(2) for path in self.env.list_templates()
                 if (m := _NAME.fullmatch(path))}
        return sorted(found)

    def source(self, path: str) -> str:
        """Where ``<lang>/<name>.txt.j2`` comes from: the override file, "packaged", or ""
        (nowhere)."""
        for loader, where in ((self.overrides, str(Path(self.templates_dir) / path)),
                              (self.packaged, "packaged")):
            if loader is None:
                continue
            try:
                loader.get_source(self.env, path)
            except TemplateNotFound:
                continue
            return where
        return ""


Samples = Mapping[str, Sequence[tuple[str, Mapping[str, Any]]]]


@dataclass(frozen=True)
class CheckResult:
    template: str
    language: str
    source: str        # the override file, "packaged", or "" when there is no such file
    error: str = ""    # empty: renders with every sample context

    @property
    def ok(self) -> bool:
        return not self.error


def _assigned(tree: nodes.Template) -> set[str]:
    """Names a template sets itself ({% set %}, possibly in a branch meta cannot follow)."""
    targets = [*(n.target for n in tree.find_all(nodes.Assign)),
               *(n.target for n in tree.find_all(nodes.AssignBlock))]
    return {name.name for target in targets
            for name in (target, *target.find_all(nodes.Name)) if isinstance(name, nodes.Name)}


def _where(exc: BaseException, template: Template) -> str:
    """" (line N)" of the template line an error came from, if the traceback tells."""
    lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__)
             if template.filename and f.filename == template.filename]
    return f" (line {lines[-1]})" if lines else ""


def check_one(renderer: Renderer, name: str, language: str, samples: Samples) -> CheckResult:
    """Renders ``<language>/<name>.txt.j2`` itself (no fallback) with each sample context,
    then makes the plain-text and HTML parts of it."""
    from mailgate.outbound.compose import flow, html_from_text

    path = f"{language}/{name}.txt.j2"
    variants = samples.get(name)
    if not variants:
        return CheckResult(name, language, renderer.source(path),
                           "no sample context: add one to mailgate/outbound/samples.py")
    loader = renderer.env.loader
    assert loader is not None
    try:
        source_text, _, _ = loader.get_source(renderer.env, path)
    except TemplateNotFound:
        return CheckResult(name, language, "", f"missing: no {path} (mail in {language} "
                                                 "would fall back to another language)")
    source = renderer.source(path)
    try:
        template = renderer.env.get_template(path)
        tree = renderer.env.parse(source_text)
    except TemplateSyntaxError as exc:
        return CheckResult(name, language, source,
                           f"syntax error (line {exc.lineno}): {exc.message}")
    passed = set().union(*(context.keys() for _label, context in variants))
    unknown = meta.find_undeclared_variables(tree) - _assigned(tree) - passed
    if unknown:
        return CheckResult(name, language, source,
                           "uses variables mailgate does not pass: " + ", ".join(sorted(unknown)))
    for label, context in variants:
        try:
            text = template.render(**context)
            flow(text)
            html_from_text(text, lang=language)
        except Exception as exc:
            return CheckResult(name, language, source,
                               f"with sample {label!r}{_where(exc, template)}: "
                               f"{type(exc).__name__}: {exc}")
        if not text.strip():
            return CheckResult(name, language, source, f"with sample {label!r}: renders empty")
    return CheckResult(name, language, source)


def check(renderer: Renderer, samples: Samples,
          languages: Sequence[str] = LANGUAGES) -> list[CheckResult]:
    """Every template name (packaged and overrides) in every language."""
    return [check_one(renderer, name, lang, samples)
            for name in renderer.names() for lang in languages]
